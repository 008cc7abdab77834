"""The embedded default's in-process scheduler (app/scheduler.py)."""

import asyncio

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
