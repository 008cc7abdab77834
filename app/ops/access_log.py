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

# Ours, whatever carries them: a bare parameter, a value under any name, a path segment; in
# any case and however percent-encoded (a re-verifier's: "%6Cw_…" was logged as sent).
_OUR_SECRET = re.compile(rf"(?:{KEY_PREFIX}|{SECRET_PREFIX})[A-Za-z0-9_+/=-]{{8,}}", re.IGNORECASE)
# A name holding one of these words, in any case: api_key, apiKey, access_token, secret…
_SECRET_NAME = re.compile(r"key|token|secret|pass|pwd|auth|bearer|sig|cred", re.IGNORECASE)
_SEGMENT = re.compile(r"[^/?&;=]+")
_PARAMETER = re.compile(r"([^&;=]*)=([^&;]*)")


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access line: (client, method, path with its query, HTTP version, status).
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (*args[:2], redacted(args[2]), *args[3:])
        return True


def redacted(target: str) -> str:
    target = _SEGMENT.sub(_segment_unless_ours, target)
    path, mark, query = target.partition("?")
    return path + mark + _PARAMETER.sub(_value_unless_secret, query)


def _decoded(text: str) -> str:
    """As a server would read it, encoded twice over included."""
    for _ in range(3):
        once = unquote_plus(text)
        if once == text:
            break
        text = once
    return text


def _segment_unless_ours(segment: re.Match[str]) -> str:
    return "REDACTED" if _OUR_SECRET.search(_decoded(segment[0])) else segment[0]


def _value_unless_secret(parameter: re.Match[str]) -> str:
    name = _decoded(parameter[1])  # "t%6Fken" is a token all the same
    return f"{parameter[1]}=REDACTED" if _SECRET_NAME.search(name) else parameter[0]


def install() -> None:
    logging.getLogger("uvicorn.access").addFilter(RedactSecrets())
