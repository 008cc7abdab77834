"""The embedded default as a newcomer meets it: `loanwatch` with no configuration, a SQLite
file in the working folder, a live server, plain HTTP."""

import asyncio
import json
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from alembic import command as alembic
from alembic.script import ScriptDirectory
from standardwebhooks import Webhook

from app.migrate import alembic_config
from tests.processes import LOANWATCH, clean_env, free_port


def started_server(
    folder: Path, log_name: str = "serve.log", settings: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`loanwatch serve` in ``folder`` (its SQLite file), once it answers; the process and its
    base URL. Its output goes to ``folder / log_name``; ``settings`` are added to its
    environment."""
    port = free_port()
    log = folder / log_name
    with log.open("w") as out:
        process = subprocess.Popen(
            [LOANWATCH, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder, env={**clean_env(), **(settings or {})}, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(log.read_text())


@contextmanager
def serving(
    folder: Path, log_name: str = "serve.log", settings: dict[str, str] | None = None
) -> Iterator[str]:
    """``started_server`` until the block ends; its base URL."""
    process, base = started_server(folder, log_name, settings)
    try:
        yield base
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def embedded_server(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    with serving(tmp_path) as base:
        log = (tmp_path / "serve.log").read_text()
        match = re.search(r"\b(lw_[A-Za-z0-9_-]+)", log)
        assert match, log
        yield base, match.group(1), tmp_path


def test_cli_creates_a_key_and_prints_it_alone(tmp_path: Path) -> None:
    env = clean_env()
    subprocess.run([LOANWATCH, "migrate"], cwd=tmp_path, env=env, check=True)
    result = subprocess.run(
        [LOANWATCH, "api-keys", "create", "--role", "admin"],
        cwd=tmp_path, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert re.fullmatch(r"lw_[A-Za-z0-9_-]{43}\n", result.stdout)
    # It holds secrets as they must be to sign: its owner's alone (it was every user's).
    assert stat.S_IMODE((tmp_path / "loanwatch.db").stat().st_mode) == 0o600
    # Its id beside it, on stderr: without it no key the CLI made could be revoked (a
    # tester's). Revoked, it lets nothing in.
    (key_id,) = re.findall(r"key id (key_\w+)", result.stderr)
    revoke = [LOANWATCH, "api-keys", "revoke", key_id]
    revoked = subprocess.run(revoke, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert (revoked.returncode, revoked.stderr) == (0, f"{key_id} revoked\n")
    # Listed at the host too, a JSON object a line, revoked or not, never a secret (only the
    # API listed keys: a tester's).
    listed = subprocess.run([LOANWATCH, "api-keys", "list"], cwd=tmp_path, env=env, check=True,
                            capture_output=True, text=True)  # fmt: skip
    (key,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (key["id"], key["role"]) == (key_id, "admin")
    assert key["revoked_at"] is not None
    assert result.stdout.strip() not in listed.stdout
    again = subprocess.run(revoke, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 2
    assert again.stderr.startswith(f"error: API key {key_id} was revoked at ")
    refused = subprocess.run(
        [LOANWATCH, "api-keys", "create", "--role", "merchant"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert (refused.returncode, refused.stdout) == (2, "")
    # The option it lacks, as the command names it (it said merchant_id: a tester's).
    assert refused.stderr == "error: --merchant-id: a merchant key needs a --merchant-id\n"
    empty = subprocess.run(
        [LOANWATCH, "api-keys", "create", "--role", "merchant", "--merchant-id", ""],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert (empty.returncode, empty.stdout, empty.stderr) == (
        2,
        "",
        "error: --merchant-id is empty\n",
    )


def test_an_admin_command_says_it_upgraded_the_database(tmp_path: Path) -> None:
    """A command run with a new release installed migrates the database before its work:
    said, as the database in use changes under the processes of the old (it upgraded it
    without a word, a tester's). A new database is made silently."""
    env = clean_env()
    create = [LOANWATCH, "api-keys", "create", "--role", "dashboard"]
    made = subprocess.run(create, cwd=tmp_path, env=env, check=True, capture_output=True,
                          text=True)  # fmt: skip
    assert "upgraded" not in made.stderr
    config = alembic_config(f"sqlite+aiosqlite:///{tmp_path / 'loanwatch.db'}")
    alembic.downgrade(config, "-2")
    upgraded = subprocess.run(create, cwd=tmp_path, env=env, check=True, capture_output=True,
                              text=True)  # fmt: skip
    script = ScriptDirectory.from_config(config)
    head = script.get_revision(script.get_current_head())
    assert head is not None
    expected = f"upgraded the database: applied migrations {head.down_revision} to {head.revision}"
    assert expected in upgraded.stderr
    again = subprocess.run(create, cwd=tmp_path, env=env, check=True, capture_output=True,
                           text=True)  # fmt: skip
    assert "upgraded" not in again.stderr


def test_a_start_makes_no_admin_key_once_every_one_is_revoked(tmp_path: Path) -> None:
    """The first start makes an admin key; revoked, it was made again at every start and
    printed to the service's log, unasked (a tester's). Now the start says how to make one."""
    with serving(tmp_path):
        (key_id,) = re.findall(r"key id (key_\w+)", (tmp_path / "serve.log").read_text())
    subprocess.run([LOANWATCH, "api-keys", "revoke", key_id], cwd=tmp_path, env=clean_env(),
                   check=True, capture_output=True)  # fmt: skip
    with serving(tmp_path, "again.log"):
        log = (tmp_path / "again.log").read_text()
    assert "lw_" not in log
    assert "warning: every admin API key is revoked" in log


def test_migrate_warns_of_a_file_other_users_may_read(tmp_path: Path) -> None:
    """A file an older release made under the usual umask keeps its mode (the operator may
    mean it), but it holds signing secrets: the start says so (a tester's)."""
    env = clean_env()
    quiet = subprocess.run([LOANWATCH, "migrate"], cwd=tmp_path, env=env,
                           check=True, capture_output=True, text=True)  # fmt: skip
    assert "warning" not in quiet.stderr
    # A new database and one at the latest schema said the same (a tester's).
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert re.search(rf"applied \d+ migrations: database is at the latest schema, {head}\n\Z",
                     quiet.stderr)  # fmt: skip
    (tmp_path / "loanwatch.db").chmod(0o644)
    warned = subprocess.run([LOANWATCH, "migrate"], cwd=tmp_path, env=env,
                            check=True, capture_output=True, text=True)  # fmt: skip
    assert "warning: other users of this machine may read ./loanwatch.db" in warned.stderr
    assert warned.stderr.endswith("database is at the latest schema: nothing to apply\n")
    assert stat.S_IMODE((tmp_path / "loanwatch.db").stat().st_mode) == 0o644


def test_walkthrough_on_the_embedded_default(embedded_server: tuple[str, str, Path]) -> None:
    base, admin_key, folder = embedded_server
    assert (folder / "loanwatch.db").exists()
    admin = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/readyz").json()["checks"] == {"database": "ok"}
        merchant = http.post("/v1/merchants", json={"name": "Acme"}, headers=admin).json()
        key = http.post("/v1/api-keys", json={"role": "merchant", "merchant_id": merchant["id"]},
                        headers=admin).json()["key"]  # fmt: skip
        pos = {"Authorization": f"Bearer {key}"}
        product = http.post("/v1/products", headers=admin, json={
            "code": "TV12", "name": "TV", "annual_interest_rate": "0.1299",
            "amortization": "equal_installment", "term_options": [12],
        })  # fmt: skip
        assert product.status_code == 201, product.text
        borrower = http.post("/v1/borrowers", headers=pos, json={
            "external_id": "c-1", "name": "Li Wei", "phone": "+8613800138000",
            "monthly_income": "8000.00",
        }).json()  # fmt: skip
        loan_body = {"borrower_id": borrower["id"], "product_code": "TV12",
                     "principal": "6000.00", "term": 12, "disbursed_on": "2026-01-31",
                     "merchant_order_ref": "ORD-1"}  # fmt: skip
        loan = http.post("/v1/loans", json=loan_body, headers={**pos, "Idempotency-Key": "o-1"})
        assert loan.status_code == 201, loan.text
        replay = http.post("/v1/loans", json=loan_body, headers={**pos, "Idempotency-Key": "o-1"})
        assert replay.headers["idempotent-replayed"] == "true"
        loan_id = loan.json()["id"]
        payment = http.post(f"/v1/loans/{loan_id}/payments", headers=pos, json={
            "amount": "535.88", "received_on": "2026-02-27", "channel": "pos",
            "external_ref": "r-1",
        })  # fmt: skip
        assert payment.status_code == 201, payment.text
        assert payment.json()["allocation"] == [
            {"installment_seq": 1, "fees": "0.00", "interest": "64.95", "principal": "470.93"}
        ]
        reversed_ = http.post(f"/v1/payments/{payment.json()['id']}/reverse", headers=pos,
                              json={"reason": "nsf"})  # fmt: skip
        assert reversed_.status_code == 200
        got = http.get(f"/v1/loans/{loan_id}", headers=pos).json()
        assert got["balances"]["principal_outstanding"] == "6000.00"
        run = http.post("/v1/close-runs", json={"as_of": "2026-03-10"}, headers=admin)
        assert run.status_code == 201, run.text
        assert run.json()["status"] == "succeeded"
        assert run.json()["counts"]["loans_snapshotted"] == 1  # -1 on SQLite (a tester's)
        got = http.get(f"/v1/loans/{loan_id}", headers=pos).json()
        assert (got["days_past_due"], got["bucket"], got["status"]) == (10, "1-30", "delinquent")
        assert got["delinquency_as_of"] == "2026-03-10"
        assert http.get("/v1/business-date", headers=admin).json()["business_date"] == "2026-03-10"
        risk = http.get(f"/v1/loans/{loan_id}/risk", headers=pos).json()
        [flag] = [f for f in risk["flags"] if f["code"] == "first_payment_default"]
        raised = http.get("/v1/events?type=risk.flag_raised", headers=admin).json()["items"]
        [data] = [e["data"] for e in raised if e["data"]["flag_id"] == flag["id"]]
        # Raised by the first close, as of its date (before any close, the reversal raised
        # none): its event carries the flag as raised.
        shown = ("loan_id", "borrower_id", "code", "status", "raised_on", "cleared_on")
        assert {k: data[k] for k in shown} == {k: flag[k] for k in shown}
        assert data["evidence"].keys() == flag["evidence"].keys()
        # The portfolio views on SQLite: the live summary, vintages, roll rates between two
        # closes, segments.
        summary = http.get("/v1/portfolio/summary", headers=pos)
        assert summary.status_code == 200, summary.text
        assert summary.json()["by_bucket"]["1-30"]["count"] == 1
        assert summary.json()["open_flags"]["first_payment_default"] == 1
        assert http.get("/v1/portfolio/summary", headers={
            **pos, "If-None-Match": summary.headers["etag"]}).status_code == 304  # fmt: skip
        # The next night evaluates only the loans it may have changed: the late one keeps
        # its flag (a loan left out would see it cleared).
        run = http.post("/v1/close-runs", json={"as_of": "2026-03-11"}, headers=admin)
        assert run.json()["status"] == "succeeded", run.text
        risk = http.get(f"/v1/loans/{loan_id}/risk", headers=pos).json()
        assert "first_payment_default" in {f["code"] for f in risk["flags"]}
        roll = http.get("/v1/portfolio/roll-rates?from=2026-03-10&to=2026-03-11", headers=admin)
        assert roll.status_code == 200, roll.text
        assert roll.json()["matrix"]["1-30"]["1-30"]["count"] == 1
        vintages = http.get("/v1/portfolio/vintages", headers=admin).json()["vintages"]
        assert [(v["origination_month"], v["loans"]) for v in vintages] == [("2026-01", 1)]
        segments = http.get("/v1/portfolio/segments?by=merchant", headers=admin).json()
        assert segments["segments"][0]["loans"] == 1
        events = http.get("/v1/events", headers=admin).json()["items"]
        shown = {"loan.created", "payment.received", "payment.reversed"}
        assert [e["type"] for e in events if e["type"] in shown] == [
            "loan.created", "payment.received", "payment.reversed",
        ]  # fmt: skip
    # Every line of the server's log is dated, the access log's too: none was (a tester's).
    served = (folder / "serve.log").read_text()
    dated = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} INFO: +"
    assert re.search(rf"^{dated}Uvicorn running on ", served, re.MULTILINE), served
    assert re.search(rf'^{dated}127.0.0.1:\d+ - "POST /v1/merchants HTTP/1.1" 201', served,
                     re.MULTILINE), served  # fmt: skip


def test_gateway_notifications_on_the_embedded_default(
    embedded_server: tuple[str, str, Path],
) -> None:
    """What PostgreSQL's tests cannot show of SQLite: the claim of a notification's row (its
    ON CONFLICT), the length of its webhook-id, a chargeback of the gateway's own payment."""
    base, admin_key, _ = embedded_server
    admin = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=base, timeout=10) as http:
        merchant = http.post("/v1/merchants", json={"name": "Acme"}, headers=admin).json()
        product = {"code": "TV12", "name": "TV", "annual_interest_rate": "0.1299",
                   "amortization": "equal_installment", "term_options": [12]}  # fmt: skip
        assert http.post("/v1/products", json=product, headers=admin).status_code == 201
        borrower = http.post("/v1/borrowers", headers=admin, json={
            "merchant_id": merchant["id"], "external_id": "c-1", "name": "Li Wei",
            "phone": "+8613800138000", "monthly_income": "8000.00",
        }).json()  # fmt: skip
        loan = http.post("/v1/loans", headers=admin, json={
            "borrower_id": borrower["id"], "product_code": "TV12", "principal": "6000.00",
            "term": 12, "disbursed_on": "2026-01-31", "merchant_order_ref": "ORD-1",
        }).json()  # fmt: skip
        secret = http.post("/v1/gateways", json={"name": "alipay"}, headers=admin).json()["secret"]

        def notify(type_: str, msg_id: str, **data: str) -> httpx.Response:
            body = json.dumps({"type": type_, "timestamp": "2026-02-27T08:00:00Z", "data": {
                "loan_id": loan["id"], "external_ref": "dd-1", "received_on": "2026-02-27",
                **data}})  # fmt: skip
            now = datetime.now(UTC)
            headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                       "webhook-signature": Webhook(secret).sign(msg_id, now, body),
                       "content-type": "application/json"}  # fmt: skip
            return http.post("/v1/inbound/gateways/alipay", content=body, headers=headers)

        assert notify("debit.succeeded", "m" * 256, amount="535.88").status_code == 422
        first = notify("debit.succeeded", "m-1", amount="535.88")
        assert first.json()["status"] == "processed", first.text
        again = notify("debit.succeeded", "m-1", amount="535.88")
        assert again.json()["status"] == "duplicate", again.text
        partial = notify("payment.charged_back", "m-2", amount="100.00")
        assert (partial.status_code, partial.json()["code"]) == (422, "chargeback_amount_mismatch")
        whole = notify("payment.charged_back", "m-3", amount="535.88")
        assert whole.json()["result"]["status"] == "reversed", whole.text


