"""A close is run by one attempt at a time: concurrent requests are refused, a piece of an
attempt since replaced does nothing, and a request the task queue cannot take stores nothing."""

import asyncio
import logging
import re
import subprocess
import sys
import time
import warnings
from datetime import date, datetime, timedelta

import httpx
import pytest
from celery import Celery
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import SAWarning

from app import clock, scheduler
from app.api.auth import Principal
from app.api_keys.models import Role
from app.close import service as close_service
from app.close.errors import CloseInProgress
from app.close.models import CloseRun
from app.config import get_settings
from app.db import database, session_scope, utc_now
from app.ledger.models import LedgerTransaction
from app.loans import service as loans_service
from app.loans.models import LoanInstallment
from app.ops import processes
from app.risk.models import RiskRun
from tests.close.test_close import close, late_world
from tests.factories import world


async def test_concurrent_requests_close_a_date_once(client: httpx.AsyncClient) -> None:
    w, loan = await late_world(client)
    body = {"as_of": "2026-02-14"}
    answers = await asyncio.gather(
        *(client.post("/v1/close-runs", json=body, headers=w.admin) for _ in range(4))
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [201, 409, 409, 409], [a.text for a in answers]
    assert {a.json()["code"] for a in answers if a.status_code == 409} == {"close_in_progress"}
    run = await w.get("/v1/close-runs/2026-02-14", headers=w.admin)
    assert (run["status"], run["attempts"]) == ("succeeded", 1)
    assert (await w.get("/v1/business-date", headers=w.admin))["business_date"] == "2026-02-14"
    assert (await w.get(f"/v1/loans/{loan['id']}"))["days_past_due"] == 4


async def test_a_rerun_planned_as_a_close_ends_does_not_answer_for_it(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the embedded default the request answers with its own close, succeeded (201): read
    back, the run was already another admin's rerun, planned in between, and the answer was
    202 `running` for a close that had finished (a tester's, 61 of 631 with two looping)."""
    w, _ = await late_world(client)
    await close(w, "2026-02-13")
    finish = close_service.finish_run

    async def and_another_plans_it_again(as_of: date, attempt: int) -> CloseRun | None:
        finished = await finish(as_of, attempt)
        async with session_scope() as session:
            await close_service.plan_close(session, as_of=as_of)
        return finished

    monkeypatch.setattr(close_service, "finish_run", and_another_plans_it_again)
    answer = await w.post("/v1/close-runs", {"as_of": "2026-02-14"}, headers=w.admin, expect=201)
    assert (answer.json()["status"], answer.json()["attempts"]) == ("succeeded", 1)
    planned = await w.get("/v1/close-runs/2026-02-14", headers=w.admin)
    assert (planned["status"], planned["queued"], planned["attempts"]) == ("running", True, 1)


async def test_an_attempt_replaced_does_nothing_when_its_tasks_come_back(
    client: httpx.AsyncClient,
) -> None:
    """The broker hands a dead worker's tasks back an hour later, after a rerun has closed
    the date and later ones: they must not close their date again over the moved book."""
    w, loan = await late_world(client)
    await close(w, "2026-02-14")
    await close(w, "2026-02-20")
    before = await w.get(f"/v1/loans/{loan['id']}")
    run = await w.get("/v1/close-runs/2026-02-14", headers=w.admin)
    stale = run["attempts"]  # the attempt that closed it: no longer running
    assert await close_service.begin_run(close_service.date(2026, 2, 14)) is None
    day = close_service.date(2026, 2, 14)
    assert await close_service.run_chunk("delinquency", day, None, None, stale) == {}
    assert not await close_service.begin_step(day, "delinquency", 1, stale)
    assert not await close_service.finish_step(day, "delinquency", [{"loans_updated": 1}], stale)
    assert not await close_service.finish_run(day, stale)
    await close_service.fail_run(day, "a stale failure", stale)
    after = await w.get(f"/v1/loans/{loan['id']}")
    assert (after["days_past_due"], after["delinquency_as_of"]) == (
        before["days_past_due"], "2026-02-20",
    )  # fmt: skip
    assert await w.get("/v1/close-runs/2026-02-14", headers=w.admin) == run
    assert (await w.get("/v1/business-date", headers=w.admin))["business_date"] == "2026-02-20"


async def begun(day: date) -> int:
    """The close of ``day`` planned and its first attempt begun, as a worker would."""
    async with session_scope() as session:
        await close_service.plan_close(session, as_of=day)
    attempt = await close_service.begin_run(day)
    assert attempt is not None
    return attempt


async def test_a_step_recorded_once_is_not_recorded_or_begun_again(
    client: httpx.AsyncClient,
) -> None:
    """A worker whose broker connection drops before it acknowledges a step's callback gets
    the callback back: run again, it counted the step twice and started every later step
    twice (a tester's, on Celery). Within one attempt a step begins and ends once."""
    await late_world(client)
    day = close_service.date(2026, 2, 14)
    attempt = await begun(day)
    assert await close_service.begin_step(day, "delinquency", 1, attempt)
    assert not await close_service.begin_step(day, "delinquency", 1, attempt)
    results = [await close_service.run_chunk("delinquency", day, None, None, attempt)]
    assert any(results[0].values()), results
    assert await close_service.finish_step(day, "delinquency", results, attempt)
    assert not await close_service.finish_step(day, "delinquency", results, attempt)
    assert not await close_service.begin_step(day, "delinquency", 1, attempt)
    async with session_scope() as session:
        run = await session.get(CloseRun, day)
        assert run is not None
        assert run.counts == close_service.add_counts(results)
        assert list(run.steps) == ["delinquency"]


async def count(model: type) -> int:
    async with session_scope() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_without_the_task_queue_a_close_or_risk_run_stores_nothing(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = await late_world(client)
    runs = await count(CloseRun)
    monkeypatch.setattr(get_settings(), "in_process_scheduler", False)
    monkeypatch.setattr(get_settings(), "redis_url", "redis://127.0.0.1:9/0")  # nothing there
    started = time.monotonic()
    for path, body in (("/v1/close-runs", {"as_of": "2026-02-14"}),
                       ("/v1/risk/runs", {"as_of": "2026-01-10"})):  # fmt: skip
        refused = await client.post(path, json=body, headers=w.admin)
        assert (refused.status_code, refused.json()["code"]) == (503, "service_busy"), path
        assert refused.headers["retry-after"] == "30"
    assert time.monotonic() - started < 10
    assert (await count(CloseRun), await count(RiskRun)) == (runs, 0)
    # Bad input is told so first, whatever the queue.
    future = await client.post("/v1/close-runs", json={"as_of": "2999-01-01"}, headers=w.admin)
    assert (future.status_code, future.json()["code"]) == (422, "close_date_in_future")


async def test_a_close_the_queue_refuses_after_the_ping_changes_no_run(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker answers the ping, then goes away before the close is queued: a rerun of
    the business date stays succeeded (marked failed, it set the business date back a day)
    and a new date is not stored."""
    w, _ = await late_world(client)
    await close(w, "2026-02-14")
    before = await w.get("/v1/close-runs/2026-02-14", headers=w.admin)
    runs = await count(CloseRun)
    import workers.celery_app  # after the tests' settings are in place (its broker is theirs)

    monkeypatch.setattr(get_settings(), "in_process_scheduler", False)
    gone = Celery("gone", broker="redis://127.0.0.1:9/0")  # the ping still reaches Redis
    gone.conf.update(task_publish_retry=False, broker_connection_timeout=1)
    monkeypatch.setattr(workers.celery_app, "celery", gone)
    for as_of in ("2026-02-14", "2026-02-15"):
        refused = await client.post("/v1/close-runs", json={"as_of": as_of}, headers=w.admin)
        assert (refused.status_code, refused.json()["code"]) == (503, "service_busy"), as_of
    assert await w.get("/v1/close-runs/2026-02-14", headers=w.admin) == before
    assert (await w.get("/v1/business-date", headers=w.admin))["business_date"] == "2026-02-14"
    assert await count(CloseRun) == runs


async def test_a_worker_starts_a_close_only_once_its_request_committed(
    client: httpx.AsyncClient,
) -> None:
    """The task is queued inside the request's transaction: a worker quick to take it must
    find the run pending, not the state before the request."""
    await late_world(client)
    day = close_service.date(2026, 2, 14)
    async with session_scope() as session:
        await close_service.plan_close(session, as_of=day)
        start = asyncio.create_task(close_service.begin_run(day))
        await asyncio.sleep(0.5)
        assert not start.done()  # waiting for the plan, not skipping a run it cannot see
    assert await start == 1


async def test_a_risk_run_waits_for_the_close(client: httpx.AsyncClient) -> None:
    w, _ = await late_world(client)
    async with session_scope() as session:  # a close queued for the workers
        await close_service.plan_close(session, as_of=close_service.date(2026, 1, 11))
    refused = await client.post("/v1/risk/runs", json={"as_of": "2026-01-10"}, headers=w.admin)
    assert (refused.status_code, refused.json()["code"]) == (409, "close_in_progress")
    assert await count(RiskRun) == 0


async def test_the_portfolio_step_of_an_attempt_reads_one_snapshot(
    client: httpx.AsyncClient,
) -> None:
    """On the workers every chunk checks its attempt first: the whole-book step's REPEATABLE
    READ must be set before that read, or SQLAlchemy ignores it (a warning) and the rebase
    could drop deltas committed while it recounts."""
    await late_world(client)
    day = close_service.date(2026, 1, 11)
    attempt = await begun(day)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SAWarning)
        await close_service.run_chunk("portfolio", day, None, None, attempt)
    await close_service.fail_run(day, "the test's own run", attempt)


async def test_the_nightly_close_waits_for_a_manual_one(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A manual close still running when the scheduled one fires: the nightly close tries
    again until it is done, then closes yesterday (it used to wait for the next night)."""
    w = await world(client)
    yesterday = clock.today() - timedelta(days=1)
    monkeypatch.setattr(get_settings().close, "nightly_retry_seconds", 0.05)
    caplog.set_level(logging.INFO, logger="loanwatch.scheduler")
    async with session_scope() as session:  # the manual close, queued
        await close_service.plan_close(session, as_of=yesterday - timedelta(days=1))
    nightly = asyncio.create_task(scheduler.nightly_close())
    for _ in range(200):  # a bound on a loaded machine, not a speed check
        if sum("nightly close waits" in r.getMessage() for r in caplog.records) >= 2:
            break
        await asyncio.sleep(0.05)
    assert not nightly.done()
    await close_service.run_dates_in_process([yesterday - timedelta(days=1)])
    assert await asyncio.wait_for(nightly, 60) == [yesterday]
    run = await w.get(f"/v1/close-runs/{yesterday}", headers=w.admin)
    assert (run["status"], run["attempts"]) == ("succeeded", 1)
    business = await w.get("/v1/business-date", headers=w.admin)
    assert business["business_date"] == yesterday.isoformat()


async def test_the_scheduler_closes_at_start_what_a_stop_cut_short(
    client: httpx.AsyncClient,
) -> None:
    """A stop during the scheduled close left the book a day behind until the next night.
    The embedded default's scheduler closes the dates a stop cut short as it starts again; a
    close that failed of itself waits for a request or the night (run at every start, it
    could fail at every start)."""
    w = await world(client)
    await w.loan(disbursed_on=str(clock.today() - timedelta(days=40)))
    yesterday = clock.today() - timedelta(days=1)
    await close(w, str(yesterday - timedelta(days=4)))
    async with session_scope() as session:
        dates = await close_service.plan_close(session, as_of=yesterday - timedelta(days=2))
    attempt = await close_service.begin_run(dates[0])
    assert attempt is not None
    await close_service.fail_run(dates[0], "ConnectionError: the server closed", attempt)
    assert not await close_service.cut_short_by_a_stop()
    async with session_scope() as session:
        await close_service.plan_close(session, as_of=dates[-1])
    attempt = await close_service.begin_run(dates[0])
    assert attempt is not None
    await close_service.fail_run(dates[0], close_service.CANCELLED_BY_A_STOP, attempt)
    assert await close_service.cut_short_by_a_stop()
    nightly = next(job for job in scheduler.default_jobs() if job.name == "nightly-close")
    started = scheduler.InProcessScheduler((nightly,))
    started.start()
    try:
        for _ in range(600):  # a bound on a loaded machine, not a speed check
            business = await w.get("/v1/business-date", headers=w.admin)
            if business["business_date"] == str(yesterday):
                break
            await asyncio.sleep(0.1)
    finally:
        await started.stop()
    assert business["business_date"] == str(yesterday)
    assert not await close_service.cut_short_by_a_stop()


async def test_the_nightly_close_gives_up_after_its_retries(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world(client)
    yesterday = clock.today() - timedelta(days=1)
    monkeypatch.setattr(get_settings().close, "nightly_retry_seconds", 0.01)
    monkeypatch.setattr(get_settings().close, "nightly_retries", 2)
    async with session_scope() as session:
        await close_service.plan_close(session, as_of=yesterday - timedelta(days=1))
    with pytest.raises(CloseInProgress):
        await scheduler.nightly_close()
    assert await count(CloseRun) == 1  # only the manual one: tomorrow's close catches up


async def test_the_nightly_close_catches_a_long_backlog_up_in_steps(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closes 9 dates behind, 3 allowed a request: the scheduled close asked for yesterday was
    refused as too long a catch-up every night, and the closes stopped for good (a tester's).
    It closes the oldest 3, and the next night the next 3."""
    w = await world(client)
    yesterday = clock.today() - timedelta(days=1)
    start = yesterday - timedelta(days=9)
    await w.post("/v1/close-runs", {"as_of": str(start)}, headers=w.admin, expect=201)
    monkeypatch.setattr(get_settings().close, "max_dates_per_request", 3)
    first = await scheduler.nightly_close()
    assert first == [start + timedelta(days=n) for n in (1, 2, 3)]
    assert await scheduler.nightly_close() == [start + timedelta(days=n) for n in (4, 5, 6)]
    business = await w.get("/v1/business-date", headers=w.admin)
    assert business["business_date"] == str(start + timedelta(days=6))


async def age_beats(minutes: int, *, status: str | None = None) -> None:
    """The runs' heartbeats as they would be ``minutes`` later (time passing for a worker)."""
    async with session_scope() as session:
        stale = update(CloseRun).values(heartbeat_at=utc_now() - timedelta(minutes=minutes))
        await session.execute(stale if status is None else stale.where(CloseRun.status == status))


async def test_a_catch_up_longer_than_the_stale_time_is_still_in_progress(
    client: httpx.AsyncClient,
) -> None:
    """Its queued dates keep the beat of their planning: a request found them stale, planned
    them again beside the running catch-up, and the two collided (a tester's, on Celery)."""
    w, _loan = await late_world(client)
    await close(w, "2026-02-05")
    async with session_scope() as session:
        dates = await close_service.plan_close(session, as_of=close_service.date(2026, 2, 8))
    await age_beats(get_settings().close.stale_after_minutes + 1)
    await close_service.run_dates_in_process(dates[:1])  # 02-06 done, just now
    refused = await close(w, "2026-02-08", expect=409)
    assert refused["code"] == "close_in_progress"
    # When it may be closed again if it has died: an operator could not tell (a tester's).
    beat, stale = re.fullmatch(
        r"the close for 2026-02-07 is still running \(its last heartbeat at (\S+Z); if it "
        r"beats no more, taken for crashed from (\S+Z), and a close possible again\)",
        refused["detail"],
    ).groups()  # type: ignore[union-attr]
    minutes = get_settings().close.stale_after_minutes
    assert datetime.fromisoformat(stale) - datetime.fromisoformat(beat) == timedelta(
        minutes=minutes
    )
    # The runs show their beats: the freshest is the one the refusal names.
    beats = [(await w.get(f"/v1/close-runs/{day}", headers=w.admin))["heartbeat_at"]
             for day in ("2026-02-06", "2026-02-07")]  # fmt: skip
    freshest = max(datetime.fromisoformat(b) for b in beats)
    assert freshest.replace(microsecond=0) == datetime.fromisoformat(beat)
    await age_beats(get_settings().close.stale_after_minutes + 1)  # the catch-up died
    taken_over = await close(w, "2026-02-08")
    assert (taken_over["status"], taken_over["dates"]) == (
        "succeeded", ["2026-02-07", "2026-02-08"],
    )  # fmt: skip


async def test_a_failed_date_does_not_leave_its_catch_up_queued(
    client: httpx.AsyncClient,
) -> None:
    """Its later dates will not start: left pending, they refused every request to close for
    the stale time (a tester's: a broker outage of 20 s failed a date, then 30 minutes of
    409)."""
    w, _loan = await late_world(client)
    await close(w, "2026-02-05")
    async with session_scope() as session:
        await close_service.plan_close(session, as_of=close_service.date(2026, 2, 8))
    attempt = await close_service.begin_run(close_service.date(2026, 2, 6))
    assert attempt is not None
    await close_service.fail_run(close_service.date(2026, 2, 6), "ConnectionError", attempt)
    later = await w.get("/v1/close-runs/2026-02-07", headers=w.admin)
    assert (later["status"], later["error"]) == (
        "failed", "not started: the close of 2026-02-06, before it, failed",
    )  # fmt: skip
    again = await close(w, "2026-02-08")
    assert (again["status"], again["dates"]) == (
        "succeeded", ["2026-02-06", "2026-02-07", "2026-02-08"],
    )  # fmt: skip


async def test_a_catch_up_cancelled_as_its_next_date_starts_fails_the_dates_left(
    client: httpx.AsyncClient,
) -> None:
    """Cancelled between two dates of a catch-up, as the next one started, the dates left
    stayed pending and refused every request to close 409 for the stale time. They are failed
    as the process stops, the one starting once its start is through (cut short after its
    commit, it was left running), and a request reruns them at once."""
    w = await world(client)
    await w.loan(disbursed_on=str(clock.today() - timedelta(days=40)))
    await close(w, str(clock.today() - timedelta(days=5)))
    async with session_scope() as session:
        dates = await close_service.plan_close(session, as_of=clock.today() - timedelta(days=1))
    async with database.engine.connect() as holder:
        # Another transaction holds the second date's run: its start waits on the row lock.
        await holder.execute(select(CloseRun).where(CloseRun.as_of == dates[1]).with_for_update())
        closing = asyncio.create_task(close_service.run_dates_in_process(dates))
        await waiting_on("FOR UPDATE")
        closing.cancel()
        await holder.rollback()
    with pytest.raises(asyncio.CancelledError):
        await closing
    async with session_scope() as session:
        runs = {r.as_of: (r.status, r.error) for r in await session.scalars(select(CloseRun))}
    assert runs[dates[0]] == ("succeeded", None)
    assert runs[dates[1]] == ("failed", "cancelled: the process stopped")
    assert {runs[day] for day in dates[2:]} == {("failed", "not started: the process stopped")}
    rerun = await w.post("/v1/close-runs", {"as_of": str(dates[-1])}, headers=w.admin, expect=201)
    assert (rerun.json()["status"], rerun.json()["dates"]) == (
        "succeeded", [str(day) for day in dates[1:]],
    )  # fmt: skip


async def waiting_on(statement_ending: str) -> None:
    """Until a backend of this test's database waits on a lock running a statement that
    ends so (the other xdist worker's database has lock waits of its own)."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND rtrim(query) LIKE '%' || :end"
    )
    for _ in range(1000):
        async with database.engine.connect() as watcher:
            if await watcher.scalar(waiting, {"end": statement_ending}):
                return
        await asyncio.sleep(0.01)
    pytest.fail(f"no statement ending {statement_ending!r} waited on a lock")


async def test_a_second_stop_does_not_cut_short_the_record_of_the_first(
    client: httpx.AsyncClient,
) -> None:
    """Cancelled again while it recorded the first cancellation, the close left its run
    running until it went stale; the record is now seen through whatever comes."""
    w = await world(client)
    await close(w, str(clock.today() - timedelta(days=5)))
    await w.loan(disbursed_on=str(clock.today() - timedelta(days=40)))
    async with session_scope() as session:
        dates = await close_service.plan_close(session, as_of=clock.today() - timedelta(days=1))
    closing = asyncio.create_task(close_service.run_dates_in_process(dates))
    running = select(CloseRun.as_of).where(CloseRun.status == "running").with_for_update()
    async with database.engine.connect() as holder:
        # Another transaction holds the row of the run running (locked while it still runs,
        # so it is not done): the close's next step waits for it, and so does its record
        # of the stop.
        for _ in range(1000):
            held = await holder.scalar(running)
            if held is not None:
                break
            await holder.rollback()
            await asyncio.sleep(0.005)
        else:
            pytest.fail("no date of the close ran")
        closing.cancel()
        await waiting_on("FOR UPDATE")  # the record's look at its run, not a step's
        closing.cancel()
        await asyncio.sleep(0.05)
        await holder.rollback()
    with pytest.raises(asyncio.CancelledError):
        await closing
    async with session_scope() as session:
        runs = {r.as_of: (r.status, r.error) for r in await session.scalars(select(CloseRun))}
    cut_short = dates.index(held)
    assert {runs[day] for day in dates[:cut_short]} <= {("succeeded", None)}
    assert runs[held] == ("failed", "cancelled: the process stopped")
    assert {runs[day] for day in dates[cut_short + 1 :]} <= {
        ("failed", "not started: the process stopped")
    }


async def test_a_close_cancelled_as_the_process_stops_is_failed_and_rerun_at_once(
    client: httpx.AsyncClient,
) -> None:
    """The embedded default's scheduler cancels its close when the server stops: left
    running, the run refused every request to close 409 for the stale time (a tester's). It
    is failed as it stops, with the dates after it, and a request reruns them at once."""
    w = await world(client)
    await close(w, str(clock.today() - timedelta(days=12)))
    for _ in range(3):
        await w.loan(disbursed_on=str(clock.today() - timedelta(days=40)))
    async with session_scope() as session:
        dates = await close_service.plan_close(session, as_of=clock.today() - timedelta(days=1))
    closing = asyncio.create_task(close_service.run_dates_in_process(dates))
    for _ in range(1000):  # until a date of the catch-up runs
        async with session_scope() as session:
            if await session.scalar(select(func.count()).where(CloseRun.status == "running")):
                break
        await asyncio.sleep(0.01)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    async with session_scope() as session:
        runs = {r.as_of: r for r in await session.scalars(select(CloseRun))}
    assert not [r for r in runs.values() if r.status in ("running", "pending")]
    (cancelled,) = [r for r in runs.values() if r.error == "cancelled: the process stopped"]
    assert cancelled.status == "failed"
    rerun = await w.post("/v1/close-runs", {"as_of": str(dates[-1])}, headers=w.admin, expect=201)
    assert rerun.json()["status"] == "succeeded"


async def test_a_payment_and_the_close_on_one_loan_queue_without_a_deadlock(
    client: httpx.AsyncClient,
) -> None:
    """A payment holds its loan and waits for an installment the close charged; the close
    inserts the fee's ledger row, whose foreign key takes a key-share lock on the loan. Held
    FOR UPDATE, the loan's lock made that a deadlock, answered 503 (a re-verifier's, during a
    catch-up); NO KEY UPDATE lets the close finish, then the payment goes on."""
    _, loan = await late_world(client)
    installment = (LoanInstallment.loan_id == loan["id"]) & (LoanInstallment.seq == 1)
    paid, fees = LoanInstallment.paid_principal_minor, LoanInstallment.late_fees_minor

    async def payment() -> None:
        async with session_scope() as session:
            await loans_service.get_loan(session, Principal("test", Role.ADMIN),
                                         loan_id=loan["id"], for_update=True)  # fmt: skip
            await asyncio.sleep(0.3)  # the close charges the installment meanwhile
            await session.execute(update(LoanInstallment).where(installment)
                                  .values(paid_principal_minor=paid))  # fmt: skip

    async def close_charging_a_fee() -> None:
        await asyncio.sleep(0.1)
        async with session_scope() as session:
            await session.execute(update(LoanInstallment).where(installment)
                                  .values(late_fees_minor=fees))  # fmt: skip
            await asyncio.sleep(0.4)  # the payment now waits for this installment
            session.add(LedgerTransaction(loan_id=loan["id"], kind="late_fee", amount_minor=0,
                                          currency="CNY", effective_on=date(2026, 2, 14),
                                          created_at=utc_now()))  # fmt: skip

    await asyncio.gather(payment(), close_charging_a_fee())


async def test_a_first_close_a_stop_cut_short_is_closed_with_the_dates_after_it(
    client: httpx.AsyncClient,
) -> None:
    """The book's first close, cut short by a stop: the restart's scheduled close closed
    yesterday alone, and the date it cut short was then before the business date, never to be
    closed (a tester's). It stays the first date: yesterday's close runs it and the dates after."""
    w = await world(client)
    await w.loan(disbursed_on=str(clock.today() - timedelta(days=40)))
    yesterday = clock.today() - timedelta(days=1)
    first = yesterday - timedelta(days=3)
    async with session_scope() as session:
        assert await close_service.plan_close(session, as_of=first) == [first]
    attempt = await close_service.begin_run(first)
    assert attempt is not None
    await close_service.fail_run(first, close_service.CANCELLED_BY_A_STOP, attempt)
    assert await close_service.cut_short_by_a_stop()
    assert await close_service.close_yesterday() == [first + timedelta(days=n) for n in range(4)]


async def a_process_that_ended() -> str:
    """The identity of a process that has ended, as one killed outright leaves it on its run."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from app.ops.processes import this_process; print(this_process())",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate()
    return out.decode().strip()


def test_a_killed_process_its_parent_has_not_reaped_has_ended() -> None:
    """A zombie, until its parent waits for it: a killed close's run stayed "running" while
    the parent that started it never waited (a re-verifier's)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "from app.ops.processes import this_process; "
         "print(this_process(), flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        owner = child.stdout.readline().strip()
        assert not processes.ended(owner)
        child.kill()
        for _ in range(100):  # the kill lands
            if processes.ended(owner):
                break
            time.sleep(0.01)
        assert processes.ended(owner)
    finally:
        child.kill()
        child.wait()


def test_a_process_is_known_to_have_ended_only_on_its_own_machine() -> None:
    assert not processes.ended(processes.this_process())
    host, boot, pid, started = processes.this_process().split(" ")
    assert processes.ended(f"{host} {boot} {pid} {int(started) + 1}")  # its pid, reused
    assert not processes.ended(f"elsewhere {boot} {pid} {int(started) + 1}")
    assert not processes.ended(f"{host} another-boot {pid} {int(started) + 1}")


async def test_a_close_whose_process_was_killed_is_resumed_at_once(
    client: httpx.AsyncClient,
) -> None:
    """Killed outright during a catch-up (kill -9), the process left its date running and the
    rest pending: every request to close was refused 409 for the stale time, 30 minutes, and
    the embedded default's next start resumed nothing (a tester's). On its machine it is known
    to have ended: its run fails as a stop's would, and the next start closes the dates."""
    w, _loan = await late_world(client)
    await close(w, "2026-02-05")
    async with session_scope() as session:
        dates = await close_service.plan_close(session, as_of=date(2026, 2, 8))
    assert await close_service.begin_run(dates[0], processes.this_process()) is not None
    refused = await close(w, "2026-02-08", expect=409)  # a live process's: in progress
    assert refused["code"] == "close_in_progress"
    async with session_scope() as session:
        await session.execute(update(CloseRun).values(owner=await a_process_that_ended()))
    assert await close_service.cut_short_by_a_stop()  # what a start asks
    failed = await w.get("/v1/close-runs/2026-02-06", headers=w.admin)
    assert (failed["status"], failed["error"]) == (
        "failed", "cancelled: the process running it ended",
    )  # fmt: skip
    resumed = await close(w, "2026-02-08")
    assert (resumed["status"], resumed["dates"]) == (
        "succeeded", ["2026-02-06", "2026-02-07", "2026-02-08"],
    )  # fmt: skip
