"""Accept latency: p99 of ``POST /v1/messages`` with 100-recipient batches at half the maximum rate.

Run::

    .venv/bin/python -m loadtests.bench_latency [--batch-size 100] [--seconds 30] [--json]

1. Starts the real ``sluice serve`` (``SLUICE_WORKERS=0``: nothing drains the queue; embedded
   Redis with ``appendfsync always``) and sends one warm-up batch.
2. **Maximum rate**: ``--concurrency`` (default 8) clients send fixture batches back to back
   for ``--probe-seconds`` (default 10); batches answered per second is the ceiling.
3. **Half that rate, open loop**: one batch every ``2 / max`` seconds on a fixed schedule for
   ``--seconds``, each sent at its planned time whatever the earlier ones are doing. Latency
   is measured from the *planned* send time to the full 202 answer, so a stall that delays
   later requests is counted against them (no coordinated omission).
4. Prints p50/p90/p99/max and the target (p99 < 50 ms). Every answer must be 202 with every
   recipient queued; anything else is counted as an error.

Every 202 waits for Redis's fsync (``appendfsync always``), so the disk's fsync latency is a
floor under the p99 that no code of Sluice's can lower: Redis's latency monitor (threshold
10 ms) records its fsyncs during step 3: the slowest one and the number of seconds that had
one over 10 ms are printed beside the figures. A p99 over target with fsyncs as slow is the disk's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis

from loadtests.harness import API_KEY, fixture_batch, percentile, print_result, start_serve

TARGET_P99_MS = 50.0


class Sender:
    def __init__(self, session: aiohttp.ClientSession, url: str, batch_size: int) -> None:
        self.session = session
        self.url = url + "/v1/messages"
        self.batch_size = batch_size
        self.next = 0
        self.errors = 0

    def body(self) -> bytes:
        start, self.next = self.next, self.next + self.batch_size
        return json.dumps(fixture_batch(self.batch_size, start=start)).encode()

    async def send(self, body: bytes) -> None:
        async with self.session.post(self.url, data=body) as answer:
            payload = await answer.read()
        if answer.status != 202:
            self.errors += 1
            return
        results = json.loads(payload)["results"]
        if sum(r["status"] == "queued" for r in results) != self.batch_size:
            self.errors += 1


async def max_rate(sender: Sender, concurrency: int, seconds: float) -> float:
    bodies = [sender.body() for _ in range(concurrency * 400)]  # encoded before the clock starts
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(mine: list[bytes]) -> None:
        nonlocal done
        for body in mine:
            if time.perf_counter() >= deadline:
                return
            await sender.send(body)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(bodies[i::concurrency]) for i in range(concurrency)))
    return done / (time.perf_counter() - started)


async def open_loop(sender: Sender, rate: float, seconds: float) -> list[float]:
    count = max(1, int(rate * seconds))
    bodies = [sender.body() for _ in range(count)]
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1

    async def one(index: int, body: bytes) -> None:
        planned = start + index / rate
        await asyncio.sleep(max(0.0, planned - loop.time()))
        await sender.send(body)
        latencies.append((loop.time() - planned) * 1000)

    await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    return latencies


FSYNC_EVENT = "aof-fsync-always"


def fsync_figures(client: redis.Redis) -> dict[str, Any]:
    """Redis's own record of its slow fsyncs since the monitor was reset."""
    history: Any = client.execute_command(  # type: ignore[no-untyped-call]
        "LATENCY", "HISTORY", FSYNC_EVENT
    )
    spikes = [int(ms) for _, ms in history]  # the slowest fsync of each second that had one
    return {
        "redis_seconds_with_fsync_over_10ms": len(spikes),
        "redis_fsync_max_ms": max(spikes, default=0),
    }


async def bench(url: str, args: argparse.Namespace, client: redis.Redis) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        sender = Sender(session, url, args.batch_size)
        await sender.send(sender.body())  # warm-up
        ceiling = await max_rate(sender, args.concurrency, args.probe_seconds)
        await asyncio.sleep(1.0)
        client.config_set("latency-monitor-threshold", 10)
        client.execute_command("LATENCY", "RESET")  # type: ignore[no-untyped-call]
        latencies = await open_loop(sender, ceiling / 2, args.seconds)
        fsyncs = fsync_figures(client)
    p99 = percentile(latencies, 99)
    return {
        "batch_size": args.batch_size,
        "max_batches_per_s": round(ceiling, 1),
        "max_recipients_per_s": round(ceiling * args.batch_size),
        "offered_batches_per_s": round(ceiling / 2, 1),
        "requests": len(latencies),
        "errors": sender.errors,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p90_ms": round(percentile(latencies, 90), 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(max(latencies), 1),
        "target_p99_ms": TARGET_P99_MS,
        "target_met": p99 < TARGET_P99_MS and sender.errors == 0,
        **fsyncs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--probe-seconds", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        served = start_serve(Path(tmp) / "data", workers=0)
        try:
            with redis.Redis.from_url(served.redis_url()) as client:
                result = asyncio.run(bench(served.url, args, client))
        finally:
            served.stop()
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