CHECKS = ",".join((
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance",
))  # fmt: skip


def a_book(base: str, key: str) -> dict[str, str]:
    """A merchant, product, borrower, loan with a payment, a pending payment holiday, a webhook
    endpoint: real ids for every path parameter and body reference, so the fuzz reaches the
    business logic behind them instead of a 404."""
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"})

    def created(path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = http.post(path, json=body)
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    merchant = created("/v1/merchants", {"name": "Book"})["id"]
    product = {"code": "B12", "name": "Book 12", "annual_interest_rate": "0.12",
               "amortization": "equal_installment", "term_options": [3, 12],
               "late_fee": {"kind": "fixed", "amount": "25.00"}}  # fmt: skip
    created("/v1/products", product)
    borrower = created("/v1/borrowers", {
        "merchant_id": merchant, "external_id": "B-1", "name": "Book",
        "phone": "+8613800000000", "monthly_income": "20000.00",
    })["id"]  # fmt: skip
    loan = created("/v1/loans", {
        "borrower_id": borrower, "product_code": "B12", "principal": "3000.00", "term": 12,
        "disbursed_on": "2026-06-01", "merchant_order_ref": "B-1",
    })["id"]  # fmt: skip
    paid = {"amount": "100.00", "received_on": "2026-07-01"}
    payment = created(f"/v1/loans/{loan}/payments", paid)["id"]
    holiday = {"kind": "payment_holiday", "months": 1, "reason": "fuzz"}
    restructure = created(f"/v1/loans/{loan}/restructures", holiday)["id"]
    hooks = {"url": "https://example.com/hooks", "event_types": ["*"]}
    endpoint = created("/v1/webhook-endpoints", hooks)["id"]
    event = http.get("/v1/events").json()["items"][0]["id"]
    return {"loan_id": loan, "borrower_id": borrower, "payment_id": payment,
            "restructure_id": restructure, "endpoint_id": endpoint, "event_id": event,
            "code": "B12", "body.borrower_id": borrower, "body.product_code": "B12",
            "body.merchant_id": merchant}  # fmt: skip


@pytest.mark.parametrize("caller", ["admin", "merchant", "admin, on a book"])
def test_no_request_gets_a_server_error(
    embedded_server: tuple[str, str, Path], caller: str
) -> None:
    """Schemathesis sends every operation in the OpenAPI document examples, boundary values,
    malformed and random inputs, and sequences linked by the ids they return; any 5xx fails,
    and so does any answer the document does not describe (status, content type, headers,
    body). On a book, every id it sends is a real one. The seed is fixed so that a failure
    reproduces (and CI does not flake)."""
    base, key, folder = embedded_server
    config: list[str] = []
    if caller == "merchant":
        headers = {"Authorization": f"Bearer {key}"}
        merchant = httpx.post(f"{base}/v1/merchants", json={"name": "Fuzz"}, headers=headers)
        product = {"code": "F12", "name": "Fuzz 12", "annual_interest_rate": "0.12",
                   "amortization": "equal_installment", "term_options": [3, 12]}  # fmt: skip
        assert httpx.post(f"{base}/v1/products", json=product, headers=headers).status_code == 201
        key = subprocess.run(
            [LOANWATCH, "api-keys", "create", "--role", "merchant",
             "--merchant-id", merchant.json()["id"]],
            cwd=folder, env=clean_env(), check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    book: dict[str, str] = {}
    if caller == "admin, on a book":
        toml = folder / "schemathesis.toml"
        book = a_book(base, key)
        lines = ["[parameters]", *(f'"{k}" = "{v}"' for k, v in book.items())]
        toml.write_text("\n".join(lines) + "\n")
        config = ["--config-file", str(toml)]
    result = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), *config, "run",
         f"{base}/openapi.json", "--header", f"Authorization: Bearer {key}", "--checks", CHECKS,
         "--max-examples", "15", "--seed", "20261129", "--workers", "1"],
        cwd=folder, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:]
    assert "passed" in result.stdout
    if book:  # the fuzz did use the book's ids
        assert (
            f'GET /v1/loans/{book["loan_id"]} HTTP/1.1" 200' in (folder / "serve.log").read_text()
        )


