"""Alert rules that act (``gateway/alerts.py``): a complaint-rate rule pauses its campaign
(nothing more of it goes out, what it holds is counted and shown), ``alert_fired`` reaches
a webhook receiver, and resuming releases what was held; the rules' validation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from core.errors import ValidationError
from core.settings import HostPort
from core.store import Store
from gateway.alerts import DEFAULT_RULES, validate_rules
from mta.worker import Worker
from tests.conftest import Sink, gateway_settings
from tests.inprocess import Client, Webhooks, complain, get, running_worker, send
from tests.test_stats import campaign_body

RULE = {
    "name": "complaints",
    "metric": "complaint",
    "scope": "campaign",
    "window_seconds": 3600,
    "warn": 0.05,
    "critical": 0.1,
    "min_volume": 5,
    "action": "pause_campaign",
}


async def until(check: Any, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = await check()
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_a_complaint_rate_rule_pauses_its_campaign_until_it_is_resumed(
    relay_api: Client, worker: Worker, sink: Sink, inbound: HostPort, webhooks: Webhooks
) -> None:
    saved = await relay_api.put("/v1/alerts/rules", json={"rules": [RULE]})
    assert saved.status == 200, await saved.text()
    await send(relay_api, campaign_body("flash-sale", [f"f{n}@gmail.com" for n in range(10)]))
    await worker.run_until_idle()
    delivered = {r.rcpt_tos[0]: r.message for r in sink.snapshot()}
    assert len(delivered) == 10
    for email in ("f1@gmail.com", "f2@gmail.com"):  # 2 of 10: 20%, over the critical 10%
        await complain(inbound, str(delivered[email]["Message-ID"]))

    async def firing() -> list[dict[str, Any]]:
        return list((await get(relay_api, "/v1/alerts"))["alerts"])

    [alert] = await until(firing)
    assert (alert["rule"], alert["severity"], alert["target"]) == (
        "complaints",
        "critical",
        {"campaign": "flash-sale"},
    )
    assert (alert["rate"], alert["volume"], alert["acted"]) == (0.2, 10, "paused_campaign")

    later = await send(
        relay_api, campaign_body("flash-sale", [f"g{n}@gmail.com" for n in range(5)])
    )
    assert {r["status"] for r in later} == {"queued"}, "accepted, and held"
    other = await send(relay_api, campaign_body("weekly", ["h0@gmail.com"]))
    await worker.run_until_idle()
    assert len(sink.snapshot()) == 11, "nothing more of the paused campaign went out"
    found = await get(relay_api, f"/v1/messages/{later[0]['message_id']}")
    assert found["events"][-1]["held_by"] == "paused"
    report_ = await get(relay_api, "/v1/campaigns/flash-sale")
    assert report_["held"] == 5 and "complaints" in report_["paused"]["reason"]
    assert other[0]["status"] == "queued"

    await webhooks.dispatch_until(
        lambda: any(e["type"] == "alert_fired" for e in webhooks.receiver.events())
    )
    [fired] = [e for e in webhooks.receiver.events() if e["type"] == "alert_fired"]
    assert (fired["rule"], fired["severity"], fired["target"]) == (
        "complaints",
        "critical",
        {"campaign": "flash-sale"},
    )

    resumed = await (await relay_api.post("/v1/campaigns/flash-sale/resume")).json()
    assert (resumed["was_paused"], resumed["released"]) == (True, 5)
    await worker.run_until_idle()
    assert len(sink.snapshot()) == 16, "what was held went out once resumed"
    assert (await get(relay_api, "/v1/campaigns/flash-sale"))["held"] == 0


def test_rules_are_checked_before_they_are_saved() -> None:
    assert validate_rules({"rules": DEFAULT_RULES}) == DEFAULT_RULES
    for broken, field in (
        ({**RULE, "metric": "opens"}, "rules[0].metric"),
        ({**RULE, "metric": []}, "rules[0].metric"),
        ({**RULE, "scope": {"a": 1}}, "rules[0].scope"),
        ({**RULE, "warn": 0.2}, "rules[0].warn"),
        ({**RULE, "scope": "provider"}, "rules[0].action"),
        ({**RULE, "window_seconds": 60}, "rules[0].window_seconds"),
        ({**RULE, "extra": 1}, "rules[0]"),
    ):
        with pytest.raises(ValidationError) as raised:
            validate_rules({"rules": [broken]})
        assert raised.value.field == field, broken
    with pytest.raises(ValidationError):
        validate_rules({"rules": [RULE, RULE]})


@pytest.mark.slow
async def test_a_hard_bounce_rule_pauses_an_ip_at_a_provider_until_it_is_resumed(
    relay_api: Client, store: Store, sink: Sink, tmp_path: Path
) -> None:
    rule = {**RULE, "name": "bounces", "metric": "hard_bounce", "scope": "ip_provider"}
    rule |= {"warn": 0.1, "critical": 0.2, "action": "pause_ip_provider"}
    saved = await relay_api.put("/v1/alerts/rules", json={"rules": [rule]})
    assert saved.status == 200, await saved.text()
    for n in range(3):  # 3 of 10 dead: 30%
        sink.refuse[f"d{n}@gmail.com"] = f"550 5.1.1 <d{n}@gmail.com>: User unknown"
    sending = gateway_settings(tmp_path, relay=sink.relay, ips="127.0.0.1")
    emails = [f"d{n}@gmail.com" for n in range(10)]
    await send(relay_api, campaign_body("winback", emails))
    async with running_worker(sending, store) as worker:
        await worker.run_until_idle()

        async def firing() -> list[dict[str, Any]]:
            return list((await get(relay_api, "/v1/alerts"))["alerts"])

        [alert] = await until(firing)
        assert alert["target"] == {"ip": "127.0.0.1", "provider": "gmail"}
        assert (alert["severity"], alert["acted"]) == ("critical", "paused_ip_provider")
        [paused] = (await get(relay_api, "/v1/senders/paused"))["paused"]
        assert (paused["ip"], paused["provider"]) == ("127.0.0.1", "gmail")

        before = len(sink.snapshot())
        await send(
            relay_api, campaign_body("winback", ["e0@gmail.com", "e1@gmail.com", "e2@outlook.com"])
        )
        await worker.run_until_idle()
        assert [r.rcpt_tos[0] for r in sink.snapshot()[before:]] == ["e2@outlook.com"]
        view = await get(relay_api, "/v1/queues?group_by=provider&state=paused")
        assert [(g["key"], g["count"]) for g in view["groups"]] == [("gmail", 2)]

        resumed = await (await relay_api.post("/v1/senders/127.0.0.1/gmail/resume")).json()
        assert resumed["was_paused"] is True
        moved = await relay_api.post(
            "/v1/queues/actions", json={"filter": {"state": "paused"}, "action": "retry_now"}
        )
        assert (await moved.json())["changed"] == 2
        await worker.run_until_idle()  # reads the paused pairs afresh
    assert sorted(r.rcpt_tos[0] for r in sink.snapshot()[before:]) == [
        "e0@gmail.com",
        "e1@gmail.com",
        "e2@outlook.com",
    ]
