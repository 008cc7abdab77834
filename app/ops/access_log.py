"""The access log never holds a secret sent in a URL.

Loanwatch reads keys from the Authorization header alone, but a misconfigured client sending
`?api_key=lw_…` was refused 401 and its valid key written verbatim to the log (a tester's).
Anything shaped like a Loanwatch key or signing secret, anywhere in the logged path, and the
values of query parameters whose names say they are secret, are logged as ``REDACTED``."""

import logging
import re
from urllib.parse import unquote_plus

from app.api.auth import KEY_PREFIX
from app.webhooks.signing import SECRET_PREFIX

# Ours, whatever carries them: a bare parameter, a value under any name, a path segment.
_OUR_SECRET = re.compile(rf"(?:{KEY_PREFIX}|{SECRET_PREFIX})[A-Za-z0-9_+/=%-]{{8,}}")
# A name holding one of these words, in any case: api_key, apiKey, access_token, secret…
_SECRET_NAME = re.compile(r"key|token|secret|pass|pwd|auth|bearer|sig|cred", re.IGNORECASE)
_PARAMETER = re.compile(r"([^&;=]*)=([^&;]*)")


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access line: (client, method, path with its query, HTTP version, status).
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (*args[:2], redacted(args[2]), *args[3:])
        return True


def redacted(target: str) -> str:
    path, mark, query = _OUR_SECRET.sub("REDACTED", target).partition("?")
    return path + mark + _PARAMETER.sub(_value_unless_secret, query)


def _value_unless_secret(parameter: re.Match[str]) -> str:
    name = unquote_plus(parameter[1])  # "t%6Fken" is a token all the same
    return f"{parameter[1]}=REDACTED" if _SECRET_NAME.search(name) else parameter[0]


def install() -> None:
    logging.getLogger("uvicorn.access").addFilter(RedactSecrets())