async def test_two_servers_on_one_file_take_turns(embedded_server: tuple[str, str, Path]) -> None:
    """A second `loanwatch serve` (or `loanwatch close`) on the same SQLite file: each
    transaction holds the file from its first read, so neither process acts on what the other
    is changing. Payments raced through both were each allocated in full, and a borrower's
    limit held against originations through both (they were lost, and the limit exceeded,
    when transactions began at their first write)."""
    first, key, folder = embedded_server
    with serving(folder, "second.log") as second:
        admin = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(headers=admin, timeout=60) as http:

            async def created(path: str, body: dict[str, Any]) -> dict[str, Any]:
                answer = await http.post(f"{first}{path}", json=body)
                assert answer.status_code == 201, answer.text
                return dict(answer.json())

            merchant = (await created("/v1/merchants", {"name": "Two tills"}))["id"]
            product = {"code": "T12", "name": "Twelve", "annual_interest_rate": "0.12",
                       "amortization": "equal_installment", "term_options": [12]}  # fmt: skip
            await created("/v1/products", product)

            async def borrower(number: int) -> str:
                body = {"merchant_id": merchant, "external_id": f"T-{number}", "name": "Li",
                        "phone": "+8613800000000", "monthly_income": "50000.00"}  # fmt: skip
                return str((await created("/v1/borrowers", body))["id"])

            def loan(borrower_id: str, ref: str, principal: str = "1200.00") -> dict[str, Any]:
                return {"borrower_id": borrower_id, "product_code": "T12", "term": 12,
                        "principal": principal, "merchant_order_ref": ref}  # fmt: skip

            loans = [(await created("/v1/loans", loan(await borrower(n), f"L-{n}")))["id"]
                     for n in range(30)]  # fmt: skip
            paid = await asyncio.gather(*(
                http.post(f"{(first, second)[n % 2]}/v1/loans/{loan_id}/payments",
                          json={"amount": "10.00", "external_ref": f"P-{loan_id}-{n}"})
                for loan_id in loans for n in range(4)
            ))  # fmt: skip
            assert {answer.status_code for answer in paid} == {201}, [a.text for a in paid]
            for loan_id in loans:
                schedule = (await http.get(f"{first}/v1/loans/{loan_id}/schedule")).json()
                assert sum(Decimal(i["paid"]) for i in schedule["installments"]) == 40, loan_id
            for payment in paid:
                allocated = sum(
                    Decimal(part[kind])
                    for part in (await http.get(f"{second}/v1/payments/{payment.json()['id']}"))
                    .json()["allocation"]
                    for kind in ("fees", "interest", "principal")
                )  # fmt: skip
                assert allocated == Decimal("10.00"), payment.json()["id"]

            for round_ in range(4):
                limited = await borrower(100 + round_)
                patched = await http.patch(f"{first}/v1/borrowers/{limited}",
                                           json={"credit_limit": "3000.00"})  # fmt: skip
                assert patched.status_code == 200, patched.text
                originated = await asyncio.gather(*(
                    http.post(f"{(first, second)[n % 2]}/v1/loans",
                              json=loan(limited, f"R-{round_}-{n}", "1000.00"))
                    for n in range(8)
                ))  # fmt: skip
                assert sorted(a.status_code for a in originated) == [201] * 3 + [422] * 5
                exposure = (await http.get(f"{second}/v1/borrowers/{limited}")).json()["exposure"]
                assert exposure == "3000.00"


