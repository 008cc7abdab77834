"""Payment gateways: registration, and their signed notifications (auto-debit results)."""

import codecs
import hashlib
from dataclasses import replace
from typing import Any, ClassVar

from pydantic import ValidationError
from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from standardwebhooks import Webhook

from app import clock
from app.api.auth import Principal
from app.api.idempotency import canonical
from app.api.pagination import PageParams
from app.api_keys.models import Role
from app.db import execute_counting, insert_for, insert_unless_taken, utc_now
from app.delinquency import service as delinquency
from app.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from app.events import service as events
from app.gateways.models import (
    WEBHOOK_ID_MAX_LENGTH,
    FailedDebit,
    Gateway,
    InboundNotification,
)
from app.gateways.schemas import Notification, NotificationType
from app.ids import new_id
from app.loans import service as loans_service
from app.loans.errors import CurrencyMismatch
from app.loans.models import OPEN_STATUSES, Loan
from app.money import format_minor, parse_amount, payment_ceiling
from app.payments import service as payments_service
from app.payments.errors import PaymentAlreadyRecorded, PaymentAlreadyReversed, PaymentNotFound
from app.payments.models import Payment, PaymentStatus, ReversalReason
from app.payments.schemas import payment_read
from app.risk import service as risk
from app.webhooks import signing


class GatewayExists(Conflict):
    code = "gateway_exists"


class GatewayNotFound(NotFound):
    code = "gateway_not_found"


class InvalidSignature(Unauthorized):
    code = "invalid_signature"
    headers = None  # a signature, not a bearer token: no scheme to name


class WebhookIdReused(InvalidRequest):
    code = "webhook_id_reused"
    title = "Webhook id reused"


class FailedDebitAlreadyRecorded(Conflict):
    code = "failed_debit_already_recorded"


class NotificationInProgress(Conflict):
    code = "notification_in_progress"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class ChargebackAmountMismatch(InvalidRequest):
    code = "chargeback_amount_mismatch"
    title = "Chargeback amount mismatch"


async def register(session: AsyncSession, principal: Principal, *, name: str) -> Gateway:
    principal.require(Role.ADMIN)
    gateway = Gateway(name=name, secret=signing.generate_secret(), created_at=utc_now())
    if not await insert_unless_taken(session, gateway):
        raise GatewayExists(f"a gateway named {name} exists")
    return gateway


async def rotate_secret(
    session: AsyncSession, principal: Principal, *, name: str, retire_previous: bool
) -> Gateway:
    """A new secret; the old one keeps verifying (beside the new) for the overlap period, so
    the gateway can switch without a notification refused, unless it is retired at once (it
    leaked). The same period as an endpoint's rotation: one setting for both directions."""
    principal.require(Role.ADMIN)
    gateway = await session.get(Gateway, name, with_for_update=True)
    if gateway is None:
        raise GatewayNotFound(f"no gateway named {name}")
    signing.rotate(gateway, utc_now(), None if retire_previous else signing.overlap())
    await session.flush()
    return gateway


async def list_gateways(
    session: AsyncSession, principal: Principal, *, page: PageParams
) -> list[Gateway]:
    principal.require(Role.DASHBOARD)
    query = select(Gateway).order_by(Gateway.name).limit(page.limit + 1)
    if page.after_id:
        query = query.where(Gateway.name > page.after_id)
    return list(await session.scalars(query))


