"""Crashes and restarts of a real `sluice serve` with thousands of recipients in flight.

`kill -9` of the whole process group (serve, workers and Redis at once) must lose
nothing the API accepted: after a restart on the same data dir every recipient
arrives. Delivery is at least once, so a message the sink accepted whose outcome
was not yet recorded is sent again; those duplicates are counted and reported. A
graceful stop (SIGTERM) drains in-flight transactions, so it causes none.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from core.shards import Shards
from loadtests.harness import TEST_SHARDS, Served, fixture_batch, free_port, group_members
from mta.worker import STALE_AFTER_MS
from tests.conftest import Received, Sink
from tests.test_end_to_end import get, post

pytestmark = pytest.mark.slow

WORKERS = 2
PER_WORKER = 10
# A duplicate needs a delivery task that was past its final dot, and whose outcome was not
# yet in Redis, at the kill: at most one per task in flight, and each worker runs at most
# SLUICE_CONCURRENCY_PER_WORKER of them. (Connections alone do not bound it: while Redis
# stalls on an fsync, finished transactions wait to be recorded as new ones start.)
IN_FLIGHT_LIMIT = WORKERS * PER_WORKER
IN_FLIGHT_ENV = {"SLUICE_CONCURRENCY_PER_WORKER": str(PER_WORKER)}


class _SlowSinkHandler:
    """Stores the message, then takes ``delay`` seconds to say 250.

    That is the window in which a crash loses the reply of a message the sink
    already has, so a kill lands on transactions that are really in flight.
    """

    def __init__(self, sink: Sink, delay: float) -> None:
        self.sink = sink
        self.delay = delay

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.sink.lock:
            self.sink.messages.append(
                Received(
                    envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content)
                )
            )
        await asyncio.sleep(self.delay)
        return "250 OK"


@pytest.fixture
def slow_sink() -> Iterator[Sink]:
    port = free_port()
    sink = Sink("127.0.0.1", port)
    controller = Controller(
        _SlowSinkHandler(sink, delay=0.02), hostname="127.0.0.1", port=port, decode_data=False
    )
    controller.start()
    yield sink
    controller.stop()


# --- helpers ---------------------------------------------------------------------


def post_batches(served: Served, batches: int) -> dict[str, str]:
    """POST ``batches`` x 1,000 recipients; {email: message id}, every one accepted."""
    accepted: dict[str, str] = {}
    for k in range(batches):
        status, answer = post(served, "/v1/messages", fixture_batch(1000, start=k * 1000))
        assert status == 202, answer
        assert {r["status"] for r in answer["results"]} == {"queued"}
        accepted.update({r["email"]: r["message_id"] for r in answer["results"]})
    assert len(accepted) == batches * 1000
    return accepted


def recipients(received: list[Received]) -> Counter[str]:
    return Counter(r.rcpt_tos[0] for r in received)


def wait_received(sink: Sink, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (got := len(sink.snapshot())) < at_least:
        assert time.monotonic() < deadline, f"sink got only {got} messages in {timeout:.0f} s"
        time.sleep(0.01)
    return got


def wait_all_distinct(sink: Sink, wanted: set[str], timeout: float) -> float:
    """Seconds until every wanted recipient has arrived at least once."""
    started = time.monotonic()
    while True:
        missing = wanted - set(recipients(sink.snapshot()))
        if not missing:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, (
            f"{len(missing)} accepted recipients never arrived within {timeout:.0f} s, "
            f"e.g. {sorted(missing)[:5]}"
        )
        time.sleep(0.1)


def gauge(served: Served, name: str) -> int:
    request = urllib.request.Request(served.url + "/metrics", headers=served.headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return int(family.samples[0].value)
    raise AssertionError(f"no {name} in /metrics")


def wait_queue_empty(served: Served, timeout: float = 30) -> None:
    """Nothing left to send: no job in the stream, none waiting for a retry."""
    deadline = time.monotonic() + timeout
    while gauge(served, "sluice_queue_jobs") or gauge(served, "sluice_queue_delayed"):
        assert time.monotonic() < deadline, "the queue did not empty"
        time.sleep(0.2)


def statuses(served: Served, message_ids: list[str]) -> Counter[str]:
    """Status of every message, read from the embedded Redis in one pipeline."""
    client = redis.Redis.from_url(served.redis_url(), socket_timeout=30)
    shards = Shards(TEST_SHARDS)
    try:
        pipe = client.pipeline(transaction=False)
        for message_id in message_ids:
            pipe.hget(shards.of_message(message_id).keys.message(message_id), "s")  # type: ignore[union-attr]
        return Counter((s or b"<missing>").decode() for s in pipe.execute())
    finally:
        client.close()


def report(record_property: Any, **values: Any) -> None:
    print("\n" + "  ".join(f"{k}={v}" for k, v in values.items()), flush=True)
    for key, value in values.items():
        record_property(key, value)


# --- tests -----------------------------------------------------------------------


def test_kill_9_of_the_group_mid_delivery_loses_nothing(
    serve_factory: Any, slow_sink: Sink, tmp_path: Path, record_property: Any
) -> None:
    data_dir = tmp_path / "data"
    served = serve_factory(
        relay=slow_sink.relay, workers=WORKERS, data_dir=data_dir, extra_env=IN_FLIGHT_ENV
    )
    accepted = post_batches(served, 5)
    wanted = set(accepted)
    wait_received(slow_sink, 1500, timeout=90)

    served.kill_group()  # SIGKILL to serve, both workers and redis-server at once
    time.sleep(0.5)  # let the sink notice the dropped connections
    before_kill = slow_sink.snapshot()
    at_kill = len(set(recipients(before_kill)))
    assert 300 <= at_kill < len(wanted), f"the kill landed after {at_kill} deliveries"
    assert len(before_kill) == at_kill, "no duplicates before the crash"

    restarted = time.monotonic()
    again = serve_factory(
        relay=slow_sink.relay, workers=WORKERS, data_dir=data_dir, extra_env=IN_FLIGHT_ENV
    )
    recovery = wait_all_distinct(slow_sink, wanted, timeout=120)
    wait_queue_empty(again)
    elapsed = time.monotonic() - restarted

    received = recipients(slow_sink.snapshot())
    duplicates = {email: n - 1 for email, n in received.items() if n > 1}
    took_over = re.findall(r"took over (\d+) stale jobs", again.log())
    report(
        record_property,
        accepted=len(wanted),
        delivered_before_kill=at_kill,
        received_total=sum(received.values()),
        distinct=len(received),
        duplicates=sum(duplicates.values()),
        duplicate_examples=sorted(duplicates)[:5],
        recovery_seconds=round(recovery, 1),
        xautoclaim_takeovers=sum(map(int, took_over)),
    )

    assert set(received) == wanted, "exactly the accepted recipients, all of them"
    # A duplicate is a message the sink had when the crash hit, sent once more after it.
    assert set(duplicates) <= set(recipients(before_kill))
    assert max(duplicates.values(), default=0) == 1
    assert sum(duplicates.values()) <= IN_FLIGHT_LIMIT, (
        f"{sum(duplicates.values())} duplicates; at most {IN_FLIGHT_LIMIT} jobs can be in flight"
    )
    # The restarted workers (same names) re-read their own pending jobs at once;
    # waiting for the XAUTOCLAIM of jobs idle for STALE_AFTER_MS would be a regression.
    assert elapsed < STALE_AFTER_MS / 1000, (
        f"recovery took {elapsed:.0f} s: pending jobs waited for the stale-job takeover"
    )

    assert statuses(again, list(accepted.values())) == Counter({"delivered": len(wanted)})
    sample = sorted(accepted)[::50] + sorted(duplicates)
    for email in sample:
        found = get(again, f"/v1/messages/{accepted[email]}")
        assert found["status"] == "delivered", (email, found)
        types = [e["type"] for e in found["events"]]
        assert types[0] == "queued" and types[-1] == "delivered", (email, types)
        assert types.count("delivered") == 1, (email, types)
    assert again.stop() == 0


def _ctrl_c(served: Served) -> int:
    """What a terminal does on Ctrl-C: SIGINT to every process of the foreground group."""
    os.killpg(served.process.pid, signal.SIGINT)
    return served.process.wait(60)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_graceful_stop_mid_delivery_drains_and_restart_sends_the_rest_once(
    how: str, serve_factory: Any, slow_sink: Sink, tmp_path: Path, record_property: Any
) -> None:
    data_dir = tmp_path / "data"
    served = serve_factory(
        relay=slow_sink.relay, workers=WORKERS, data_dir=data_dir, extra_env=IN_FLIGHT_ENV
    )
    accepted = post_batches(served, 2)
    wanted = set(accepted)
    wait_received(slow_sink, 300, timeout=90)

    stopping = time.monotonic()
    code = served.stop(timeout=60) if how == "sigterm" else _ctrl_c(served)
    assert code == 0, served.log()[-3000:]
    assert "Traceback" not in served.log(), served.log()[-3000:]
    stop_seconds = time.monotonic() - stopping
    deadline = time.monotonic() + 5  # multiprocessing's resource tracker exits just after serve
    while group_members(served.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_members(served.pid) == [], "workers and redis-server exit with serve"
    at_stop = len(slow_sink.snapshot())
    assert at_stop < len(wanted), "the stop landed after every delivery"
    assert "cancelled at shutdown" not in served.log(), "every in-flight delivery finished"

    again = serve_factory(
        relay=slow_sink.relay, workers=WORKERS, data_dir=data_dir, extra_env=IN_FLIGHT_ENV
    )
    wait_all_distinct(slow_sink, wanted, timeout=120)
    wait_queue_empty(again)

    received = recipients(slow_sink.snapshot())
    duplicates = {email: n - 1 for email, n in received.items() if n > 1}
    report(
        record_property,
        accepted=len(wanted),
        delivered_before_stop=at_stop,
        stop_seconds=round(stop_seconds, 1),
        received_total=sum(received.values()),
        duplicates=sum(duplicates.values()),
    )
    assert set(received) == wanted
    assert duplicates == {}, f"a graceful stop caused duplicates: {sorted(duplicates)[:10]}"
    assert statuses(again, list(accepted.values())) == Counter({"delivered": len(wanted)})
    assert again.stop() == 0