def test_the_close_leaves_sqlite_its_planner_statistics(tmp_path: Path) -> None:
    """Without statistics SQLite read a loan's open flags through the index on every open flag:
    a payment took 0.6 s on a book of 115,000 open flags (a tester's). The close asks for them
    (PRAGMA optimize), as SQLite advises once a day on a long-lived connection."""
    import sqlite3

    env = clean_env()
    for command in (["migrate"], ["demo", "--loans", "300", "--as-of", "2026-12-04"],
                    ["close", "--as-of", "2026-12-05"]):  # fmt: skip
        subprocess.run([LOANWATCH, *command], cwd=tmp_path, env=env, check=True,
                       capture_output=True)  # fmt: skip
    with sqlite3.connect(tmp_path / "loanwatch.db") as db:
        analysed = {table for (table,) in db.execute("SELECT DISTINCT tbl FROM sqlite_stat1")}
    assert {"loan", "loan_installment"} <= analysed


# Run by the test below in a process of its own, on the embedded default's SQLite file.
_CANCEL_A_CATCH_UP = """
import asyncio, gc, json
from sqlalchemy import select
from app.close import service
from app.close.models import CloseRun
from app.db import database, session_scope

async def main():
    gc.disable()  # what collects the cancelled statement is the fix's, not the collector's luck
    dates = await service.close_yesterday()
    closing = asyncio.create_task(service.run_dates_in_process(dates))
    # Well into a catch-up of many seconds, mid-statement: its time goes there. (With 2,000 loans
    # a CI run found no run cancelled: the catch-up over, or the cancel between two dates.)
    await asyncio.sleep(1.5)
    closing.cancel()
    try:
        await closing
        ended = "finished"
    except asyncio.CancelledError:
        ended = "cancelled"
    except Exception as exc:
        ended = f"{type(exc).__name__}: {exc}"
    async with session_scope() as session:
        runs = (await session.scalars(select(CloseRun).order_by(CloseRun.as_of))).all()
    print(json.dumps({"ended": ended, "dates": len(dates),
                      "runs": [[str(r.as_of), r.status, r.error] for r in runs]}))
    await database.dispose()

asyncio.run(main())
"""