async def receive(
    session: AsyncSession, *, gateway_name: str, body: bytes, headers: dict[str, str]
) -> tuple[str, str, dict[str, Any]]:
    """Verify, then apply a notification once. Returns (status, type, result)."""
    gateway = await session.get(Gateway, gateway_name)
    _verify(_secrets_in_force(gateway), body, headers)
    assert gateway is not None  # an unknown name's secret is one no sender holds
    webhook_id = headers["webhook-id"]
    if len(webhook_id) > WEBHOOK_ID_MAX_LENGTH:
        raise InvalidRequest.field(
            "webhook-id", f"must be at most {WEBHOOK_ID_MAX_LENGTH} characters"
        )
    # The JSON as parsed, as an Idempotency-Key's body is compared: a sender that serialises
    # the same notification again (spacing, key order) is retrying it, not sending another.
    digest = hashlib.sha256(canonical(body)).hexdigest()
    # Rows written before the digest was canonical hold the raw body's.
    digests = (digest, hashlib.sha256(body).hexdigest())
    key = (gateway.name, webhook_id)
    seen = await session.get(InboundNotification, key)
    if seen is not None:
        return _repeated(seen, digests)
    try:
        # A byte order mark is ignored, as every other route's JSON parser ignores it (RFC
        # 8259 allows either): refused here alone, a gateway adding one retried for days.
        notification = Notification.model_validate_json(body.removeprefix(codecs.BOM_UTF8))
    except ValidationError as exc:
        raise InvalidRequest.of(exc) from None
    if not await _claim(session, gateway.name, webhook_id, notification.type, digest):
        # A twin sent at the same time was being applied: its transaction has committed.
        seen = await session.get(InboundNotification, key, populate_existing=True)
        if seen is None:  # committed, yet not in this transaction's snapshot: ask again
            raise NotificationInProgress(f"webhook-id {webhook_id} is being processed")
        return _repeated(seen, digests)

    system = Principal(api_key_id=f"gateway:{gateway.name}", role=Role.ADMIN)
    data = notification.data
    if data.currency is not None:
        await _check_currency(session, data.loan_id, data.currency)
    result: dict[str, Any]
    status = "processed"
    if notification.type is NotificationType.DEBIT_SUCCEEDED:
        try:
            view = await payments_service.record_payment(
                session, system, loan_id=data.loan_id, amount=data.amount,
                received_on=data.received_on, channel="auto_debit",
                external_ref=data.external_ref, gateway=gateway.name, field_prefix="data.",
            )  # fmt: skip
        except PaymentAlreadyRecorded as refused:
            status, view = (
                "duplicate",
                await _debit_recorded_already(session, system, gateway.name, notification, refused),
            )
        result = payment_read(view).model_dump(mode="json")
    elif notification.type is NotificationType.DEBIT_FAILED:
        status, result = await _record_failed_debit(session, system, gateway.name, notification)
    else:
        status, result = await _charge_back(session, system, gateway.name, notification)
    await session.execute(
        update(InboundNotification)
        .where(InboundNotification.gateway == gateway.name,
               InboundNotification.webhook_id == webhook_id)
        .values(result=result)
    )  # fmt: skip
    return status, notification.type, result


async def _claim(
    session: AsyncSession, gateway: str, webhook_id: str, type_: str, digest: str
) -> bool:
    """Write the notification's row before applying it. A twin delivered at the same time
    (a sender retrying on a timeout) waits here for this transaction, then finds the id
    taken and answers "duplicate" instead of meeting the payment it recorded as a 409.
    False: the id was taken."""
    claimed = await execute_counting(
        session,
        insert_for(session, InboundNotification)
        .values(gateway=gateway, webhook_id=webhook_id, type=type_, result={},
                body_sha256=digest, received_at=utc_now())
        .on_conflict_do_nothing(index_elements=["gateway", "webhook_id"]),
    )  # fmt: skip
    return claimed == 1


# What an unknown gateway name is verified against: a secret no sender holds.
_NO_GATEWAY_SECRET = signing.generate_secret()


def _secrets_in_force(gateway: Gateway | None) -> list[str]:
    """The gateway's secret, and the previous one until it expires. An unknown name gets a
    secret made up for this process, so that its notification fails as a wrong signature
    does: a 404 told an unauthenticated caller which gateway names exist (a tester's)."""
    if gateway is None:
        return [_NO_GATEWAY_SECRET]
    in_force = [gateway.secret]
    expires = gateway.previous_secret_expires_at
    if gateway.previous_secret and expires and expires > utc_now():
        in_force.append(gateway.previous_secret)
    return in_force


def _verify(in_force: list[str], body: bytes, headers: dict[str, str]) -> None:
    failure: Exception | None = None
    for secret in in_force:
        try:
            Webhook(secret).verify(body, headers, json_parse=False)
            return
        except Exception as exc:  # the library raises several kinds for malformed headers
            failure = failure or exc
    detail = f"the webhook signature does not verify: {failure}"
    if "No matching signature" in str(failure):
        # The key is what gateways get wrong (SPEC names the HMAC, not its key): a gateway
        # that keyed it with the whole "whsec_…" string was told no more than this.
        detail += (
            " (Standard Webhooks: base64 of the HMAC-SHA256 of "
            "'{webhook-id}.{webhook-timestamp}.{body}', keyed with the base64-decoded part of "
            "the secret after 'whsec_')"
        )
    raise InvalidSignature(detail)


