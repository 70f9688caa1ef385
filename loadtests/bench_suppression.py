"""Suppression list benchmark: import a million addresses, their memory, and lookup cost.

Run::

    .venv/bin/python -m loadtests.bench_suppression [--addresses N] [--json]

1. Writes a CSV of N (default 1,000,000) distinct addresses over 40 domains, with
   the header ``email,reason`` and a mix of reasons.
2. **Import**: runs the real command, ``sluice suppress import FILE --data-dir D``,
   in a subprocess (it starts the data dir's embedded Redis, AOF ``appendfsync
   always``, and stops it), timed from start to exit.
3. **Memory**: starts the embedded Redis on that data dir again (it reloads the
   AOF) and reads ``used_memory``; bytes per address = (that - ``used_memory`` of
   an empty embedded Redis) / N.
4. **Baseline**, same run, same Redis binary: the N (address, value) pairs written
   with pipelined ``HSET`` into *one* plain hash, the obvious layout: its time and
   bytes per address. **Ratios** are import/baseline.
5. **Lookup cost**: the accept path's per-recipient check (``Suppressions.check``,
   one ``HMGET`` of one small hash) timed over 20,000 lookups against the full list
   and against a list of 1,000, and a 1,000-recipient batch accepted through
   ``gateway.accept`` against each (best of 5, the queue emptied between rounds);
   the ratios show whether cost grows with the list.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from core import keys
from core.embedded_redis import EmbeddedRedis
from core.store import Store, open_store
from core.suppressions import pack_entry
from gateway import intake as accepting
from loadtests.harness import PROJECT_ROOT, fixture_batch, print_result
from suppression.policy import Policy

DOMAINS = [f"mail{i}.example.{tld}" for i in range(20) for tld in ("com", "org")]
REASONS = ["unsubscribe"] * 6 + ["hard_bounce"] * 3 + ["complaint"]


def address(i: int) -> str:
    return f"user{i}.{i * 7919 % 100003}@{DOMAINS[i % len(DOMAINS)]}"


def write_csv(path: Path, count: int) -> None:
    rng = random.Random(1)
    with path.open("w") as out:
        out.write("email,reason\n")
        for i in range(count):
            out.write(f"{address(i)},{rng.choice(REASONS)}\n")


async def used_memory(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("memory")
        return int(info["used_memory"])
    finally:
        await client.aclose()


async def baseline(url: str, count: int) -> tuple[float, int]:
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushall()
        empty = int((await client.info("memory"))["used_memory"])
        value = pack_entry("unsubscribe", time.time(), "import")
        started = time.perf_counter()
        for start in range(0, count, 10_000):
            async with client.pipeline(transaction=False) as pipe:
                for i in range(start, min(count, start + 10_000)):
                    pipe.hset("baseline", address(i), value)
                await pipe.execute()
        elapsed = time.perf_counter() - started
        memory = int((await client.info("memory"))["used_memory"]) - empty
        await client.flushall()
        return elapsed, memory
    finally:
        await client.aclose()


async def lookups(store: Store, count: int, present: int) -> float:
    rng = random.Random(2)
    picks = [address(rng.randrange(present * 2)) for _ in range(count)]  # half are listed
    started = time.perf_counter()
    for email in picks:
        await store.suppressions.check(email, "cart_abandonment")
    return (time.perf_counter() - started) / count * 1e6


async def accept_batch(store: Store) -> float:
    best = float("inf")
    for round_ in range(5):
        body = fixture_batch(1000, start=round_ * 1000, domain=DOMAINS[0])
        prepared = accepting.prepare(body, now=time.time(), policy=Policy())
        started = time.perf_counter()
        await accepting.accept(store, prepared, "", None)
        best = min(best, time.perf_counter() - started)
        # the same queue state for every round and both list sizes
        await store.redis.delete(keys.JOBS, keys.EVENTS, keys.PENDING_BY_DOMAIN, keys.STATS)
    return best * 1000


async def measure(url: str, small: bool, count: int) -> tuple[float, float]:
    async with open_store(url) as store:
        if small:
            await store.redis.flushall()
            await store.suppressions.add_many(
                [(address(i), None, "unsubscribe", "bench") for i in range(1000)]
            )
        return await lookups(store, 20_000, 1000 if small else count), await accept_batch(store)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    n = args.addresses

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv_path = root / "suppressions.csv"
        write_csv(csv_path, n)
        empty_redis = EmbeddedRedis(root / "empty")
        empty = asyncio.run(used_memory(empty_redis.start()))
        empty_redis.stop()

        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "suppress",
                "import",
                str(csv_path),
                "--data-dir",
                str(root / "data"),
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
        )
        import_seconds = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stdout, done.stderr, file=sys.stderr)
            return 1

        redis = EmbeddedRedis(root / "data")
        url = redis.start()
        try:
            memory = asyncio.run(used_memory(url)) - empty
            big_lookup_us, big_accept_ms = asyncio.run(measure(url, False, n))
            small_lookup_us, small_accept_ms = asyncio.run(measure(url, True, n))
            base_seconds, base_memory = asyncio.run(baseline(url, n))
        finally:
            redis.stop()

    result: dict[str, Any] = {
        "addresses": n,
        "import_seconds": round(import_seconds, 1),
        "import_per_second": round(n / import_seconds),
        "bytes_per_address": round(memory / n, 1),
        "baseline_one_hash_seconds": round(base_seconds, 1),
        "baseline_one_hash_bytes_per_address": round(base_memory / n, 1),
        "import_time_ratio_to_baseline": round(import_seconds / base_seconds, 2),
        "memory_ratio_to_baseline": round(memory / base_memory, 2),
        "lookup_us_at_1000": round(small_lookup_us, 1),
        f"lookup_us_at_{n}": round(big_lookup_us, 1),
        "lookup_ratio": round(big_lookup_us / small_lookup_us, 2),
        "accept_1000_ms_at_1000": round(small_accept_ms, 1),
        f"accept_1000_ms_at_{n}": round(big_accept_ms, 1),
        "accept_ratio": round(big_accept_ms / small_accept_ms, 2),
        "import_output": done.stdout.strip(),
    }
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
