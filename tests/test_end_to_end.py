"""The fixture message to 1,000 recipients through a real `sluice serve` into a real sink;
retries, bounces and expiry, through `sluice serve` or in-process (``tests/inprocess.py``).

``get``, ``post`` and ``wait_status`` are the HTTP helpers of the tests that run
`sluice serve`."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from core.store import Store
from loadtests.harness import Served, fixture_batch, free_port
from mta.worker import Worker
from tests.conftest import Sink, SinkHandler
from tests.inprocess import Client, message, send, sleep_until


def post(
    served: Served, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(
        served.url + path,
        data=json.dumps(body).encode(),
        headers={**served.headers, **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(served: Served, path: str) -> Any:
    request = urllib.request.Request(served.url + path, headers=served.headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_status(
    served: Served, message_id: str, status: str, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = get(served, f"/v1/messages/{message_id}")
        if found["status"] == status or time.monotonic() > deadline:
            return found  # type: ignore[no-any-return]
        time.sleep(0.1)


@pytest.mark.slow
def test_fixture_to_1000_recipients_arrives_personalized(serve_factory: Any, sink: Sink) -> None:
    served = serve_factory(relay=sink.relay, workers=2)
    status, answer = post(served, "/v1/messages", fixture_batch(1000))
    assert status == 202
    assert len(answer["results"]) == 1000
    assert {r["status"] for r in answer["results"]} == {"queued"}

    received = sink.wait_for(1000, timeout=120)
    by_rcpt = {r.rcpt_tos[0]: r for r in received}
    assert len(by_rcpt) == 1000, "every recipient exactly once"
    for i in (0, 1, 499, 999):
        got = by_rcpt[f"user{i}@inbox.example.org"]
        msg = got.message
        assert msg["Subject"] == f"User{i}, your Noise-cancelling headphones is waiting"
        assert msg["From"] == "Example Shop <news@shop.example.com>"
        assert msg["To"] == f"user{i}@inbox.example.org"
        assert msg.get_content_type() == "multipart/alternative"
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        assert f"Hi User{i}, your Noise-cancelling headphones" in text
        assert f"https://shop.example.com/cart/{i}" in text
        assert f'href="{served.url}/t/c/' in html, "links go through click tracking"
        assert f'href="https://shop.example.com/cart/{i}"' not in html
        assert msg.defects == []
        assert max(len(line) for line in got.data.split(b"\r\n")) <= 998
        assert b"\n" not in got.data.replace(b"\r\n", b"")

    first = answer["results"][0]["message_id"]
    found = wait_status(served, first, "delivered")
    assert found["status"] == "delivered"
    assert [e["type"] for e in found["events"]] == ["queued", "delivered"]
    assert served.stop() == 0


def event_types(served: Served, message_id: str) -> list[str]:
    return [e["type"] for e in get(served, f"/v1/messages/{message_id}")["events"]]


async def types_of(api: Client, message_id: str) -> list[str]:
    return [e["type"] for e in (await message(api, message_id))["events"]]


async def test_temporary_failure_is_retried_then_delivered(
    relay_api: Client, worker: Worker, sink: Sink
) -> None:
    sink.reply = "451 4.3.0 Try again later"  # retry schedule 1s,2s,4s
    [sent] = await send(relay_api, fixture_batch(1))
    message_id = sent["message_id"]
    await worker.run_until_idle()
    deferred = await message(relay_api, message_id)
    assert deferred["status"] == "deferred"
    event = deferred["events"][-1]
    assert event["type"] == "deferred" and event["smtp_code"] == 451
    assert "Try again later" in event["reason"]

    sink.reply = "250 OK"
    await sleep_until(event["next_attempt_at"])  # the retry is due
    await worker.run_until_idle()
    assert (await message(relay_api, message_id))["status"] == "delivered"
    types = await types_of(relay_api, message_id)
    assert types[0] == "queued" and types[-1] == "delivered" and "deferred" in types
    assert len(sink.snapshot()) == 1


async def test_permanent_failure_bounces_without_retry(
    relay_api: Client, worker: Worker, sink: Sink, store: Store
) -> None:
    sink.reply = "550 5.1.1 No such user"
    [sent] = await send(relay_api, fixture_batch(1))
    message_id = sent["message_id"]
    await worker.run_until_idle()
    found = await message(relay_api, message_id)
    assert found["status"] == "bounced"
    assert found["events"][-1]["smtp_code"] == 550
    gauges = await store.gauges()  # no retry waits: nothing more will happen
    assert (gauges.delayed, gauges.jobs) == (0, 0)
    assert await types_of(relay_api, message_id) == ["queued", "bounced"]


@pytest.mark.slow
def test_message_still_failing_after_max_deferral_expires(serve_factory: Any, sink: Sink) -> None:
    sink.reply = "421 4.7.0 Too busy"
    served = serve_factory(relay=sink.relay, workers=1, extra_env={"SLUICE_MAX_DEFERRAL": "3s"})
    _, answer = post(served, "/v1/messages", fixture_batch(1))
    message_id = answer["results"][0]["message_id"]
    found = wait_status(served, message_id, "expired", timeout=30)
    assert found["status"] == "expired"
    assert event_types(served, message_id)[-1] == "expired"
    assert sink.snapshot() == []


@pytest.mark.slow
def test_relay_down_defers_and_recovers_when_it_comes_back(serve_factory: Any) -> None:
    port = free_port()
    served = serve_factory(relay=f"127.0.0.1:{port}", workers=1)  # nothing listens there yet
    _, answer = post(served, "/v1/messages", fixture_batch(1))
    message_id = answer["results"][0]["message_id"]
    found = wait_status(served, message_id, "deferred")
    assert found["status"] == "deferred"
    assert found["events"][-1]["smtp_code"] is None
    assert "cannot connect" in found["events"][-1]["reason"]

    late = Sink("127.0.0.1", port)
    controller = Controller(SinkHandler(late), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        late.wait_for(1, timeout=30)
        assert wait_status(served, message_id, "delivered")["status"] == "delivered"
    finally:
        controller.stop()
