"""The events feed's `after`: an instant, naive meaning UTC, any offset; off-calendar is a 422."""

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from tests.factories import world


async def test_events_after_an_instant(client: httpx.AsyncClient) -> None:
    w = await world(client)
    start = datetime.now(UTC) - timedelta(seconds=1)
    await w.loan()

    def types(page: dict[str, Any]) -> list[str]:
        return [e["type"] for e in page["items"]]

    shanghai = start.astimezone(UTC).replace(tzinfo=None) + timedelta(hours=8)
    for after in (start.replace(tzinfo=None).isoformat(), start.isoformat(),
                  shanghai.isoformat() + "+08:00"):  # fmt: skip
        page = await w.get(f"/v1/events?after={quote(after)}", headers=w.admin)
        assert "loan.created" in types(page), after
    later = datetime.now(UTC) + timedelta(minutes=1)
    naive = later.replace(tzinfo=None)
    for after in (later.isoformat(), naive.isoformat(),
                  (naive + timedelta(hours=8)).isoformat() + "+08:00"):  # fmt: skip
        assert types(await w.get(f"/v1/events?after={quote(after)}", headers=w.admin)) == []

    for bad in ("0001-01-01T00:00:00+14:00", "yesterday"):
        response = await client.get(f"/v1/events?after={quote(bad)}", headers=w.admin)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "after"
