"""A retry due inside the recipient's quiet hours waits for the window's end, as a first
attempt does; transactional mail is exempt. End to end on a clock the test moves
(``core.clock``): the real API and a delivery worker in burst mode, into the fault sink."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from core.clock import ManualClock
from core.store import Store
from loadtests.fault_sink import FaultSink
from loadtests.harness import fixture_batch
from tests.conftest import gateway_settings
from tests.inprocess import message, running_api, running_worker, send

NEW_YORK = ZoneInfo("America/New_York")
TRY_LATER = "451 4.3.0 Temporary failure"


def local(text: str) -> float:
    """Unix seconds of a wall-clock time in New York."""
    return datetime.fromisoformat(text).replace(tzinfo=NEW_YORK).timestamp()


def batch(email: str, *, stream: str = "marketing") -> dict[str, Any]:
    body = fixture_batch(1)
    body["stream"] = stream
    body["recipients"][0].update(email=email, timezone="America/New_York")
    return body


async def test_a_retry_due_in_quiet_hours_is_delivered_after_the_window(
    redis_url: str, store: Store, fault_sink: FaultSink, tmp_path: Path
) -> None:
    # the first attempt, two minutes before quiet hours begin, is answered "try later"; the
    # retry (5 minutes on) would fall inside them
    clock = ManualClock(local("2026-11-23T20:58:00"))
    settings = gateway_settings(
        tmp_path, relay=fault_sink.relay, retry_schedule="5m", max_deferral="72h"
    )
    quiet = {"start": "21:00", "end": "08:00", "default_timezone": "UTC", "ramp_seconds": 0}
    news, receipt = "news@inbox.example.org", "receipt@inbox.example.org"
    fault_sink.script(news, [TRY_LATER, "250 OK"])
    fault_sink.script(receipt, [TRY_LATER, "250 OK"])
    async with (
        running_api(settings, redis_url, clock=clock) as api,
        running_worker(settings, store, clock=clock) as worker,
    ):
        answer = await api.put("/v1/policy", json={"quiet_hours": quiet})
        assert answer.status == 200, await answer.text()
        [marketing] = await send(api, batch(news))
        [transactional] = await send(api, batch(receipt, stream="transactional"))
        assert marketing["status"] == transactional["status"] == "queued", "not quiet yet"

        await worker.run_until_idle()

        deferred = (await message(api, marketing["message_id"]))["events"][-1]
        morning = local("2026-11-24T08:00:00")  # the window's end in the recipient's zone
        assert (deferred["type"], deferred["smtp_code"]) == ("deferred", 451)
        assert deferred["next_attempt_at"] == morning
        assert deferred["next_attempt_held_by"] == "quiet_hours"
        exempt = (await message(api, transactional["message_id"]))["events"][-1]
        # 5 minutes after 20:58, give or take the schedule's 10% spread
        assert (
            local("2026-11-23T21:02:30")
            <= exempt["next_attempt_at"]
            <= local("2026-11-23T21:03:30")
        )
        assert "next_attempt_held_by" not in exempt

        clock.advance(6 * 60)  # 21:04: the retry's first due time has passed
        await worker.run_until_idle()
        assert (await message(api, transactional["message_id"]))["status"] == "delivered"
        assert (await message(api, marketing["message_id"]))["status"] == "deferred"

        clock.advance(local("2026-11-24T07:59:59") - clock())  # the whole night
        await worker.run_until_idle()
        assert (await message(api, marketing["message_id"]))["status"] == "deferred"
        assert sorted(m.rcpt_tos[0] for m in fault_sink.received()) == [news, receipt, receipt]

        clock.advance(1)  # 08:00
        await worker.run_until_idle()
        found = await message(api, marketing["message_id"])
        assert found["status"] == "delivered"
        delivered = found["events"][-1]
        assert (delivered["attempt"], delivered["timestamp"]) == (2, morning)
    assert [m.outcome for m in fault_sink.received() if m.rcpt_tos == (news,)] == [
        "4xx",
        "accepted",
    ]
