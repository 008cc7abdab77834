"""Field types shared by request schemas. The shape is checked here; the currency's minor
digits are checked by the service, which knows the currency."""

import json
import re
import unicodedata
from datetime import UTC, date, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    Strict,
)

from app.errors import shown
from app.loans.schedule import OFFERED_TERMS
from app.money import DECIMAL_STRING, MINOR_DIGITS, MONEY_PATTERN, RATE_PATTERN

# An amount DECIMAL_STRING refuses only for its sign or its length (more whole
# digits than any amount up to the maximum has): told that, not that it is no decimal string.
_SIGNED_OR_LONG = re.compile(r"^(-?)(0|[1-9][0-9]*)(\.[0-9]+)?\Z")


def _money_shape(value: str) -> str:
    if DECIMAL_STRING.match(value):  # its decimals are read against the currency later
        return value
    amount = _SIGNED_OR_LONG.match(value)
    if amount and amount[1]:
        raise ValueError("must not be negative")
    if amount:  # parse_amount tells an amount of fewer digits the field's own maximum
        raise ValueError("is too large: more whole digits than any amount has (at most 15)")
    raise ValueError(_NOT_MONEY)


# The currency is not known yet: no example, which would be another currency's form.
_NOT_MONEY = (
    "must be a non-negative decimal string with the currency's decimal places (JSON numbers "
    "are refused)"
)
_NOT_A_RATE = "must be a decimal string such as '0.1299' with at most 6 decimals"
_JSON_KINDS = ((bool, "true or false"), (int, "a JSON number"), (float, "a JSON number"),
               (list, "an array"), (dict, "an object"))  # fmt: skip


def _rate_shape(value: str) -> str:
    if not RATE_PATTERN.match(value):
        raise ValueError(_NOT_A_RATE)
    return value


def _text_only(message: str) -> BeforeValidator:
    """Refuse anything but a string with ``message`` and what it was: "Input should be a valid
    string", for the commonest mistake, a JSON number, did not say that money travels as text
    (a tester's)."""

    def check(value: object) -> object:
        if isinstance(value, str):
            return value
        kind = next((name for type_, name in _JSON_KINDS if isinstance(value, type_)), "null")
        raise ValueError(f"{message}, not {kind}")

    return BeforeValidator(check)


def _documented(pattern: re.Pattern[str]) -> dict[str, JsonValue]:
    """The shape in the OpenAPI document (ECMA regex: ``$`` for Python's ``\\Z``), while the
    validators above keep their plainer messages."""
    return {"pattern": pattern.pattern.replace(r"\Z", "$")}


MoneyStr = Annotated[
    str,
    Field(max_length=20, examples=["1299.00"], json_schema_extra=_documented(MONEY_PATTERN)),
    _text_only("must be a non-negative decimal string with the currency's decimal places"),
    AfterValidator(_money_shape),
]
RateStr = Annotated[
    str,
    Field(max_length=12, examples=["0.1299"], json_schema_extra=_documented(RATE_PATTERN)),
    _text_only(_NOT_A_RATE),
    AfterValidator(_rate_shape),
]
# A caller's own reference (external_id, merchant_order_ref, external_ref): printable ASCII
# with no space at either end, since "dup-1 " would be a second customer, order or payment
# beside "dup-1" to a look-up by it.
Reference = Annotated[
    str,
    Field(min_length=1, max_length=100, pattern=r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"),
]

# A currency code, as a body field or a filter. The document lists the currencies whose minor
# digits the service knows (app/money.py): a valid ISO 4217 code outside them was refused
# with no way to tell beforehand (a tester's). The service's own check still answers it.
Currency = Annotated[
    str, Field(pattern=r"^[A-Z]{3}$", json_schema_extra={"enum": sorted(MINOR_DIGITS)})
]


# Letters and symbols that draw nothing (Hangul fillers, the blank Braille pattern).
_BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Bidirectional overrides and isolates: "Li\u202eieW" shows as "LiWei" (Trojan Source).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _visible(c: str) -> bool:
    # isprintable() is False for control and format characters (U+0007, a zero-width space
    # U+200B); a combining mark draws on the character before it, not alone.
    return (
        c.isprintable()
        and not c.isspace()
        and unicodedata.category(c) not in ("Mn", "Me")
        and c not in _BLANK_CHARACTERS
    )


def _not_blank(value: str) -> str:
    """Text of nothing visible passed strip() and was shown to people as nothing (testers')."""
    if not any(_visible(c) for c in value):
        raise ValueError("must say something: not only spaces or invisible characters")
    return value


def _a_name(value: str) -> str:
    """A name is one line, shown as it reads (a reason or a note may run over lines): the
    Unicode line and paragraph separators (U+2028, U+2029) broke it too (a tester's)."""
    _not_blank(value)
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI_CONTROLS for c in value):
        raise ValueError("must not hold control characters, line breaks or bidirectional overrides")
    return value


