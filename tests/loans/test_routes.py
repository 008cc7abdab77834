"""Origination, reads, listing and cancellation over HTTP."""

import base64
from datetime import date, timedelta
from decimal import Decimal

import httpx
from sqlalchemy import func, select

from app import clock
from app.db import database, session_scope
from app.events.models import Event
from app.ledger.models import LedgerTransaction
from app.loans import service as loans
from app.loans.models import Loan, LoanInstallment
from tests.factories import product, world


async def count(model: type) -> int:
    async with session_scope() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_originate_equal_installment_loan_with_schedule(client: httpx.AsyncClient) -> None:
    w = await world(client, annual_interest_rate="0.1299", term_options=[12])
    borrower = await w.borrower(monthly_income="8000.00")
    loan = await w.loan(borrower["id"], principal="6000.00", term=12,
                        disbursed_on="2026-01-31", merchant_order_ref="ORD-1")  # fmt: skip

    # Back-dated, nothing paid: as late as the first due date says, at once.
    dpd = (clock.today() - date(2026, 2, 28)).days
    assert loan["days_past_due"] == dpd
    assert loan["status"] == ("charged_off" if dpd > 180 else "defaulted" if dpd > 90 else
                              "delinquent")  # fmt: skip
    # Its event tells the loan as committed, and no move out of a current it never was in.
    feed = (await w.get("/v1/events?limit=200", headers=w.admin))["items"]
    mine = [e for e in feed if e["data"].get("loan_id") == loan["id"]]
    assert [e["type"] for e in mine] == ["loan.created"]
    assert (mine[0]["data"]["status"], mine[0]["data"]["days_past_due"],
            mine[0]["data"]["bucket"]) == (loan["status"], dpd, loan["bucket"])  # fmt: skip
    assert loan["principal"] == "6000.00"
    assert loan["annual_interest_rate"] == "0.1299"
    assert loan["first_due_date"] == "2026-02-28"
    installments = loan["schedule"]["installments"]
    assert [i["due_date"] for i in installments[:4]] == [
        "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31",
    ]  # fmt: skip
    # 6000 * r / (1 - (1 + r)^-12) with r = 0.1299 / 12 = 535.8795… -> 535.88
    assert {i["total"] for i in installments[:-1]} == {"535.88"}
    assert installments[0]["interest"] == "64.95"  # 6000 * 0.010825
    assert installments[0]["principal"] == "470.93"
    principal_sum = sum(int(i["principal"].replace(".", "")) for i in installments)
    assert principal_sum == 600000
    assert all(i["status"] in ("pending", "overdue") for i in installments)

    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["balances"]["principal_outstanding"] == "6000.00"
    assert "schedule" not in got or got["schedule"] is None
    schedule = await w.get(f"/v1/loans/{loan['id']}/schedule")
    assert schedule["installments"] == installments

    b = await w.get(f"/v1/borrowers/{borrower['id']}")
    assert (b["credit_limit"], b["exposure"], b["available_limit"]) == (
        "24000.00", "6000.00", "18000.00",
    )  # fmt: skip


async def test_origination_writes_ledger_and_outbox_in_one_go(client: httpx.AsyncClient) -> None:
    w = await world(client)
    loan = await w.loan(principal="1200.00")
    async with session_scope() as session:
        kinds = list(await session.scalars(select(LedgerTransaction.kind)))
        events = list(await session.scalars(select(Event).where(Event.loan_id == loan["id"])))
    assert kinds == ["disbursement"]
    assert [e.type for e in events] == ["loan.created"]
    assert events[0].data["principal"] == "1200.00"
    feed = await w.get("/v1/events?type=loan.created", headers=w.admin)
    assert [e["data"]["loan_id"] for e in feed["items"]] == [loan["id"]]
    assert feed["items"][0]["data"]["sequence"] == events[0].position


