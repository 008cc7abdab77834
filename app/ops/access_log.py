"""The access log never holds a secret sent in a query string.

Loanwatch reads keys from the Authorization header alone, but a misconfigured client sending
`?api_key=lw_…` was refused 401 and its valid key written verbatim to the log (a tester's).
Values of query parameters whose names say they are secret are logged as ``REDACTED``."""

import logging
import re

# A name holding one of these words, in any case: api_key, apiKey, access_token, secret…
_SECRET_NAME = re.compile(r"key|token|secret|password|passwd|auth|signature", re.IGNORECASE)
_PARAMETER = re.compile(r"([^&=]*)=([^&]*)")


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access line: (client, method, path with its query, HTTP version, status).
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, _, query = args[2].partition("?")
            if query:
                record.args = (*args[:2], f"{path}?{_redacted(query)}", *args[3:])
        return True


def _redacted(query: str) -> str:
    return _PARAMETER.sub(
        lambda m: f"{m[1]}=REDACTED" if _SECRET_NAME.search(m[1]) else m[0], query
    )


def install() -> None:
    logging.getLogger("uvicorn.access").addFilter(RedactSecrets())