def _repeated(
    seen: InboundNotification, digests: tuple[str, str]
) -> tuple[str, str, dict[str, Any]]:
    # A retry carries the same body; another notification under a processed id would
    # otherwise be answered "duplicate" and its debit silently lost.
    if seen.body_sha256 is not None and seen.body_sha256 not in digests:
        raise WebhookIdReused(
            f"webhook-id {seen.webhook_id} was processed with another body: send each "
            "notification under its own id"
        )
    return "duplicate", seen.type, dict(seen.result)


async def _check_currency(session: AsyncSession, loan_id: str, currency: str) -> None:
    """A notification's amount is in the loan's currency: one that says otherwise is refused
    rather than recorded as if it were (an unknown loan is the type's own 404)."""
    lent_in = await session.scalar(select(Loan.currency).where(Loan.id == loan_id))
    if lent_in is not None and lent_in != currency:
        raise CurrencyMismatch.field(
            "data.currency", f"is {currency} but loan {loan_id} is in {lent_in}"
        )


async def _debit_recorded_already(
    session: AsyncSession,
    system: Principal,
    gateway: str,
    notification: Notification,
    refused: PaymentAlreadyRecorded,
) -> payments_service.PaymentView:
    """The payment a debit's ``external_ref`` names, recorded already: by the POS at the till
    (the same receipt, the same money) or by this gateway under another ``webhook-id``. Of
    the same amount and still applied, it is this debit: answered 200 ``duplicate``, and the
    POS's becomes this gateway's, which alone may charge it back. A 409 was retried by the
    gateway for days, and its chargeback of the payment was refused 404 as the POS's, so
    the money taken back stayed paid (a tester's). Another amount, another gateway's payment
    or one reversed since is another matter: the 409 stands (``refused``)."""
    data = notification.data
    found = (
        await session.execute(
            select(Payment, Loan.currency)
            .join(Loan, Loan.id == Payment.loan_id)
            .where(Payment.loan_id == data.loan_id, Payment.external_ref == data.external_ref)
        )
    ).first()
    assert found is not None  # record_payment found it, under the loan's lock
    payment, currency = found
    amount = parse_amount("data.amount", data.amount, currency, ceiling=payment_ceiling())
    if (
        payment.status != PaymentStatus.APPLIED
        or payment.gateway not in (None, gateway)
        or payment.amount_minor != amount
    ):
        raise refused
    payment.gateway = gateway
    return await _with_loan(session, system, payment.id)


async def _charge_back(
    session: AsyncSession, system: Principal, gateway: str, notification: Notification
) -> tuple[str, dict[str, Any]]:
    """``processed`` and the payment reversed; or ``ignored``, on a payment reversed already."""
    data = notification.data
    # Only a payment this gateway collected: another's, or the POS's, is not its to take back,
    # and is answered as if it did not exist.
    found = (
        await session.execute(
            select(Loan.currency, Payment.id, Payment.amount_minor)
            .outerjoin(
                Payment,
                and_(
                    Payment.loan_id == Loan.id,
                    Payment.external_ref == data.external_ref,
                    Payment.gateway == gateway,
                ),
            )
            .where(Loan.id == data.loan_id)
        )
    ).first()
    missing = f"no payment with external_ref {data.external_ref} on loan {data.loan_id}"
    if found is None:
        raise PaymentNotFound(missing)
    currency, payment_id, payment_minor = found
    # Read in the loan's currency before the payment is looked for: a malformed amount is a
    # 422 as in a debit, whether or not the payment exists (it was a 404: a tester's).
    amount = parse_amount("data.amount", data.amount, currency, ceiling=payment_ceiling())
    if payment_id is None:
        raise PaymentNotFound(missing)
    # A reversal takes back the whole payment: reversing 535.88 for a chargeback of 100.00
    # would take 435.88 from the borrower that nobody charged back.
    if amount != payment_minor:
        raise ChargebackAmountMismatch.field(
            "data.amount",
            f"is {format_minor(amount, currency)} but payment {payment_id} is "
            f"{format_minor(payment_minor, currency)}: partial chargebacks are not "
            "supported, a chargeback reverses the whole payment",
        )
    try:
        view = await payments_service.reverse_payment(
            session, system, payment_id=payment_id, reason=ReversalReason.CHARGEBACK,
            reversed_on=data.received_on, date_field="data.received_on",
        )  # fmt: skip
    except PaymentAlreadyReversed:
        # Taken back already (an admin's reversal of the bounce, the same chargeback under
        # another webhook-id): there is nothing left to take. Answered 200, as a 409 was until
        # the twenty-eighth session, which the gateway took for a failure and retried for days
        # (a tester's).
        view = await _with_loan(session, system, payment_id)
        return "ignored", payment_read(view).model_dump(mode="json")
    return "processed", payment_read(view).model_dump(mode="json")


