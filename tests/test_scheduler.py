"""The embedded default's in-process scheduler (app/scheduler.py)."""

import asyncio
import logging
from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest

from app.scheduler import InProcessScheduler, Job


async def test_a_stop_cancels_each_job_once() -> None:
    """A job cancelled by a stop records it on its way out (the close fails its run). The
    scheduler cancelled every job a second time once the webhook dispatcher had wound down,
    cutting that record short: the close's run was left running, every close refused 409 until
    it went stale (a re-verifier's, 7 stops of 10 as the close resumed at start)."""
    recorded: list[str] = []
    winding_asked = asyncio.Event()

    async def records_its_cancellation() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # the run's failure being written
            recorded.append("failed")
            raise

    async def winds_down() -> None:
        await winding_asked.wait()
        await asyncio.sleep(0.1)  # the attempts in flight being recorded

    scheduler = InProcessScheduler((
        Job("close", records_its_cancellation, every_seconds=3600),
        Job("dispatcher", winds_down, every_seconds=3600, wind_down=winding_asked.set),
    ))  # fmt: skip
    scheduler.start()
    await asyncio.sleep(0.05)  # both running
    await scheduler.stop()
    assert recorded == ["failed"]


async def test_a_job_that_finds_the_database_gone_logs_a_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each tick of an outage logged an ERROR with a whole traceback: thirteen in a minute and
    a half of the webhook dispatcher's (a re-verifier's). A line says it; another failure
    keeps its traceback."""
    failures = [ConnectionRefusedError("connect refused"), TimeoutError(), RuntimeError("bug")]
    last_raised = asyncio.Event()

    async def fails() -> None:
        if len(failures) == 1:
            last_raised.set()  # its line is written before this waiter runs
        raise failures.pop(0)

    scheduler = InProcessScheduler((Job("dispatcher", fails, every_seconds=0.01),))
    with caplog.at_level(logging.WARNING, logger="loanwatch.scheduler"):
        scheduler.start()
        await last_raised.wait()
        await scheduler.stop()
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines[:3] == [
        ("WARNING", "scheduled job dispatcher: the database does not answer: "
                    "ConnectionRefusedError: connect refused", False),
        ("WARNING", "scheduled job dispatcher: the database does not answer: TimeoutError: ",
         False),
        ("ERROR", "scheduled job dispatcher failed", True),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("zone", "now", "hours"),
    [
        # The nights the clocks go back: midnight to 02:00 is an hour more of real time.
        ("Europe/London", datetime(2026, 10, 25, 0, 0), 3.0),
        ("America/New_York", datetime(2026, 11, 1, 0, 30), 2.5),
        # The nights they go forward: an hour less; where 02:00 itself is skipped (New York),
        # the job runs as the clock reads 03:00, two hours after midnight.
        ("Europe/London", datetime(2027, 3, 28, 0, 0), 1.0),
        ("America/New_York", datetime(2027, 3, 14, 0, 0), 2.0),
        # No change: a day, to the next day's 02:00.
        ("Asia/Shanghai", datetime(2026, 12, 7, 2, 0), 24.0),
    ],
)
def test_the_daily_job_waits_real_time_across_a_change_of_clocks(
    zone: str, now: datetime, hours: float
) -> None:
    """Datetimes of one zone subtract on the wall clock: the close ran an hour early or late on
    the nights the clocks moved (a tester's)."""
    job = Job("close", lambda: asyncio.sleep(0), daily_at=time(2, 0))
    assert job.seconds_until_next(now.replace(tzinfo=ZoneInfo(zone))) == hours * 3600


@pytest.mark.parametrize(
    ("now", "hours"),
    [
        (datetime(2026, 11, 1, 1, 15, fold=0), 0.25),  # the first 01:15 (EDT): 01:30 is next
        # The second 01:15 (EST): the day's 01:30 was an hour ago, in the first pass (it
        # was -0.75 h, and a server started then closed again at once: a tester's).
        (datetime(2026, 11, 1, 1, 15, fold=1), 23.25 + 1),
        (datetime(2026, 11, 1, 1, 45, fold=1), 22.75 + 1),
    ],
)
def test_the_daily_job_runs_once_in_the_hour_the_clocks_repeat(now: datetime, hours: float) -> None:
    job = Job("close", lambda: asyncio.sleep(0), daily_at=time(1, 30))
    wait = job.seconds_until_next(now.replace(tzinfo=ZoneInfo("America/New_York")))
    assert wait == hours * 3600