async def test_defaults_disbursed_today_and_first_due_a_month_later(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    loan = await w.loan()
    today = clock.today()
    assert loan["disbursed_on"] == today.isoformat()
    assert date.fromisoformat(loan["first_due_date"]).day in {today.day, 28, 29, 30, 31}


async def test_the_first_period_is_charged_for_its_length(client: httpx.AsyncClient) -> None:
    # 12000.00 at 12.99 % was charged 129.90 for the first period, a day or 92 days long.
    w = await world(client, annual_interest_rate="0.1299", term_options=[12])
    loan = await w.loan(principal="12000.00", term=12, disbursed_on="2026-01-01",
                        first_due_date="2026-01-02")  # fmt: skip
    rows = loan["schedule"]["installments"]
    # A day: 12000.00 * 0.1299 / 360. Level over that first period: 1060.66, not a month's
    # 1071.75 with the saving left to the last (930.39).
    assert [rows[0][k] for k in ("principal", "interest", "total")] == [
        "1056.33", "4.33", "1060.66",
    ]  # fmt: skip
    assert {r["total"] for r in rows[:-1]} == {"1060.66"}
    assert rows[-1]["total"] == "1060.63"
    loan = await w.loan(principal="12000.00", term=12, disbursed_on="2026-01-01",
                        first_due_date="2026-04-03")  # fmt: skip
    rows = loan["schedule"]["installments"]
    # Three months and two days: 92/30 of a month's 129.90, spread over every installment
    # rather than left to the last (1373.96 after eleven of 1071.75).
    assert [rows[0][k] for k in ("principal", "interest", "total")] == [
        "697.11", "398.36", "1095.47",
    ]  # fmt: skip
    assert {r["total"] for r in rows[:-1]} == {"1095.47"}
    assert rows[-1]["total"] == "1095.48"
    assert sum(Decimal(r["principal"]) for r in rows) == Decimal("12000.00")
    w2 = await world(client, amortization="equal_principal", annual_interest_rate="0.1299",
                     term_options=[12])  # fmt: skip
    loan = await w2.loan(principal="12000.00", term=12, disbursed_on="2026-01-01",
                         first_due_date="2026-04-03")  # fmt: skip
    rows = loan["schedule"]["installments"]
    assert [(r["principal"], r["interest"]) for r in rows[:2]] == [
        ("1000.00", "398.36"), ("1000.00", "119.08"),
    ]  # fmt: skip


async def test_the_payoff_owes_the_current_first_period_as_charged(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client, annual_interest_rate="0.1299", term_options=[12])
    today = clock.today()
    tomorrow = await w.loan(principal="12000.00", term=12,
                            first_due_date=(today + timedelta(days=1)).isoformat())  # fmt: skip
    # Paid off today: the principal and the first period's interest, a day's.
    assert tomorrow["balances"]["payoff_amount"] == "12004.33"
    a_month = await w.loan(principal="12000.00", term=12)
    assert a_month["balances"]["payoff_amount"] == "12129.90"


async def test_equal_principal_and_interest_free_products(client: httpx.AsyncClient) -> None:
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12")
    loan = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-15")
    rows = loan["schedule"]["installments"]
    assert [(r["principal"], r["interest"]) for r in rows] == [
        ("400.00", "12.00"), ("400.00", "8.00"), ("400.00", "4.00"),
    ]  # fmt: skip

    w2 = await world(
        client, amortization="interest_free", annual_interest_rate="0",
        origination_fee={"kind": "fixed", "amount": "30.00", "collection": "spread"},
    )  # fmt: skip
    loan = await w2.loan(principal="1000.00", term=3, disbursed_on="2026-01-15")
    rows = loan["schedule"]["installments"]
    assert [(r["principal"], r["interest"], r["fees"]) for r in rows] == [
        ("333.33", "0.00", "10.00"), ("333.33", "0.00", "10.00"), ("333.34", "0.00", "10.00"),
    ]  # fmt: skip


async def test_credit_limit_exceeded_states_the_numbers(client: httpx.AsyncClient) -> None:
    w = await world(client)
    borrower = await w.borrower(monthly_income="1000.00")  # limit 3000.00
    await w.loan(borrower["id"], principal="2000.00")
    response = await w.post("/v1/loans", {
        "borrower_id": borrower["id"], "product_code": w.product_code, "principal": "1000.01",
        "term": 12, "merchant_order_ref": "too-much",
    })  # fmt: skip
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "credit_limit_exceeded"
    assert "1000.01" in problem["detail"]
    assert "1000.00" in problem["detail"]
    assert await count(Loan) == 1


async def test_term_not_offered_and_unknown_product(client: httpx.AsyncClient) -> None:
    w = await world(client, term_options=[6, 12])
    borrower = await w.borrower()
    base = {"borrower_id": borrower["id"], "product_code": w.product_code, "principal": "100.00",
            "term": 9, "merchant_order_ref": "x"}  # fmt: skip
    response = await w.post("/v1/loans", base)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "term"
    response = await w.post("/v1/loans", {**base, "term": 6, "product_code": "NOPE"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "product_code"
    # Too little to spread: at least 1.00 of principal an installment (0.25 over 35 months
    # with a spread fee repaid principal in one installment and only fee in the others).
    response = await w.post("/v1/loans", {**base, "term": 12, "principal": "11.99"})
    assert response.status_code == 422
    assert response.json()["errors"] == [{
        "field": "principal", "message": "must be at least 12.00 for 12 installments (1.00 each)"
    }]  # fmt: skip
    assert await count(Loan) == 0
    assert (
        await w.post("/v1/loans", {**base, "term": 12, "principal": "12.00"})
    ).status_code == 201


async def test_installments_in_multiples_leave_no_payment_shock(
    client: httpx.AsyncClient,
) -> None:
    # 1000.00 at 12.99 % over 12 months is 89.31 a month. In multiples of 50.00 it was eleven
    # installments of 50.00 and 550.87 last; 100.00 a month would repay it in eleven.
    w = await world(client, annual_interest_rate="0.1299", installment_multiple_of="50.00")
    loan = await w.loan(principal="1000.00", term=12, disbursed_on="2026-01-31")
    rows = loan["schedule"]["installments"]
    assert [r["total"] for r in rows] == ["100.00"] * 10 + ["50.00", "14.35"]
    assert (rows[0]["principal"], rows[0]["interest"]) == ("89.18", "10.82")
    assert sum(Decimal(r["principal"]) for r in rows) == Decimal("1000.00")
    # Interest free, 27.78 a month over 24 months, in multiples of 5.00: 35 of 25.00 and
    # 125.00 last before.
    w2 = await world(client, amortization="interest_free", annual_interest_rate="0",
                     installment_multiple_of="5.00", term_options=[24, 36])  # fmt: skip
    loan = await w2.loan(principal="1000.00", term=36, disbursed_on="2026-01-31")
    rows = loan["schedule"]["installments"]
    assert [r["total"] for r in rows] == ["30.00"] * 20 + ["25.00"] * 16


async def test_a_multiple_too_large_for_the_loan_is_refused(client: httpx.AsyncClient) -> None:
    w = await world(client, annual_interest_rate="0.1299", installment_multiple_of="50.00")
    borrower = await w.borrower()
    before = (await count(Loan), await count(LoanInstallment), await count(Event))
    # 47.53 a month over 24 months: 23 installments of at least 50.00 repay it early.
    response = await w.post("/v1/loans", {
        "borrower_id": borrower["id"], "product_code": w.product_code, "principal": "1000.00",
        "term": 24, "merchant_order_ref": "too-round",
    })  # fmt: skip
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"] == [{
        "field": "principal",
        "message": "1000.00 over 24 installments does not fit installments in multiples of "
        "50.00: they would repay it before the last installment or leave the last larger than "
        "the one before; lend more, or over fewer installments",
    }]  # fmt: skip
    assert (await count(Loan), await count(LoanInstallment), await count(Event)) == before


async def test_duplicate_merchant_order_ref_is_refused(client: httpx.AsyncClient) -> None:
    w = await world(client)
    first = await w.loan(merchant_order_ref="ORD-7")
    await w.loan(merchant_order_ref="ORD-8")
    borrower = await w.borrower()
    response = await w.post("/v1/loans", {
        "borrower_id": borrower["id"], "product_code": w.product_code, "principal": "100.00",
        "term": 12, "merchant_order_ref": "ORD-7",
    })  # fmt: skip
    assert response.status_code == 409
    assert response.json()["code"] == "duplicate_merchant_order_ref"
    assert first["id"] in response.json()["detail"]
    assert await count(Loan) == 2
    # A POS whose answer was lost finds the loan of its order.
    found = await w.get("/v1/loans?merchant_order_ref=ORD-7")
    assert [loan["id"] for loan in found["items"]] == [first["id"]]
    other = await world(client)
    assert (await other.get("/v1/loans?merchant_order_ref=ORD-7"))["items"] == []


async def test_a_retried_order_is_told_its_loan_even_with_the_limit_used_up(
    client: httpx.AsyncClient,
) -> None:
    """The retry of a checkout whose answer was lost: the loan it made took the whole limit,
    and the retry was told `credit_limit_exceeded`, as if the sale had been refused (a
    tester's)."""
    w = await world(client)
    borrower = await w.borrower()
    await client.patch(f"/v1/borrowers/{borrower['id']}", json={"credit_limit": "1200.00"},
                       headers=w.admin)  # fmt: skip
    body = {"borrower_id": borrower["id"], "product_code": w.product_code,
            "principal": "1200.00", "term": 12, "merchant_order_ref": "ORD-9"}  # fmt: skip
    first = (await w.post("/v1/loans", body, expect=201)).json()
    retried = await w.post("/v1/loans", body)
    assert (retried.status_code, retried.json()["code"]) == (409, "duplicate_merchant_order_ref")
    assert first["id"] in retried.json()["detail"]


async def test_cancel_before_any_payment(client: httpx.AsyncClient) -> None:
    w = await world(client)
    loan = await w.loan(principal="1200.00")
    response = await w.post(f"/v1/loans/{loan['id']}/cancel", {"reason": "goods returned"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["balances"]["refund_due"] == "0.00"
    assert body["balances"]["principal_outstanding"] == "0.00"
    assert body["balances"]["payoff_amount"] == "0.00"
    b = await w.get(f"/v1/borrowers/{loan['borrower_id']}")
    assert b["exposure"] == "0.00"
    again = await w.post(f"/v1/loans/{loan['id']}/cancel", {})
    assert again.status_code == 409
    assert again.json()["code"] == "loan_not_active"
    pay = await w.post(f"/v1/loans/{loan['id']}/payments", {"amount": "10.00"})
    assert pay.status_code == 409
    assert pay.json()["code"] == "loan_not_active"


async def test_cancel_after_payments_states_the_refund(client: httpx.AsyncClient) -> None:
    w = await world(client)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    await w.pay(loan["id"], "150.00", "2026-02-10")
    paid = await w.pay(loan["id"], "50.00", "2026-02-11")
    await w.post(f"/v1/payments/{paid['id']}/reverse", {"reason": "nsf"}, expect=200)
    body = (await w.post(f"/v1/loans/{loan['id']}/cancel", None, expect=200)).json()
    assert body["status"] == "cancelled"
    assert body["balances"]["refund_due"] == "150.00"
    # Its installments fell due long ago, but a cancelled loan owes none of them.
    schedule = await w.get(f"/v1/loans/{loan['id']}/schedule")
    statuses = [i["status"] for i in schedule["installments"]]
    assert statuses == ["paid", "partially_paid", *["pending"] * 10], statuses
    async with session_scope() as session:
        refund = await session.scalar(
            select(LedgerTransaction.amount_minor).where(LedgerTransaction.kind == "refund")
        )
        event = await session.scalar(select(Event).where(Event.type == "loan.cancelled"))
    assert refund == 15000
    assert event is not None
    assert event.data["refund_due"] == "150.00"


async def test_list_loans_filters_and_paginates(client: httpx.AsyncClient) -> None:
    w = await world(client)
    borrower = await w.borrower()
    ids = [(await w.loan(borrower["id"], principal="100.00"))["id"] for _ in range(5)]
    await w.post(f"/v1/loans/{ids[0]}/cancel", {}, expect=200)

    seen: list[str] = []
    cursor = None
    while True:
        query = "/v1/loans?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await w.get(query)
        seen += [loan["id"] for loan in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    active = await w.get("/v1/loans?status=active")
    assert [x["id"] for x in active["items"]] == ids[1:]
    mine = await w.get(f"/v1/borrowers/{borrower['id']}/loans")
    assert len(mine["items"]) == 5
    own = await w.get(f"/v1/loans?merchant_id={w.merchant_id}")
    assert [x["id"] for x in own["items"]] == ids
    # Another merchant's id is refused as on the portfolio, not answered with an empty page.
    theirs = await client.get("/v1/loans?merchant_id=mer_other", headers=w.merchant)
    assert theirs.status_code == 403, theirs.text
    assert theirs.json()["code"] == "forbidden"
    bad = await client.get("/v1/loans?status=sleeping", headers=w.merchant)
    assert bad.status_code == 422
    bad = await client.get("/v1/loans?cursor=%%%", headers=w.merchant)
    assert bad.status_code == 422
    # A cursor is good only on the list that gave it, and made-up text is no cursor.
    other = (await w.get(f"/v1/borrowers/{borrower['id']}/loans?limit=2"))["next_cursor"]
    made_up = base64.urlsafe_b64encode(b"zzz").decode()
    # Nor is one cut short or altered: it read as another key, repeating rows or ending early.
    returned = (await w.get("/v1/loans?limit=2"))["next_cursor"]
    decoded = base64.urlsafe_b64decode(returned + "=" * (-len(returned) % 4))
    altered = base64.urlsafe_b64encode(decoded.replace(b"\nloan_", b"\nloan_z", 1)).decode()
    forged = base64.urlsafe_b64encode(b"/v1/loans\nzzz").decode()
    padded = returned + "=="  # read as the same cursor, though not the one returned
    for cursor in (other, made_up, returned[:-3], altered, forged, padded):
        bad = await client.get(f"/v1/loans?cursor={cursor}", headers=w.merchant)
        assert bad.status_code == 422, cursor
        assert bad.json()["errors"][0]["field"] == "cursor"


async def test_the_bucket_filter_lists_the_open_loans_the_summary_counts(
    client: httpx.AsyncClient,
) -> None:
    """Closed loans keep the bucket they closed in (`current`); the summary's buckets count
    open loans only, and a dashboard drills down from a bucket's count to the list."""
    w = await world(client)
    ids = [(await w.loan(principal="100.00"))["id"] for _ in range(4)]
    await w.post(f"/v1/loans/{ids[0]}/cancel", {}, expect=200)
    payoff = (await w.get(f"/v1/loans/{ids[1]}"))["balances"]["payoff_amount"]
    await w.pay(ids[1], payoff)
    assert (await w.get(f"/v1/loans/{ids[1]}"))["status"] == "paid_off"

    current = await w.get("/v1/loans?bucket=current")
    assert [loan["id"] for loan in current["items"]] == ids[2:]
    # By its label as well (SPEC: M0-M3+), "+" escaped as a URL needs it.
    assert (await w.get("/v1/loans?bucket=M0"))["items"] == current["items"]
    assert (await w.get("/v1/loans?bucket=M3%2B"))["items"] == []
    unknown = await client.get("/v1/loans?bucket=M4", headers=w.merchant)
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["message"].startswith("is not a bucket: give one of")
    bare_plus = await client.get("/v1/loans?bucket=90+", headers=w.merchant)  # "90 " arrives
    assert bare_plus.status_code == 422
    assert "a + in a URL is %2B" in bare_plus.json()["errors"][0]["message"]
    spaced = await client.get("/v1/loans?bucket=current%20", headers=w.merchant)  # no + meant
    assert "%2B" not in spaced.json()["errors"][0]["message"]
    summary = await w.get("/v1/portfolio/summary")
    assert summary["by_bucket"]["current"]["count"] == len(current["items"]) == 2
    # The closed loans are still listed by status, bucket and all.
    cancelled = (await w.get("/v1/loans?status=cancelled"))["items"]
    assert [(loan["id"], loan["bucket"]) for loan in cancelled] == [(ids[0], "current")]
    assert (await w.get("/v1/loans?status=paid_off&bucket=current"))["items"] == []


async def test_the_bucket_filter_narrows_as_the_summary_does(client: httpx.AsyncClient) -> None:
    """The summary counts one currency (and product, merchant); the list listed every
    currency's loans in the bucket and could not be narrowed (a dashboard tester's)."""
    w = await world(client)
    cny = [(await w.loan(principal="100.00"))["id"] for _ in range(2)]
    yen = await product(client, w.admin, currency="JPY")
    borrower = await w.borrower(currency="JPY", monthly_income="300000")
    await w.loan(borrower["id"], product_code=yen["code"], principal="30000")
    listed = await w.get("/v1/loans?bucket=current&currency=CNY")
    summary = await w.get("/v1/portfolio/summary?currency=CNY")
    assert [loan["id"] for loan in listed["items"]] == cny
    assert summary["by_bucket"]["current"]["count"] == len(cny)
    by_product = await w.get(f"/v1/loans?bucket=current&product_code={yen['code']}")
    assert [loan["currency"] for loan in by_product["items"]] == ["JPY"]
    unknown = await client.get("/v1/loans?currency=CLF", headers=w.merchant)
    assert (unknown.status_code, unknown.json()["errors"][0]["field"]) == (422, "currency")


async def test_installment_rows_are_stored_once(client: httpx.AsyncClient) -> None:
    w = await world(client)
    await w.loan(term=24)
    assert await count(LoanInstallment) == 24


async def test_the_loan_read_on_the_driver_is_sqlalchemys(client: httpx.AsyncClient) -> None:
    """GET /v1/loans/{id} reads on asyncpg itself (Database.read_rows), skipping SQLAlchemy's
    result processing: the same rows, value for value and type for type, with every date set
    (a close's business date and delinquency date, an installment paid, a rate in ppm)."""
    w = await world(client, annual_interest_rate="0.1299")
    loan = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-15")
    await w.post("/v1/close-runs", {"as_of": "2026-03-01"}, headers=w.admin, expect=201)
    await w.pay(loan["id"], "500.00")
    on_driver = await database.read_rows(loans._LOAN_READ, {"loan_id": loan["id"]})
    async with database.engine.connect() as connection:
        through = (await connection.execute(loans._LOAN_READ, {"loan_id": loan["id"]})).all()
    assert len(on_driver) == 3
    assert [tuple(row) for row in on_driver] == [tuple(row) for row in through]
    assert [list(map(type, row)) for row in on_driver] == [list(map(type, row)) for row in through]
    assert None not in (
        on_driver[0][-1],
        on_driver[0][loans.LoanRecord._fields.index("delinquency_as_of")],
    )
    read = await w.get(f"/v1/loans/{loan['id']}")
    assert read["annual_interest_rate"] == "0.1299"
    assert read["balances"]["principal_outstanding"] != "1200.00"