async def _with_loan(
    session: AsyncSession, system: Principal, payment_id: str
) -> payments_service.PaymentView:
    """The payment, with its loan as it stands: every 200 about a payment shows the loan, as
    the one that applied or reversed it does (a gateway reading ``result.loan`` met null on a
    duplicate under another id: a tester's)."""
    view = await payments_service.get_payment(session, system, payment_id=payment_id)
    loan = await session.get_one(Loan, view.payment.loan_id)
    return replace(view, loan=await loans_service.loan_view(session, loan))


async def _record_failed_debit(
    session: AsyncSession, system: Principal, gateway: str, notification: Notification
) -> tuple[str, dict[str, Any]]:
    """``processed`` and the failure recorded; or ``ignored``, on a loan that owes nothing."""
    data = notification.data
    loan = await loans_service.get_loan(session, system, loan_id=data.loan_id, for_update=True)
    amount = parse_amount("data.amount", data.amount, loan.currency, ceiling=payment_ceiling())
    today = clock.today()
    attempted_on = data.received_on
    if not loan.disbursed_on <= attempted_on <= today:
        # It counts toward the failed_debits rule's window: a date outside the loan's life
        # would raise or hold a flag on nothing that happened.
        raise InvalidRequest.field(
            "data.received_on",
            f"must be between disbursed_on ({loan.disbursed_on}) and today ({today})",
        )
    if loan.status not in OPEN_STATUSES:
        # Nothing is owed (an auto-debit scheduled before a payoff or a return), so no
        # failure to count toward a flag; answered 200, as a 409 was until the twenty-seventh
        # session, which the gateway took for a failure and retried for days (a tester's).
        return "ignored", {
            "loan_id": loan.id,
            "loan_status": loan.status,
            "detail": f"loan {loan.id} is {loan.status} and owes no debit: not recorded",
        }
    recorded = await session.scalar(
        select(FailedDebit).where(
            FailedDebit.loan_id == loan.id, FailedDebit.external_ref == data.external_ref
        )
    )
    if recorded is not None:
        # The same failure resent under another webhook-id (a gateway's replay from its own
        # log): answered 200, as a retry is; a 409 was retried for days. Another failure
        # under the reference would count twice toward the rule: refused.
        if (recorded.gateway, recorded.amount_minor, recorded.attempted_on) != (
            gateway,
            amount,
            attempted_on,
        ):
            raise FailedDebitAlreadyRecorded(
                f"failed debit {recorded.id} with external_ref {data.external_ref} is already "
                "recorded"
            )
        return "duplicate", _failed_debit_read(loan, recorded)
    debit = FailedDebit(
        id=new_id("fdb"), loan_id=loan.id, gateway=gateway, amount_minor=amount,
        attempted_on=attempted_on, reason=data.reason,
        external_ref=data.external_ref, created_at=utc_now(),
    )  # fmt: skip
    session.add(debit)
    await session.flush()
    result = _failed_debit_read(loan, debit)
    await events.emit(session, "payment.debit_failed", result, loan=loan)
    await risk.refresh_loan(
        session, loan, await delinquency.change_date(session, loan, attempted_on)
    )
    return "processed", result


def _failed_debit_read(loan: Loan, debit: FailedDebit) -> dict[str, Any]:
    return {
        "failed_debit_id": debit.id,
        "loan_id": loan.id,
        "borrower_id": loan.borrower_id,
        "merchant_id": loan.merchant_id,
        "amount": format_minor(debit.amount_minor, loan.currency),
        "currency": loan.currency,
        "attempted_on": debit.attempted_on.isoformat(),
        "reason": debit.reason,
        "external_ref": debit.external_ref,
        "gateway": debit.gateway,
    }