# A merchant's, a borrower's or a product's name, shown to people: blank is no name.
Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="at least one visible character; no control characters, line breaks or "
        "bidirectional overrides",
    ),
    AfterValidator(_a_name),
]


def _free_text(value: str) -> str:
    """A reason or a note may run over lines, but is shown as it reads: a bidirectional
    override or a bell went as sent to subscribers' screens (a tester's)."""
    _not_blank(value)
    if any(
        (unicodedata.category(c) == "Cc" and c not in "\t\n\r") or c in _BIDI_CONTROLS
        for c in value
    ):
        raise ValueError(
            "must not hold control characters (line breaks and tabs aside) or bidirectional "
            "overrides"
        )
    return value


FREE_TEXT = AfterValidator(_free_text)
FREE_TEXT_RULE = (
    "at least one visible character; no control characters but line breaks and tabs, no "
    "bidirectional overrides"
)
# Why relief was offered or a loan cancelled, a note on a promise, a decision or a flag, a
# description, kept for people to read: blank is none.
Reason = Annotated[str, Field(min_length=1, max_length=500, description=FREE_TEXT_RULE), FREE_TEXT]


PASSED_ON_LENGTH = 200  # the column's (failed_debit.reason)


def _passed_on(value: str) -> str | None:
    """A third party's text is passed on, never refused: a gateway refused for its reason
    would send the same notification again and again, and the failed debit it reports would
    be lost. Blank is none; control and format characters go on as escapes, as in problems;
    a longer one is cut to its first 200 characters."""
    return shown(value)[:PASSED_ON_LENGTH] if any(_visible(c) for c in value) else None


def _as_text(value: object) -> object:
    """A number (a card network's code), a flag or a structure, as its JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# A gateway's reason for a failed debit or a chargeback, on its way to subscribers.
PassedOnText = Annotated[str, BeforeValidator(_as_text), AfterValidator(_passed_on)]


# Pydantic takes a number, or a string of digits, for seconds since 1970: a POS sending
# 20261203 would book 1970-08-23. Dates and instants arrive as text, per SPEC.md.
def _text_like(kind: type, pattern: str, message: str) -> BeforeValidator:
    """Take a ``kind`` object, or text that ``pattern`` matches at its start; refuse the rest."""
    compiled = re.compile(pattern)

    def check(value: object) -> object:
        if isinstance(value, kind) or (isinstance(value, str) and compiled.match(value)):
            return value
        raise ValueError(message)

    return BeforeValidator(check)


_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
# A business date is the date alone: Pydantic would also take "2026-12-01T00:00:00-05:00".
IsoDate = Annotated[date, _text_like(date, _DATE + r"\Z", "must be a date string YYYY-MM-DD")]


def _in_utc(value: datetime) -> datetime:
    """Near year 1 or 9999 an offset can push UTC off the calendar."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of the range of dates once converted to UTC") from None


# An instant is RFC 3339 in full (SPEC.md): Pydantic would also take a date alone, a time
# without seconds, or one without an offset, and which midnight or which zone was meant is a
# guess (a gateway in Beijing sending its local time would be read 8 hours off).
_rfc3339_text = _text_like(
    datetime,
    _DATE + r"[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})\Z",
    "must be an RFC 3339 date-time string with seconds and an offset, such as 2026-12-01T00:00:00Z",
)
Instant = Annotated[datetime, _rfc3339_text, AfterValidator(_in_utc)]

# Strict, as every count in a body: a JSON true is no term of 1, nor "12" a number.
Term = Annotated[int, Strict(), Field(ge=OFFERED_TERMS.start, le=OFFERED_TERMS.stop - 1)]


class SecretRotation(BaseModel):
    """The body of a secret's rotation, optional."""

    model_config = ConfigDict(extra="forbid")

    retire_previous: Annotated[bool, Strict()] = Field(
        default=False,
        description="true: the previous secret stops at once, for one that leaked; false (the "
        "default): it stays in force beside the new one for "
        "LOANWATCH_WEBHOOK_SECRET_OVERLAP_HOURS, so the other side can switch at leisure",
    )


class NoFields(BaseModel):
    """The body of an action that takes no fields: none, ``{}`` or ``null``. An unknown field
    is refused as on every other body; ignored, it would read as applied."""

    model_config = ConfigDict(extra="forbid")
