from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ModelWrapValidatorHandler, model_validator

from app.api.fields import IsoDate, Reason
from app.risk.models import FlagStatus, RiskFlag
from app.risk.rules import FlagCode, RiskRules, Severity
from app.risk.score import GRADE_LETTERS


class RulesRead(BaseModel):
    version: int
    rules: RiskRules


def _either_form(schema: dict[str, Any]) -> None:
    """The document describes both bodies the route takes: this object, or the thresholds
    alone (the ``rules`` object's schema)."""
    wrapped = dict(schema)
    schema.clear()
    schema.update(
        title=wrapped.pop("title", "RulesUpdate"),
        description=wrapped.pop("description", ""),
        anyOf=[wrapped, wrapped["properties"]["rules"]],
    )


class RulesUpdate(BaseModel):
    """The body of ``PUT /v1/risk/rules``: what ``GET`` returned, changed (``version`` then
    guards against a change made since), or the thresholds alone. A threshold left out takes
    its default: a PUT replaces the whole set."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_either_form)

    version: int | None = Field(
        default=None,
        strict=True,
        ge=0,
        description="the version the change was made from; 409 if another came since",
    )
    rules: RiskRules

    @model_validator(mode="wrap")
    @classmethod
    def _thresholds_alone(
        cls, data: Any, handler: ModelWrapValidatorHandler["RulesUpdate"]
    ) -> "RulesUpdate":
        # Validated as the thresholds themselves, so their errors name the threshold, not
        # ``rules.<threshold>``.
        if isinstance(data, dict) and not data.keys() & {"rules", "version"}:
            return cls.model_construct(rules=RiskRules.model_validate(data))
        return handler(data)


class FlagRead(BaseModel):
    id: str
    loan_id: str
    borrower_id: str
    code: str = Field(json_schema_extra={"enum": [c.value for c in FlagCode]})
    severity: str = Field(json_schema_extra={"enum": [v.value for v in Severity]})
    status: str = Field(json_schema_extra={"enum": [v.value for v in FlagStatus]})
    acknowledged: bool
    acknowledged_at: datetime | None
    acknowledged_note: str | None
    raised_on: date
    cleared_on: date | None
    evidence: dict[str, Any]
    rules_version: int

    @classmethod
    def from_model(cls, flag: RiskFlag) -> "FlagRead":
        return cls(
            id=flag.id, loan_id=flag.loan_id, borrower_id=flag.borrower_id, code=flag.code,
            severity=flag.severity, status=flag.status, acknowledged=flag.acknowledged,
            acknowledged_at=flag.acknowledged_at, acknowledged_note=flag.acknowledged_note,
            raised_on=flag.raised_on, cleared_on=flag.cleared_on, evidence=flag.evidence,
            rules_version=flag.rules_version,
        )  # fmt: skip


class Acknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Reason | None = None


class LoanRiskRead(BaseModel):
    loan_id: str
    as_of: date
    score: int
    grade: str = Field(json_schema_extra={"enum": list(GRADE_LETTERS)})
    reasons: list[dict[str, Any]]
    flags: list[FlagRead] = Field(description="open flags")
    history: list[FlagRead] = Field(description="every flag of the loan, newest first")


class RiskRunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    as_of: IsoDate


class RiskRunRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    as_of: date
    status: str
    rules_version: int
    counts: dict[str, int]
    chunks: int
    seconds: float | None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
