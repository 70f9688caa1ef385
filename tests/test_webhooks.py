"""Webhooks: every event delivered, signed (checked with the `standardwebhooks` package),
retried (in-process), disabled on 410, dead-lettered and replayed; private targets refused
(through `sluice serve`, which runs the dispatcher)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook

from gateway.webhooks import GlobalOnlyResolver, RefusedTarget, is_allowed
from loadtests.harness import fixture_batch
from mta.worker import Worker
from tests.conftest import Sink
from tests.inprocess import WEBHOOK_SECRET as SECRET
from tests.inprocess import Client, Webhooks, send
from tests.inprocess import get as api_get
from tests.test_end_to_end import get, post


class Receiver:
    """A webhook endpoint on loopback answering from a script (then 200 for ever)."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.calls: list[tuple[int, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    receiver.calls.append((status, dict(self.headers.items()), body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def accepted(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for status, h, b in self.calls if status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def hooks_env(url: str, **extra: str) -> dict[str, str]:
    return {
        "SLUICE_WEBHOOK_URL": url,
        "SLUICE_WEBHOOK_SECRET": SECRET,
        "SLUICE_WEBHOOK_ALLOW_PRIVATE": "true",
        "SLUICE_WEBHOOK_RETRY_BASE": "0.2s",
        "SLUICE_WEBHOOK_BATCH_SIZE": "10",
        **extra,
    }


def wait_until(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


async def test_every_event_arrives_signed_after_three_failures(
    relay_api: Client, worker: Worker, sink: Sink, webhooks: Webhooks
) -> None:
    receiver = webhooks.receiver
    receiver.script = [500, 500, 500]
    await send(relay_api, fixture_batch(25))
    await worker.run_until_idle()
    assert len(sink.snapshot()) == 25
    everything = await api_get(relay_api, "/v1/events?limit=1000")
    expected = [e["id"] for e in everything["events"]]
    assert len(expected) == 50  # queued and delivered for each

    def delivered_ids() -> list[str]:
        return [e["id"] for e in receiver.events()]

    await webhooks.dispatch_until(lambda: len(delivered_ids()) >= len(expected))
    assert delivered_ids() == expected, "every event once, in order"
    verifier = Webhook(SECRET)
    for headers, body in receiver.accepted():
        verified = verifier.verify(body, {k.lower(): v for k, v in headers.items()})
        assert verified == json.loads(body)
        assert len(verified) <= 10
    # the first batch failed three times and was sent again under the same webhook-id
    first_id = receiver.calls[0][1]["webhook-id"]
    assert [c[0] for c in receiver.calls[:4]] == [500, 500, 500, 200]
    assert {c[1]["webhook-id"] for c in receiver.calls[:4]} == {first_id}
    event = json.loads(receiver.accepted()[0][1])[0]
    assert {"id", "type", "timestamp", "message_id", "email", "category"} <= set(event)
    state = await api_get(relay_api, "/v1/webhooks")
    assert state["dead_letters"] == 0 and state["cursor"] == everything["next"]


@pytest.mark.slow
def test_410_disables_dead_letters_replay(serve_factory: Any) -> None:
    gone = Receiver([410])
    try:
        served = serve_factory(
            workers=0, extra_env=hooks_env(gone.url, SLUICE_WEBHOOK_MAX_RETRY="1s")
        )
        post(served, "/v1/messages", fixture_batch(3))
        wait_until(lambda: get(served, "/v1/webhooks")["disabled"] is not None)
        time.sleep(0.5)
        assert len(gone.calls) == 1, "a disabled endpoint gets nothing more"
        # back, but failing: after max_retry (1 s) the batch becomes a dead letter
        gone.script = [503] * 1000
        with_state = post(served, "/v1/webhooks/enable", {})
        assert with_state[0] == 200 and with_state[1]["disabled"] is None
        wait_until(lambda: get(served, "/v1/webhooks")["dead_letters"] == 1)
        [dead] = get(served, "/v1/webhooks/dead-letters")["dead_letters"]
        assert dead["events"] == 3 and "HTTP 503" in dead["error"]
        gone.script = []
        assert post(served, "/v1/webhooks/dead-letters/replay", {}) == (202, {"queued": 1})
        wait_until(lambda: len(gone.accepted()) == 1)
        assert [e["type"] for e in json.loads(gone.accepted()[0][1])] == ["queued"] * 3
        assert get(served, "/v1/webhooks")["dead_letters"] == 0
    finally:
        gone.close()


@pytest.mark.slow
def test_private_targets_are_refused_unless_allowed(serve_factory: Any) -> None:
    target = Receiver()
    try:
        env = hooks_env(target.url)
        env.pop("SLUICE_WEBHOOK_ALLOW_PRIVATE")
        served = serve_factory(workers=0, extra_env=env)
        post(served, "/v1/messages", fixture_batch(1))
        wait_until(lambda: (get(served, "/v1/webhooks")["last_error"] or "") != "")
        assert "private or reserved" in get(served, "/v1/webhooks")["last_error"]
        time.sleep(0.5)
        assert target.calls == [], "not a single request reached the private address"
    finally:
        target.close()


def test_address_classes() -> None:
    for refused in (
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
        "240.0.0.1",
    ):
        assert not is_allowed(refused), refused
    for allowed in ("8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"):
        assert is_allowed(allowed), allowed


async def test_the_resolver_refuses_names_of_private_addresses() -> None:
    resolver = GlobalOnlyResolver()
    try:
        with pytest.raises(RefusedTarget):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
    await asyncio.sleep(0)