def test_a_close_cancelled_on_sqlite_is_failed_at_once(tmp_path: Path) -> None:
    """A stop cancels the embedded default's close mid-statement: its run was left running,
    and every request to close refused 409 for 30 minutes, after the stop itself had waited
    30 s (a tester's, 6 stops of 8). The abandoned connection held SQLite's write lock until
    the cancelled statement was collected, so recording the failure waited out the busy
    timeout and failed."""
    env = clean_env()
    for command in (["migrate"], ["demo", "--loans", "5000", "--as-of", "2026-10-01"],
                    ["close", "--as-of", "2026-10-01"]):  # fmt: skip
        subprocess.run([LOANWATCH, *command], cwd=tmp_path, env=env, check=True,
                       capture_output=True)  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _CANCEL_A_CATCH_UP], cwd=tmp_path, env=env,
                          check=True, capture_output=True, text=True)  # fmt: skip
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["ended"] == "cancelled", result["ended"]
    runs = {as_of: (status, error) for as_of, status, error in result["runs"]}
    cancelled = [d for d, (_, error) in runs.items() if error == "cancelled: the process stopped"]
    assert len(cancelled) == 1, runs
    assert runs[cancelled[0]][0] == "failed"
    assert not [d for d, (status, _) in runs.items() if status in ("running", "pending")], runs
    assert len(runs) == result["dates"] + 1  # and the demo's close


