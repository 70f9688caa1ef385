"""``GET /v1/events/stream``: the events as they happen, as server-sent events; filtered by
type; a reconnect with ``Last-Event-ID`` resumes where the stream was."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from loadtests.harness import fixture_batch
from mta.worker import Worker
from tests.inprocess import Client, send


async def read_events(response: Any, count: int) -> tuple[list[dict[str, Any]], str]:
    """``count`` events from an SSE response, and the id that follows them (the cursor the
    server sends after each page)."""
    events: list[dict[str, Any]] = []
    last_id = ""
    async with asyncio.timeout(20):
        while len(events) < count or not last_id:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
                last_id = ""
            elif line.startswith("id: "):
                last_id = line.removeprefix("id: ")
    return events, last_id


async def test_events_stream_as_they_happen_and_a_reconnect_resumes(
    relay_api: Client, worker: Worker
) -> None:
    await send(relay_api, fixture_batch(2))  # before the stream: not in it
    stream = await relay_api.get("/v1/events/stream", params={"type": "delivered"})
    assert stream.status == 200
    assert stream.headers["Content-Type"] == "text/event-stream"
    await send(relay_api, fixture_batch(3, start=10))
    await worker.run_until_idle()
    events, last_id = await read_events(stream, 5)
    assert {e["type"] for e in events} == {"delivered"}, "only the type asked for"
    assert sorted(e["email"] for e in events) == sorted(
        f"user{i}@inbox.example.org" for i in (0, 1, 10, 11, 12)
    ), "delivered after the stream began, whenever accepted"
    stream.close()

    await send(relay_api, fixture_batch(1, start=20))
    await worker.run_until_idle()
    again = await relay_api.get("/v1/events/stream", headers={"Last-Event-ID": last_id})
    resumed, _ = await read_events(again, 2)
    assert [(e["type"], e["email"]) for e in resumed] == [
        ("queued", "user20@inbox.example.org"),
        ("delivered", "user20@inbox.example.org"),
    ]
    again.close()
    bad = await relay_api.get("/v1/events/stream", params={"after": "nonsense"})
    assert bad.status == 400
