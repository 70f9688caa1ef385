"""Queue views and bulk actions (``gateway/queues.py``): every held message of a scenario with
quiet hours, a deferring cap and a warming IP is explained; a dry run counts, a release
sends on, a cancel ends a message."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.store import Store
from loadtests.harness import fixture_batch
from tests.conftest import Sink, gateway_settings
from tests.inprocess import Client, get, message, running_worker, send
from tests.test_stats import sluice
from warmup import actions


def one(contact: str, index: int, timezone: str | None) -> dict[str, Any]:
    body = fixture_batch(1, start=index)
    recipient = body["recipients"][0]
    recipient["contact_id"] = contact
    recipient.pop("timezone", None)
    if timezone is not None:
        recipient["timezone"] = timezone
    return body


async def states(api: Client) -> dict[str, int]:
    view = await get(api, "/v1/queues?group_by=state")
    return {group["key"]: group["count"] for group in view["groups"]}


async def act(api: Client, where: dict[str, str], action: str, **more: Any) -> dict[str, Any]:
    answer = await api.post("/v1/queues/actions", json={"filter": where, "action": action, **more})
    assert answer.status == 200, await answer.text()
    return dict(await answer.json())


async def test_the_queue_explains_every_held_message_and_bulk_actions_act(
    relay_api: Client, store: Store, sink: Sink, tmp_path: Path, redis_url: str
) -> None:
    now = datetime.now(UTC)
    quiet = {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=2)).strftime("%H:%M"),
        "default_timezone": "UTC",
    }
    cap = {"category": "cart_abandonment", "limit": 1, "window_seconds": 86400, "action": "defer"}
    answer = await relay_api.put("/v1/policy", json={"frequency_caps": [cap], "quiet_hours": quiet})
    assert answer.status == 200, await answer.text()
    await actions.start(
        store, "127.0.0.1", schedule=[1, 1], pool="default", started_on=None, now=time.time()
    )

    away = "Etc/GMT+12"  # out of the quiet window
    [first] = await send(relay_api, one("c-1", 0, away))
    [again] = await send(relay_api, one("c-1", 1, away))  # the cap defers it a day
    [night] = await send(relay_api, one("c-2", 2, None))  # quiet hours in UTC
    others = [(await send(relay_api, one(f"c-{n}", n, away)))[0] for n in (3, 4)]
    assert (first["status"], again["status"], night["status"]) == (
        "queued",
        "scheduled",
        "scheduled",
    )
    assert await states(relay_api) == {"ready": 3, "held_cap": 1, "held_quiet_hours": 1}

    warming = gateway_settings(tmp_path, relay=sink.relay, ips="127.0.0.1")
    async with running_worker(warming, store) as worker:
        await worker.run_until_idle()
    assert len(sink.snapshot()) == 1, "the warming IP's budget: one message today"
    assert await states(relay_api) == {"held_warmup": 2, "held_cap": 1, "held_quiet_hours": 1}
    scraped = await (await relay_api.get("/metrics")).text()
    assert 'sluice_queue_messages{provider="other",state="held_warmup"} 2.0' in scraped
    assert 'sluice_queue_messages{provider="other",state="held_quiet_hours"} 1.0' in scraped
    assert 'sluice_warmup_budget_messages{ip="127.0.0.1",provider="other"} 1.0' in scraped
    assert 'sluice_warmup_sent_messages{ip="127.0.0.1",provider="other"} 1.0' in scraped
    by_domain = await get(relay_api, "/v1/queues?group_by=domain&state=held_warmup")
    [group] = by_domain["groups"]
    assert (group["key"], group["count"]) == ("inbox.example.org", 2)
    assert group["next_attempt"] > time.time() and "warmup" in group["last_reply"]

    printed = await asyncio.to_thread(
        sluice, "queue", "--group-by", "state", "--redis-url", redis_url
    )
    lines = {line.split()[0]: line for line in printed.stdout.splitlines()[1:]}
    assert set(lines) == {"held_warmup", "held_cap", "held_quiet_hours"}, printed.stdout
    assert "last reply: " in lines["held_warmup"] and "warmup" in lines["held_warmup"]
    dry = await act(relay_api, {"state": "held_warmup"}, "release", dry_run=True)
    assert (dry["matched"], dry["changed"]) == (2, 0)
    assert await states(relay_api) == {"held_warmup": 2, "held_cap": 1, "held_quiet_hours": 1}
    done = await act(relay_api, {"state": "held_warmup"}, "release")
    assert (done["matched"], done["changed"]) == (2, 2)
    assert await states(relay_api) == {"ready": 2, "held_cap": 1, "held_quiet_hours": 1}
    sent_on = [await message(relay_api, r["message_id"]) for r in (first, *others)]
    lasts = sorted(found["events"][-1]["type"] for found in sent_on)
    assert lasts == ["delivered", "released", "released"], "an event per message released"

    cancelled = await act(relay_api, {"state": "held_cap"}, "cancel")
    assert (cancelled["matched"], cancelled["changed"]) == (1, 1)
    found = await message(relay_api, again["message_id"])
    assert (found["status"], found["events"][-1]["type"]) == ("cancelled", "cancelled")
    assert await states(relay_api) == {"ready": 2, "held_quiet_hours": 1}
    refused = await relay_api.post("/v1/queues/actions", json={"action": "explode"})
    assert refused.status == 400