def _close_runs(folder: Path) -> dict[str, tuple[str, str | None]]:
    import sqlite3

    with sqlite3.connect(folder / "loanwatch.db") as db:
        rows = db.execute("SELECT as_of, status, error FROM close_run").fetchall()
    return {as_of: (status, error) for as_of, status, error in rows}


def _wait_for_a_running_close(folder: Path) -> None:
    # A signal sent after a fixed sleep could come before the close began on a busy machine:
    # the CLI then died by it (-15) before its handler was installed.
    for _ in range(600):
        if any(status == "running" for status, _ in _close_runs(folder).values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no close started: {_close_runs(folder)}")


def test_sigterm_fails_the_close_of_a_request_and_of_the_cli(tmp_path: Path) -> None:
    """SIGTERM (kill, timeout, systemd, Docker) stops a close as Ctrl-C does, its run failed
    and a close possible at once. A server waited for a catch-up a request had started to
    close every date left (minutes), and Docker's kill 10 s on left it running; `loanwatch
    close` ended where it stood, its run left running: every close refused 409 until it went
    stale (a tester's)."""
    env = clean_env()
    for command in (["migrate"], ["demo", "--loans", "5000", "--as-of", "2026-09-01"],
                    ["close", "--as-of", "2026-09-01"]):  # fmt: skip
        subprocess.run([LOANWATCH, *command], cwd=tmp_path, env=env, check=True,
                       capture_output=True)  # fmt: skip
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()

    created = subprocess.run([LOANWATCH, "api-keys", "create", "--role", "admin"], cwd=tmp_path,
                             env=env, check=True, capture_output=True, text=True)  # fmt: skip
    server, base = started_server(tmp_path)

    async def close_and_stop() -> httpx.Response:
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            asked = asyncio.create_task(client.post(
                "/v1/close-runs", json={"as_of": yesterday},
                headers={"Authorization": f"Bearer {created.stdout.strip()}"},
            ))  # fmt: skip
            await asyncio.to_thread(_wait_for_a_running_close, tmp_path)
            server.send_signal(signal.SIGTERM)
            return await asked

    try:
        answer = asyncio.run(close_and_stop())
        # Shut down, uvicorn ends by the signal it was sent.
        assert server.wait(60) == -signal.SIGTERM
    finally:
        server.kill()
    # The stop answers for the request at once (app/api/stopping.py); the close's own
    # cancellation records its run failed.
    assert (answer.status_code, answer.json()["code"]) == (503, "service_stopping"), answer.text
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
    runs = _close_runs(tmp_path)
    assert not [d for d, (status, _) in runs.items() if status in ("running", "pending")], runs
    assert [error for _, error in runs.values()].count("cancelled: the process stopped") == 1

    cli = subprocess.Popen([LOANWATCH, "close", "--as-of", yesterday], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_a_running_close(tmp_path)
    cli.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    cli.send_signal(signal.SIGTERM)  # a second cut the record of the first short
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 143, err
    assert "close stopped (SIGTERM)" in err
    runs = _close_runs(tmp_path)
    assert not [d for d, (status, _) in runs.items() if status in ("running", "pending")], runs
    # The date it stopped at (the same as the server's, if it had not finished it).
    assert [error for _, error in runs.values()].count("cancelled: the process stopped") == 1


async def test_an_endpoint_created_under_load_is_sent_every_event_after_it(
    embedded_server: tuple[str, str, Path],
) -> None:
    """Events are sent to the endpoints their transaction sees: an endpoint dated while its
    request waited for SQLite's one connection missed the events written meanwhile, dated
    after it, which `recover` then found owed (a tester's, about a second's each)."""
    base, key, _ = embedded_server
    ids = await asyncio.to_thread(a_book, base, key)
    admin = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=admin, timeout=60) as http:
        paying = True

        async def pay() -> None:
            while paying:
                answer = await http.post(f"/v1/loans/{ids['loan_id']}/payments",
                                         json={"amount": "0.01"})  # fmt: skip
                assert answer.status_code == 201, answer.text

        payers = [asyncio.create_task(pay()) for _ in range(8)]
        endpoints = []
        for n in range(6):
            await asyncio.sleep(0.3)
            body = {"url": f"https://example.com/hooks/{n}", "event_types": ["payment.*"]}
            made = await http.post("/v1/webhook-endpoints", json=body)
            assert made.status_code == 201, made.text
            endpoints.append(made.json())
        await asyncio.sleep(0.5)
        paying = False
        await asyncio.gather(*payers)

        async def every(path: str) -> list[dict[str, Any]]:
            items, cursor = [], ""
            while True:
                page = (await http.get(f"{path}&cursor={cursor}")).json()
                items += page["items"]
                if not (cursor := page["next_cursor"]):
                    return items

        feed = await every("/v1/events?type=payment.received&limit=200")
        for endpoint in endpoints:
            owed = {e["id"] for e in feed if e["timestamp"] >= endpoint["created_at"]}
            deliveries = f"/v1/webhook-endpoints/{endpoint['id']}/deliveries?limit=200"
            queued = {d["event_id"] for d in await every(deliveries)}
            assert owed, endpoint["created_at"]
            assert not owed - queued, (endpoint["created_at"], len(owed - queued))


def test_a_start_warns_of_a_business_date_after_today_in_the_zone(tmp_path: Path) -> None:
    """A book closed through today in one zone, served in a zone still on yesterday: closes
    are refused until the zone reaches that date, new loans dated before it. Nothing told the
    operator the zone had changed (a tester's)."""
    # 26 hours apart: whatever the hour, the second is on an earlier date than the first.
    env = {**clean_env(), "LOANWATCH_TIMEZONE": "Pacific/Kiritimati"}
    today_there = datetime.now(ZoneInfo("Pacific/Kiritimati")).date().isoformat()
    closed = subprocess.run([LOANWATCH, "close", "--as-of", today_there], cwd=tmp_path,
                            env=env, capture_output=True, text=True)  # fmt: skip
    assert closed.returncode == 0, closed.stderr
    for zone, warned in (("Pacific/Kiritimati", False), ("Etc/GMT+12", True)):
        log = tmp_path / f"{zone.replace('/', '-')}.log"
        port = free_port()
        with log.open("w") as out:
            process = subprocess.Popen(
                [LOANWATCH, "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                env={**env, "LOANWATCH_TIMEZONE": zone}, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            for _ in range(100):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
        finally:
            process.terminate()
            process.wait(10)
        said = f"warning: the business date {today_there} is after today" in log.read_text()
        assert said is warned, log.read_text()


def test_an_endpoint_deleted_mid_attempt_holds_up_no_other_endpoint(tmp_path: Path) -> None:
    """SQLite gave a deleted endpoint's last delivery id to the next delivery, another
    endpoint's: the drain still waiting on the first attempt took the new delivery for the one
    it held and left it unsent until its lease ran out, a minute (a tester's)."""
    from tests.webhooks.receiver import receiving, wait_for

    private = {"LOANWATCH_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"}
    with (
        receiving() as hanging,
        receiving() as healthy,
        serving(tmp_path, settings=private) as base,
    ):
        hanging.gate.clear()
        key = re.search(r"\b(lw_[A-Za-z0-9_-]+)", (tmp_path / "serve.log").read_text())
        assert key
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key.group(1)}"})
        endpoints = [  # nothing of their types is written here: tests alone are sent
            http.post("/v1/webhook-endpoints",
                      json={"url": r.url, "event_types": ["promise.broken"]}).json()["id"]
            for r in (hanging, healthy)
        ]  # fmt: skip
        assert http.post(f"/v1/webhook-endpoints/{endpoints[0]}/test").status_code == 202
        for _ in range(100):
            if hanging.arrived:
                break
            time.sleep(0.1)
        assert hanging.arrived, "the first attempt never started"
        assert http.delete(f"/v1/webhook-endpoints/{endpoints[0]}").status_code == 204
        assert http.post(f"/v1/webhook-endpoints/{endpoints[1]}/test").status_code == 202
        # Within the hanging attempt's timeout and well before a lease (60 s) runs out.
        asyncio.run(wait_for(healthy, 1, 30))
        delivery = http.get(f"/v1/webhook-endpoints/{endpoints[1]}/deliveries").json()
        assert delivery["items"][0]["id"] != "1"  # the deleted endpoint's


def test_a_key_sent_in_a_query_string_is_not_logged(
    embedded_server: tuple[str, str, Path],
) -> None:
    """Keys are read from the Authorization header alone: one sent as ?api_key= was refused,
    and written verbatim to the access log (a tester's)."""
    base, key, folder = embedded_server
    for query in (f"api_key={key}&limit=5", f"limit=5&accessToken={key}", f"x=1&{key}",
                  f"t%6Fken={key}", f"q=%6Cw_{key[3:]}", f"q=LW_{key[3:]}"):  # fmt: skip
        assert httpx.get(f"{base}/v1/merchants?{query}").status_code == 401
    assert httpx.get(f"{base}/v1/loans/{key}").status_code == 401
    deadline = time.monotonic() + 10  # a bound, not a speed check: the line is written after
    while "/v1/loans/REDACTED" not in (log := (folder / "serve.log").read_text()):
        assert time.monotonic() < deadline, log
        time.sleep(0.1)
    assert log.count(key[3:]) == 1  # as the first start showed it
    for logged in ("?api_key=REDACTED&limit=5 ", "?limit=5&accessToken=REDACTED ",
                   "?x=1&REDACTED ", "?t%6Fken=REDACTED ", "?q=REDACTED "):  # fmt: skip
        assert f"/v1/merchants{logged}" in log


def test_a_request_is_logged_with_its_id(embedded_server: tuple[str, str, Path]) -> None:
    """The id an answer names (X-Request-ID) finds the request's lines in the server's log."""
    base, key, folder = embedded_server
    headers = {"Authorization": f"Bearer {key}", "X-Request-ID": "pos-trace-42"}
    assert httpx.get(f"{base}/v1/merchants", headers=headers).status_code == 200
    made_up = httpx.get(f"{base}/v1/loans/nope", headers={**headers, "X-Request-ID": "a b"})
    assert made_up.status_code == 404
    lines = {
        '"GET /v1/merchants HTTP/1.1" 200 OK request=pos-trace-42\n',
        f'"GET /v1/loans/nope HTTP/1.1" 404 Not Found request={made_up.headers["x-request-id"]}\n',
    }
    deadline = time.monotonic() + 10  # a bound, not a speed check: the line is written after
    while not all(line in (log := (folder / "serve.log").read_text()) for line in lines):
        assert time.monotonic() < deadline, log
        time.sleep(0.1)
