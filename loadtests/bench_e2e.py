"""End-to-end benchmark: API to SMTP with DKIM, tracking and durable acceptance, against the wire limit.

Run::

    .venv/bin/python -m loadtests.bench_e2e [--recipients N] [--workers W] [--json]

Needs Postfix's ``smtp-sink`` and ``smtp-source`` (``apt-get install postfix``).

1. Starts ``smtp-sink`` on loopback and measures ``smtp-source -s 20 -m N -l LEN``
   into it (LEN: the fixture's size): the SMTP wire limit of this machine.
2. Makes an RSA-2048 DKIM key for the fixture's From domain and starts the real
   ``sluice serve`` relaying into the same sink: embedded Redis with
   ``appendfsync always``, ``--workers W`` (default: CPU count), tracking on.
3. Submits N fixture recipients (default 20,000) in 1,000-recipient batches from 4
   concurrent clients, then waits until every one is delivered.

Reports accepted/s (first request to last 202), delivered/s (first request to the
last ``delivered``), and delivered/s divided by the smtp-source rate. Also, sampled every
0.5 s: the peak RSS of each delivery worker (target < 250 MB) and the embedded Redis's peak
``used_memory``; and the CPU time per 1,000 messages of the gateway process (HTTP API),
the workers together, Redis and ``smtp-sink``: where the machine's two cores went.

``--py-spy DIR`` records every worker and the gateway with py-spy during the run (raw
collapsed stacks, one file per process; ``py-spy`` must be on PATH or beside the Python).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis
from prometheus_client.parser import text_string_to_metric_families

from core import keys
from loadtests.bench_pipelining import smtp_source, start_sink
from loadtests.harness import (
    API_KEY,
    Served,
    cpu_seconds,
    fixture_batch,
    fixture_message,
    free_port,
    print_result,
    py_spy,
    rss_bytes,
    start_serve,
)
from mta.dkimkeys import KeyStore


async def submit(url: str, recipients: int, clients: int = 4) -> float:
    batches = [fixture_batch(1000, start=i) for i in range(0, recipients, 1000)]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    queue = iter(batches)
    started = time.perf_counter()
    async with aiohttp.ClientSession(headers=headers) as session:

        async def client() -> None:
            for body in queue:
                async with session.post(url + "/v1/messages", json=body) as answer:
                    assert answer.status == 202, await answer.text()

        await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started


def delivered(client: redis.Redis) -> int:
    """Messages delivered so far, from the outcome counters in Redis (what ``/metrics`` shows
    as ``sluice_recorded_events_total``): polling ``/metrics`` itself five times a second
    would charge the API process for merging every worker's metric files."""
    found: Any = client.hget(keys.STATS, "delivered")
    return int(found or 0)


def delivered_by_metrics(url: str) -> int:
    """The workers' own count, read once at the end to check it agrees."""
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def scrape() -> str:
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(url + "/metrics") as answer,
        ):
            return await answer.text()

    text = asyncio.run(scrape())
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "sluice_messages_total" and sample.labels["outcome"] == "delivered"
        )
    )


class Sampler(threading.Thread):
    """Every 0.5 s: each worker's RSS and Redis's used_memory; keeps the peaks."""

    def __init__(self, served: Served) -> None:
        super().__init__(daemon=True)
        self.served = served
        self.stop = threading.Event()
        self.worker_rss: dict[int, int] = {}
        self.redis_peak = 0

    def run(self) -> None:
        client = redis.Redis.from_url(self.served.redis_url())
        try:
            while not self.stop.wait(0.5):
                for pid in self.served.worker_pids():
                    self.worker_rss[pid] = max(self.worker_rss.get(pid, 0), rss_bytes(pid))
                with contextlib.suppress(redis.RedisError):
                    used = int(client.info("memory")["used_memory"])
                    self.redis_peak = max(self.redis_peak, used)
        finally:
            client.close()


def cpu_by_process(served: Served, sink_pid: int) -> dict[str, float]:
    redis_pid = served.redis_pid()
    return {
        "api": cpu_seconds(served.pid),
        "workers": sum(cpu_seconds(p) for p in served.worker_pids()),
        "redis": cpu_seconds(redis_pid) if redis_pid else 0.0,
        "smtp_sink": cpu_seconds(sink_pid),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR")
    parser.add_argument(
        "--dkim",
        choices=("rsa", "ed25519", "none"),
        default="rsa",
        help="signing key (default RSA-2048, the target's setting; the others show its cost)",
    )
    args = parser.parse_args(argv)
    n = args.recipients
    length = len(fixture_message(0))
    with tempfile.TemporaryDirectory() as tmp:
        sink_port = free_port()
        sink = start_sink(sink_port)
        try:
            wire = smtp_source(sink_port, n, 20, length)
            data = Path(tmp) / "data"
            if args.dkim != "none":
                KeyStore(data).generate("shop.example.com", "bench", args.dkim, 2048)
            served = start_serve(data, relay=f"127.0.0.1:{sink_port}", workers=args.workers)
            sampler = Sampler(served)
            try:
                with contextlib.ExitStack() as spies:
                    if args.py_spy is not None:
                        args.py_spy.mkdir(parents=True, exist_ok=True)
                        for name, pid in [("api", served.pid)] + [
                            (f"worker-{i}", p) for i, p in enumerate(served.worker_pids())
                        ]:
                            spies.enter_context(py_spy(pid, args.py_spy / f"{name}.txt"))
                    cpu_before = cpu_by_process(served, sink.pid)
                    sampler.start()
                    started = time.perf_counter()
                    accept_seconds = asyncio.run(submit(served.url, n))
                    with redis.Redis.from_url(served.redis_url()) as counts:
                        while delivered(counts) < n:
                            time.sleep(0.05)
                    total_seconds = time.perf_counter() - started
                    cpu_after = cpu_by_process(served, sink.pid)
                    by_workers = delivered_by_metrics(served.url)
            finally:
                sampler.stop.set()
                served.stop()
        finally:
            sink.kill()
            sink.wait()
    result: dict[str, Any] = {
        "recipients": n,
        "message_bytes": length,
        "workers": args.workers,
        "dkim": args.dkim,
        "smtp_source_per_s": round(wire),
        "accepted_per_s": round(n / accept_seconds),
        "delivered_per_s": round(n / total_seconds),
        "ratio_to_wire": round(n / total_seconds / wire, 3),
        "workers_counted_delivered": by_workers,
        "worker_peak_rss_mb": [round(v / 2**20) for v in sampler.worker_rss.values()],
        "redis_peak_used_memory_mb": round(sampler.redis_peak / 2**20),
        "cpu_ms_per_1000_messages": {
            name: round((cpu_after[name] - cpu_before[name]) * 1000 / n * 1000)
            for name in cpu_before
        },
    }
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
