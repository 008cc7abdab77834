"""Responses the busiest routes render themselves."""

from pydantic import BaseModel
from starlette.responses import Response


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """The model as JSON, the bytes FastAPI sends for a ``response_model``: a route that returns
    the model instead has FastAPI validate it once more against that model before dumping it
    (about a tenth of GET /v1/loans/{id}'s CPU, bench/http_load.py). The route keeps its
    ``response_model`` for the OpenAPI document."""
    return Response(model.model_dump_json(), status_code, media_type="application/json")
