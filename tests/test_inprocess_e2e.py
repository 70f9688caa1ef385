"""Accept to delivered and what comes after, end to end in one event loop: the real API,
a real delivery worker in burst mode, the real inbound server, tracking endpoints and
webhook dispatcher, into a real SMTP sink (``tests/inprocess.py``). Not marked slow: this
is the delivery path's feedback in ``pytest -m "not slow"``. Each test runs with the data in
one shard and in eight (``core/shards.py``): every message id then names its shard, and
events, bounces, complaints, opens and clicks find theirs."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standardwebhooks import Webhook

from core.settings import HostPort, Settings
from core.store import Store
from loadtests.fault_sink import FaultSink
from loadtests.harness import fixture_batch
from mta.worker import Worker
from tests.conftest import Sink, fresh_store, gateway_settings
from tests.inprocess import (
    WEBHOOK_SECRET,
    Client,
    Webhooks,
    complain,
    get,
    message,
    running_worker,
    send,
    suppressions,
)
from tracking.endpoints import PIXEL
from warmup import actions

BROWSER = {"User-Agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15"}


@pytest.fixture(params=[1, 8], ids=["one-shard", "eight-shards"])
async def store(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with fresh_store(redis_url, request.param) as opened:
        yield opened


def types(found: dict[str, Any]) -> list[str]:
    return [event["type"] for event in found["events"]]


async def test_accepted_fixture_is_delivered_personalized(
    relay_api: Client, worker: Worker, sink: Sink
) -> None:
    results = await send(relay_api, fixture_batch(5))
    assert [r["status"] for r in results] == ["queued"] * 5

    await worker.run_until_idle()

    by_rcpt = {r.rcpt_tos[0]: r for r in sink.snapshot()}
    assert sorted(by_rcpt) == [f"user{i}@inbox.example.org" for i in range(5)]
    assert len(sink.snapshot()) == 5, "every recipient exactly once"
    msg = by_rcpt["user3@inbox.example.org"].message
    assert msg["Subject"] == "User3, your Noise-cancelling headphones is waiting"
    assert msg["From"] == "Example Shop <news@shop.example.com>"
    assert msg.get_content_type() == "multipart/alternative"
    assert "https://shop.example.com/cart/3" in msg.get_body(("plain",)).get_content()
    assert msg.defects == []
    for result in results:
        found = await message(relay_api, result["message_id"])
        assert found["status"] == "delivered"
        assert types(found) == ["queued", "delivered"]
        delivered = found["events"][-1]
        assert delivered["smtp_code"] == 250 and delivered["attempt"] == 1
        assert delivered["email"] == result["email"]


async def test_a_run_cut_short_leaves_its_job_for_the_next_run(
    relay_api: Client, store: Store, tmp_path: Path
) -> None:
    with FaultSink() as fault:
        fault.script("user0@inbox.example.org", ["stall", "250 OK"])  # no reply, then OK
        [sent] = await send(relay_api, fixture_batch(1))
        # a cancelled transaction still says QUIT, and waits for the stalled sink that long
        settings = gateway_settings(tmp_path, relay=fault.relay, smtp_timeout="1s")
        async with running_worker(settings, store) as worker:
            run = asyncio.create_task(worker.run_until_idle())
            await fault.async_wait_for(1)  # the message is there, its reply withheld
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            assert not worker.in_flight, "the delivery in flight was cancelled with the run"
            assert (await message(relay_api, sent["message_id"]))["status"] == "queued"

            await worker.run_until_idle()  # takes up its own unfinished job

        found = await message(relay_api, sent["message_id"])
        assert found["status"] == "delivered" and types(found) == ["queued", "delivered"]
        assert [m.outcome for m in fault.received()] == ["stall", "accepted"]


async def test_5xx_bounces_and_only_a_hard_one_suppresses(
    relay_api: Client, worker: Worker, sink: Sink
) -> None:
    sink.refuse["user1@inbox.example.org"] = "550 5.1.1 <user1@inbox.example.org>: User unknown"
    sink.refuse["user2@inbox.example.org"] = "550 5.7.1 Message rejected by policy"
    delivered, dead, blocked = await send(relay_api, fixture_batch(3))

    await worker.run_until_idle()

    assert [r.rcpt_tos for r in sink.snapshot()] == [["user0@inbox.example.org"]]
    assert (await message(relay_api, delivered["message_id"]))["status"] == "delivered"
    found = await message(relay_api, dead["message_id"])
    assert found["status"] == "bounced" and types(found) == ["queued", "bounced"]
    event = found["events"][-1]
    assert (event["smtp_code"], event["status"], event["bounce_class"], event["hard"]) == (
        550,
        "5.1.1",
        "bad-mailbox",
        True,
    )
    found = await message(relay_api, blocked["message_id"])
    assert found["status"] == "bounced" and found["events"][-1]["hard"] is False

    entries = await suppressions(relay_api, dead["email"])
    assert [(e["reason"], e["source"]) for e in entries] == [
        ("hard_bounce", f"bounce:{dead['message_id']}")
    ]
    assert await suppressions(relay_api, blocked["email"]) == []
    again = await send(relay_api, fixture_batch(3))
    assert [r["status"] for r in again] == ["queued", "suppressed", "queued"]


async def test_an_arf_complaint_through_the_inbound_server_suppresses(
    relay_api: Client, worker: Worker, sink: Sink, inbound: HostPort
) -> None:
    [sent] = await send(relay_api, fixture_batch(1))
    await worker.run_until_idle()
    [received] = sink.snapshot()
    original = str(received.message["Message-ID"])  # signed: <id.signature@domain>
    errors, reply = await complain(inbound, original)
    assert errors == {} and reply.startswith("2.0.0 OK: report received"), reply

    found = await message(relay_api, sent["message_id"])
    assert found["status"] == "delivered", "a complaint adds an event; the mail was delivered"
    assert types(found) == ["queued", "delivered", "complained"]
    event = found["events"][-1]
    assert (event["feedback_type"], event["email"]) == ("abuse", sent["email"])
    entries = await suppressions(relay_api, sent["email"])
    assert [(e["reason"], e["source"]) for e in entries] == [
        ("complaint", f"arf:{sent['message_id']}")
    ]
    [again] = await send(relay_api, fixture_batch(1))
    assert again["status"] == "suppressed"


async def test_open_and_click_through_the_tracking_endpoints(
    relay_api: Client, worker: Worker, sink: Sink, relay_settings: Settings
) -> None:
    body = fixture_batch(1)
    [sent] = await send(relay_api, body)
    await worker.run_until_idle()
    [received] = sink.snapshot()
    part = received.message.get_body(("html",)).get_content()

    public = relay_settings.http.public_url
    source = body["html"].replace("{{ cart_url }}", body["recipients"][0]["data"]["cart_url"])
    originals = [html.unescape(u) for u in re.findall(r'<a [^>]*href="([^"]+)"', source)]
    hrefs = [html.unescape(u) for u in re.findall(r'<a [^>]*href="([^"]+)"', part)]
    assert len(hrefs) == len(originals) > 0
    assert all(h.startswith(f"{public}/t/c/") for h in hrefs), "every link goes through tracking"
    [pixel] = re.findall(r'<img src="([^"]+/t/o/[^"]+)"', part)
    assert pixel.startswith(f"{public}/t/o/")

    cart = originals.index("https://shop.example.com/cart/0")
    async with aiohttp.ClientSession(headers=BROWSER) as mail_client:  # no API key
        async with mail_client.get(pixel) as opened:
            assert opened.status == 200 and await opened.read() == PIXEL
        async with mail_client.get(hrefs[cart], allow_redirects=False) as clicked:
            assert clicked.status == 302
            assert clicked.headers["Location"] == "https://shop.example.com/cart/0"

    found = await message(relay_api, sent["message_id"])
    assert types(found) == ["queued", "delivered", "opened", "clicked"]
    opened_event, clicked_event = found["events"][2:]
    assert opened_event["machine"] is False
    assert clicked_event["url"] == "https://shop.example.com/cart/0"
    # milliseconds after delivery: what a link scanner does, recorded as such
    assert clicked_event["machine"] is True
    assert clicked_event["machine_reason"] == "click-right-after-delivery"
    assert clicked_event["email"] == sent["email"]


async def test_a_batch_links_through_one_stored_table_and_every_link_redirects(
    relay_api: Client, worker: Worker, sink: Sink, store: Store, relay_settings: Settings
) -> None:
    body = fixture_batch(3)
    sent = await send(relay_api, body)
    await worker.run_until_idle()
    delivered = {r.rcpt_tos[0]: r.message for r in sink.snapshot()}
    public = relay_settings.http.public_url
    batch_id, _ = sent[0]["message_id"].rsplit("-", 1)

    def originals(index: int) -> list[str]:
        cart = body["recipients"][index]["data"]["cart_url"]
        source = body["html"].replace("{{ cart_url }}", cart)
        return [html.unescape(u) for u in re.findall(r'<a [^>]*href="([^"]+)"', source)]

    # the table holds the links written in the template, once each, never recipient data
    table = await store.link_table(batch_id)
    cart_link = "https://shop.example.com/cart/1"
    assert table == [u for u in dict.fromkeys(originals(1)) if u != cart_link]
    ttl = await store.redis.ttl(store.shards.home(batch_id).keys.link_table(batch_id))
    days = relay_settings.tracking.token_max_age_days
    assert (days + 1) * 86400 < ttl <= (days + 8) * 86400, "as long as the batch's tokens live"

    async with aiohttp.ClientSession(headers=BROWSER) as mail_client:  # no API key
        for index, result in enumerate(sent):
            part = delivered[result["email"]].get_body(("html",)).get_content()
            hrefs = [html.unescape(u) for u in re.findall(r'<a [^>]*href="([^"]+)"', part)]
            [pixel] = re.findall(r'<img src="([^"]+/t/o/[^"]+)"', part)
            message_token = pixel.removeprefix(f"{public}/t/o/")
            paths = [h.removeprefix(f"{public}/t/c/") for h in hrefs]
            cart = originals(index).index(f"https://shop.example.com/cart/{index}")
            if index > 0:  # message 0 may come first, before the table: sealed links then
                assert all(
                    p.startswith(f"{message_token}.") for i, p in enumerate(paths) if i != cart
                ), "one sealed token for the message, its links name it"
            assert "." not in paths[cart], "a link made from recipient data is sealed"
            for href, original in zip(hrefs, originals(index), strict=True):
                async with mail_client.get(href, allow_redirects=False) as clicked:
                    assert clicked.status == 302
                    assert clicked.headers["Location"] == original
            async with mail_client.get(pixel) as opened:
                assert opened.status == 200 and await opened.read() == PIXEL

    found = await message(relay_api, sent[1]["message_id"])
    assert types(found) == ["queued", "delivered", *["clicked"] * 17, "opened"]
    assert [e["url"] for e in found["events"][2:-1]] == originals(1)

    [alone] = await send(relay_api, fixture_batch(1))
    await worker.run_until_idle()
    alone_batch, _ = alone["message_id"].rsplit("-", 1)
    assert await store.link_table(alone_batch) is None, "a batch of one message keeps no table"


async def test_events_arrive_at_the_webhook_signed_in_batches(
    relay_api: Client, worker: Worker, webhooks: Webhooks, store: Store
) -> None:
    await send(relay_api, fixture_batch(6))
    await worker.run_until_idle()
    everything, last = await store.events_after(None, 1000)
    expected = [e["id"] for e in everything]
    assert len(expected) == 12  # queued and delivered for each

    receiver = webhooks.receiver
    await webhooks.dispatch_until(lambda: len(receiver.events()) >= len(expected))

    assert [e["id"] for e in receiver.events()] == expected, "every event once, in order"
    verifier = Webhook(WEBHOOK_SECRET)
    batches = receiver.accepted()
    assert len(batches) == 2  # 10 a batch
    for headers, raw in batches:
        verified = verifier.verify(raw, {k.lower(): v for k, v in headers.items()})
        assert verified == json.loads(raw)
    first = receiver.events()[0]
    assert {"id", "type", "timestamp", "message_id", "email", "category"} <= set(first)
    state = await get(relay_api, "/v1/webhooks")
    assert state["cursor"] == last and state["dead_letters"] == 0


async def test_capped_and_quiet_hours_recipients_are_not_delivered(
    relay_api: Client, worker: Worker, sink: Sink
) -> None:
    now = datetime.now(UTC)
    quiet = {  # the window around now, in UTC
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=2)).strftime("%H:%M"),
        "default_timezone": "UTC",
    }
    cap = {"category": "cart_abandonment", "limit": 1, "window_seconds": 86400, "action": "drop"}
    answer = await relay_api.put("/v1/policy", json={"frequency_caps": [cap], "quiet_hours": quiet})
    assert answer.status == 200, await answer.text()

    def one(contact: str, timezone: str | None = None) -> dict[str, Any]:
        body = fixture_batch(1)
        recipient = body["recipients"][0]
        recipient["contact_id"] = contact
        recipient.pop("timezone", None)  # the fixture's recipient is in Istanbul
        if timezone is not None:
            recipient["timezone"] = timezone
        return body

    # UTC-12 is out of the window; the default (UTC) is in it
    [first] = await send(relay_api, one("c-1", timezone="Etc/GMT+12"))
    [capped] = await send(relay_api, one("c-1", timezone="Etc/GMT+12"))
    [held] = await send(relay_api, one("c-2"))
    assert (first["status"], capped["status"], held["status"]) == ("queued", "capped", "scheduled")
    assert datetime.fromisoformat(held["send_at"]) > now + timedelta(minutes=30)

    await worker.run_until_idle()

    assert len(sink.snapshot()) == 1, "only the first left"
    assert (await message(relay_api, first["message_id"]))["status"] == "delivered"
    found = await message(relay_api, capped["message_id"])
    assert found["status"] == "capped" and types(found) == ["capped"]
    found = await message(relay_api, held["message_id"])
    assert found["status"] == "scheduled" and found["events"][0]["held_by"] == "quiet_hours"


async def test_a_warming_ip_out_of_budget_defers_with_the_warmup_reason(
    relay_api: Client, store: Store, sink: Sink, tmp_path: Path
) -> None:
    warming = gateway_settings(tmp_path, relay=sink.relay, ips="127.0.0.1")
    # one message a day: the second has to wait for the next day's budget
    await actions.start(
        store, "127.0.0.1", schedule=[1, 1], pool="default", started_on=None, now=time.time()
    )
    results = await send(relay_api, fixture_batch(2))

    async with running_worker(warming, store) as worker:
        await worker.run_until_idle()

    assert len(sink.snapshot()) == 1
    found = [await message(relay_api, r["message_id"]) for r in results]
    assert sorted(f["status"] for f in found) == ["deferred", "delivered"]
    [deferred] = [f for f in found if f["status"] == "deferred"]
    event = deferred["events"][-1]
    assert event["type"] == "deferred" and event["reason"].startswith("warmup: ")
    assert "used its other budget" in event["reason"], event["reason"]
    assert event["next_attempt_at"] > time.time(), "delayed, not dropped"
    status = await get(relay_api, "/v1/warmup/status")
    [ip] = status["ips"]
    assert ip["providers"]["other"]["sent_today"] == 1
