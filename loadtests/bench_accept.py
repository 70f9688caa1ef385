"""Accept-path benchmark: how fast ``POST /v1/messages`` queues recipients, and what they cost in Redis.

Run::

    .venv/bin/python -m loadtests.bench_accept [--recipients N] [--concurrency C] [--json]

What it does, in order:

1. Starts the real ``sluice serve`` in a subprocess (``loadtests/harness.py``):
   ``SLUICE_WORKERS=0`` so nothing drains the queue, a fresh temp data dir, the
   embedded Redis with its default AOF ``appendfsync always``, a fixed API key.
2. Builds the realistic fixture (``loadtests/fixtures/cart-reminder.json``,
   ~12 KB HTML) addressed to ``--batch-size`` (default 1,000) recipients per
   request, each with a distinct address and personalized data, all bodies
   encoded before the clock starts. One warm-up batch is sent first and not
   timed.
3. Sends ``--recipients`` (default 100,000) recipients from ``--concurrency``
   (default 4) aiohttp clients at once. **accepted/s** is recipients the API
   answered ``queued`` for, divided by the wall clock from the first request to
   the last answer; **batch latency** p50/p95/max is per request, send to full
   answer, so it includes waiting behind the other clients' batches.
4. Memory: ``used_memory`` of the embedded Redis after the warm-up and after the
   timed batches; **bytes/recipient** is the difference divided by the recipients
   queued in between (checked against ``XLEN`` of the jobs stream). The breakdown
   uses ``MEMORY USAGE`` (``SAMPLES 0``: exact): a sample of message hashes, the
   jobs stream and the events stream divided by their length, a batch-content
   key divided by its batch size. "keyspace and other" is what the measured
   figure has that those do not (the expires-table entry and hash-table buckets
   of each message key, allocator rounding, ...).
5. Baseline, in the same run and on the same Redis: one connection sends the
   very commands ``core/lua/accept.lua`` runs per recipient (XADD event, XADD
   job, HSET + EXPIRE of a message hash), with the real payloads read back from
   the streams, to scratch keys; one pipelined MULTI/EXEC per ``--batch-size``
   recipients (atomic and one AOF fsync, like one script call), encoded with
   redis-py's RESP packer before the clock starts and answered through hiredis.
   That is the write rate of the storage itself, with no HTTP, validation,
   rendering or Lua (a plain async redis-py pipeline is not used: building and
   parsing 4,000 commands per batch in Python caps it near 7,000 recipients/s,
   which would measure the client, not Redis). **ratio** = API accepted/s /
   baseline recipients/s; 1.0 would mean the API costs nothing on top of Redis.
6. Stops the server with SIGTERM and removes the temp dir, also on an error or
   Ctrl-C.

CPU: user + system time of the API process and of redis-server during the
timed phase, per 1,000 recipients; the API's Python runs on one core at a time
(one GIL), so 1,000 / (API CPU ms per 1,000 recipients) x 1,000 is its ceiling
on any machine as fast as this one. Those figures suffer less than the
wall-clock ones when something else shares the machine (they still vary by
+-15 % then); the 1-min load average at the start says if something did.

Reading the output: the targets are >= 5,000 recipients/s accepted and <= 1,024
bytes of Redis memory per queued recipient; each line says whether it meets its
target. The machine matters (the reference is 2 cores shared by the client, the
API process and Redis), so compare figures from the same machine only.
``--json`` prints one JSON object on stdout (the summary goes to stderr).
``--py-spy FILE`` records the API process with py-spy during the timed phase
(``.svg`` flame graph, ``.json`` speedscope, anything else raw collapsed
stacks); the throughput measured with it on is slightly lower. ``--check``
exits 1 when a target is missed; ``--serve-log FILE`` keeps the server's log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlparse

import aiohttp
import hiredis
import redis.asyncio as aioredis
from redis.connection import Connection

from core import keys
from loadtests.harness import Served, cpu_seconds, fixture_batch, percentile, py_spy, served

TARGET_ACCEPTED_PER_S = 5_000
TARGET_BYTES_PER_RECIPIENT = 1_024
JOBS, EVENTS = keys.JOBS, keys.EVENTS
MESSAGE_PATTERN, BATCH_PATTERN = keys.message("*"), keys.batch("*")
BASELINE_PREFIX = "loadtest:baseline:"
MESSAGE_SAMPLE = 50


# --- request bodies ---------------------------------------------------------------------


def batch_body(start: int, count: int, domain: str) -> bytes:
    """The fixture addressed to ``count`` personalized recipients, numbered from ``start``."""
    body = fixture_batch(count, start=start, domain=domain)
    return json.dumps(body, ensure_ascii=False).encode()


def batch_sizes(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


# --- HTTP load ----------------------------------------------------------------------------


@dataclass
class BatchResult:
    recipients: int
    queued: int
    seconds: float


async def post_batch(
    session: aiohttp.ClientSession, served_: Served, body: bytes, size: int
) -> BatchResult:
    started = time.perf_counter()
    async with session.post(
        f"{served_.url}/v1/messages", data=body, headers=served_.headers
    ) as response:
        text = await response.text()
    elapsed = time.perf_counter() - started
    if response.status != 202:
        raise RuntimeError(f"POST /v1/messages answered {response.status}: {text[:500]}")
    results = json.loads(text)["results"]
    queued = sum(1 for r in results if r["status"] == "queued")
    if len(results) != size or queued != size:
        raise RuntimeError(f"expected {size} queued recipients, got {queued} of {len(results)}")
    return BatchResult(size, queued, elapsed)


async def run_load(
    session: aiohttp.ClientSession,
    served_: Served,
    bodies: list[tuple[bytes, int]],
    concurrency: int,
) -> tuple[list[BatchResult], float]:
    """Send every body from ``concurrency`` clients; (per-batch results, wall seconds)."""
    pending: Iterator[tuple[bytes, int]] = iter(bodies)
    results: list[BatchResult] = []

    async def client() -> None:
        for body, size in pending:  # shared iterator: each body is taken once
            results.append(await post_batch(session, served_, body, size))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(client())
    return results, time.perf_counter() - started


# --- Redis memory -------------------------------------------------------------------------


async def used_memory(client: aioredis.Redis) -> dict[str, int]:
    info = await client.info("memory")
    return {k: int(info[k]) for k in ("used_memory", "used_memory_rss", "used_memory_lua")}


async def sample_keys(client: aioredis.Redis, pattern: str, want: int) -> list[bytes]:
    found: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        found.append(key)
        if len(found) >= want:
            break
    return found


async def memory_usage(client: aioredis.Redis, key: bytes | str) -> int:
    reply: Any = await client.execute_command(  # type: ignore[no-untyped-call]
        "MEMORY", "USAGE", key, "SAMPLES", "0"
    )
    return int(reply)


@dataclass
class MemoryReport:
    recipients_queued: int
    used_memory_before: int
    used_memory_after: int
    bytes_per_recipient: float
    rss_bytes_per_recipient: float
    used_memory_lua_after: int
    breakdown: dict[str, float] = field(default_factory=dict)


async def memory_report(
    client: aioredis.Redis, before: dict[str, int], jobs_before: int, batch_size: int
) -> MemoryReport:
    after = await used_memory(client)
    queued = int(await client.xlen(JOBS)) - jobs_before
    messages = await sample_keys(client, MESSAGE_PATTERN, MESSAGE_SAMPLE)
    batches = await sample_keys(client, BATCH_PATTERN, 5)
    jobs_len, events_len = int(await client.xlen(JOBS)), int(await client.xlen(EVENTS))
    per_message = sum([await memory_usage(client, k) for k in messages]) / max(1, len(messages))
    per_batch = sum([await memory_usage(client, k) for k in batches]) / max(1, len(batches))
    breakdown = {
        "message_hash": per_message,
        "jobs_stream_entry": await memory_usage(client, JOBS) / max(1, jobs_len),
        "events_stream_entry": await memory_usage(client, EVENTS) / max(1, events_len),
        "batch_content_share": per_batch / batch_size,
    }
    delta = (after["used_memory"] - before["used_memory"]) / max(1, queued)
    breakdown["keyspace_and_other"] = delta - sum(breakdown.values())
    return MemoryReport(
        recipients_queued=queued,
        used_memory_before=before["used_memory"],
        used_memory_after=after["used_memory"],
        bytes_per_recipient=delta,
        rss_bytes_per_recipient=(after["used_memory_rss"] - before["used_memory_rss"])
        / max(1, queued),
        used_memory_lua_after=after["used_memory_lua"],
        breakdown={k: round(v, 1) for k, v in breakdown.items()},
    )


# --- baseline: the same writes, straight into the same Redis ------------------------------


def baseline_commands(
    jobs: list[bytes], events: list[bytes], first: int, count: int
) -> list[tuple[Any, ...]]:
    """accept.lua's per-recipient commands for ``count`` recipients, in one MULTI/EXEC."""
    now = f"{time.time():.3f}"
    event_id = f"{int(time.time() * 1000)}-0"  # the script stores the XADD reply; same size
    commands: list[tuple[Any, ...]] = [("MULTI",)]
    for i in range(first, first + count):
        key = f"{BASELINE_PREFIX}msg:{i}"
        commands += [
            ("XADD", BASELINE_PREFIX + "events", "*", "e", events[i % len(events)]),
            ("XADD", BASELINE_PREFIX + "jobs", "*", "j", jobs[i % len(jobs)]),
            ("HSET", key, "s", "queued", "ev", event_id, "u", now),
            ("EXPIRE", key, 7 * 86400),
        ]
    commands.append(("EXEC",))
    return commands


async def redis_baseline(
    client: aioredis.Redis, redis_url: str, recipients: int, batch_size: int
) -> float:
    """Recipients/s for accept.lua's per-recipient writes sent as plain pipelined commands.

    The commands are encoded by redis-py's own packer before the clock starts and
    each batch is one MULTI/EXEC (atomic, one AOF fsync, like one script call), so
    the figure is what this Redis with ``appendfsync always`` absorbs, not how fast
    a Python client builds commands or parses 4,000 replies.
    """
    job_entries: Any = await client.xrange(JOBS, count=batch_size)
    event_entries: Any = await client.xrange(EVENTS, count=batch_size)
    jobs: list[bytes] = [fields[b"j"] for _, fields in job_entries]
    events: list[bytes] = [fields[b"e"] for _, fields in event_entries]
    if not jobs or not events:
        raise RuntimeError("no queued entries to copy for the baseline")
    packer = Connection()  # type: ignore[no-untyped-call]  # only its RESP packer is used
    pipelines: list[tuple[bytes, int]] = []
    for first in range(0, recipients, batch_size):
        commands = baseline_commands(jobs, events, first, min(batch_size, recipients - first))
        packed = packer.pack_commands(commands)  # type: ignore[no-untyped-call]
        pipelines.append((b"".join(packed), len(commands)))

    url = urlparse(redis_url)
    if url.scheme == "unix":
        reader, writer = await asyncio.open_unix_connection(url.path)
    else:
        reader, writer = await asyncio.open_connection(url.hostname, url.port or 6379)
    try:
        started = time.perf_counter()
        for payload, replies in pipelines:
            writer.write(payload)
            parser = hiredis.Reader()
            while replies:  # +OK, one +QUEUED per command, then the EXEC array
                chunk = await reader.read(1 << 20)
                if not chunk:
                    raise RuntimeError("Redis closed the baseline connection")
                parser.feed(chunk)
                while (reply := parser.gets()) is not False:
                    if isinstance(reply, hiredis.ReplyError):
                        raise RuntimeError(f"baseline command failed: {reply}")
                    replies -= 1
        rate = recipients / (time.perf_counter() - started)
    finally:
        writer.close()
        await writer.wait_closed()
    await client.unlink(BASELINE_PREFIX + "events", BASELINE_PREFIX + "jobs")
    return rate


# --- the run -------------------------------------------------------------------------------


@dataclass
class Report:
    recipients: int
    batch_size: int
    batches: int
    concurrency: int
    seconds: float
    accepted_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    warmup_ms: float
    memory: MemoryReport
    baseline_redis_recipients_per_s: float
    ratio_to_baseline: float
    meets_throughput_target: bool
    meets_memory_target: bool
    api_cpu_ms_per_1k: float
    redis_cpu_ms_per_1k: float
    api_cpu_bound_per_s: float
    load_average_before: float
    serve_pid: int


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def bench(served_: Served, args: argparse.Namespace) -> Report:
    sizes = batch_sizes(args.recipients, args.batch_size)
    log(f"encoding {len(sizes)} request bodies of up to {args.batch_size} recipients ...")
    bodies, start = [], 0
    for size in sizes:
        bodies.append((batch_body(start, size, "inbox.example.org"), size))
        start += size
    warmup = batch_body(0, args.batch_size, "warmup.example.org")

    client = aioredis.Redis.from_url(served_.redis_url(), socket_timeout=120)
    timeout = aiohttp.ClientTimeout(total=300)
    try:
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            warm = await post_batch(session, served_, warmup, args.batch_size)
            before = await used_memory(client)
            jobs_before = int(await client.xlen(JOBS))
            log(
                f"warm-up batch: {warm.seconds * 1000:.0f} ms; sending {args.recipients:,} "
                f"recipients from {args.concurrency} clients ..."
            )
            redis_process = served_.redis_pid()
            assert redis_process is not None, "the embedded Redis wrote no pid file"
            pids = (served_.pid, redis_process)
            cpu_before = [cpu_seconds(pid) for pid in pids]
            load_before = os.getloadavg()[0]
            with py_spy(served_.pid, args.py_spy):
                results, wall = await run_load(session, served_, bodies, args.concurrency)
            api_cpu, redis_cpu = (cpu_seconds(p) - b for p, b in zip(pids, cpu_before, strict=True))
        accepted = sum(r.queued for r in results)
        log(f"accepted {accepted:,} recipients in {wall:.2f} s; measuring memory ...")
        memory = await memory_report(client, before, jobs_before, args.batch_size)
        if memory.recipients_queued != accepted:
            raise RuntimeError(
                f"the jobs stream grew by {memory.recipients_queued}, not {accepted}"
            )
        log("baseline: the same Redis writes as pipelined MULTI/EXEC, no API ...")
        baseline = await redis_baseline(client, served_.redis_url(), accepted, args.batch_size)
    finally:
        await client.aclose()

    latencies = [r.seconds * 1000 for r in results]
    rate = accepted / wall
    return Report(
        recipients=accepted,
        batch_size=args.batch_size,
        batches=len(results),
        concurrency=args.concurrency,
        seconds=round(wall, 3),
        accepted_per_s=round(rate, 1),
        latency_p50_ms=round(percentile(latencies, 50), 1),
        latency_p95_ms=round(percentile(latencies, 95), 1),
        latency_max_ms=round(max(latencies), 1),
        warmup_ms=round(warm.seconds * 1000, 1),
        memory=memory,
        baseline_redis_recipients_per_s=round(baseline, 1),
        ratio_to_baseline=round(rate / baseline, 3),
        meets_throughput_target=rate >= TARGET_ACCEPTED_PER_S,
        meets_memory_target=memory.bytes_per_recipient <= TARGET_BYTES_PER_RECIPIENT,
        api_cpu_ms_per_1k=round(api_cpu * 1e6 / accepted, 1),
        redis_cpu_ms_per_1k=round(redis_cpu * 1e6 / accepted, 1),
        api_cpu_bound_per_s=round(accepted / api_cpu, 1) if api_cpu else 0.0,
        load_average_before=round(load_before, 2),
        serve_pid=served_.pid,
    )


def summary(r: Report) -> str:
    def verdict(ok: bool) -> str:
        return "meets target" if ok else "MISSES target"

    m = r.memory
    lines = [
        f"sluice accept benchmark: {r.recipients:,} recipients in {r.batches} batches of "
        f"{r.batch_size}, {r.concurrency} concurrent clients, {os.cpu_count()} CPUs",
        f"  accepted        {r.accepted_per_s:>10,.0f} recipients/s over {r.seconds:.2f} s "
        f"(target >= {TARGET_ACCEPTED_PER_S:,}: {verdict(r.meets_throughput_target)})",
        f"  batch latency   p50 {r.latency_p50_ms:,.0f} ms, p95 {r.latency_p95_ms:,.0f} ms, "
        f"max {r.latency_max_ms:,.0f} ms (warm-up batch {r.warmup_ms:,.0f} ms)",
        f"  redis memory    {m.bytes_per_recipient:>10,.0f} bytes/queued recipient "
        f"(used_memory {m.used_memory_before / 2**20:,.1f} -> {m.used_memory_after / 2**20:,.1f} MiB "
        f"for {m.recipients_queued:,}; target <= {TARGET_BYTES_PER_RECIPIENT:,}: "
        f"{verdict(r.meets_memory_target)})",
    ]
    names = {
        "message_hash": "message hash (msg:*)",
        "jobs_stream_entry": "jobs stream / XLEN",
        "events_stream_entry": "events stream / XLEN",
        "batch_content_share": "batch content / batch size",
        "keyspace_and_other": "keyspace and other (rest)",
    }
    lines += [f"    {names[k]:<28} {v:>8,.0f} B" for k, v in m.breakdown.items()]
    lines += [
        f"    (RSS grew {m.rss_bytes_per_recipient:,.0f} B/recipient; Lua heap "
        f"{m.used_memory_lua_after / 2**20:,.1f} MiB, not in used_memory)",
        f"  baseline        {r.baseline_redis_recipients_per_s:>10,.0f} recipients/s: the same "
        "per-recipient Redis writes, pre-encoded, one MULTI/EXEC pipeline per batch",
        f"  ratio           {r.ratio_to_baseline:>10.3f} (API accepted/s / baseline)",
        f"  cpu             API process {r.api_cpu_ms_per_1k:,.0f} ms, Redis "
        f"{r.redis_cpu_ms_per_1k:,.0f} ms per 1,000 recipients; one core for the API's "
        f"Python would allow {r.api_cpu_bound_per_s:,.0f}/s "
        f"(1-min load average before: {r.load_average_before:.2f})",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_accept",
        description="Throughput and Redis memory of POST /v1/messages against a real sluice serve.",
    )
    parser.add_argument("--recipients", type=int, default=100_000, help="timed recipients")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--batch-size", type=int, default=1000, help="recipients per request")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="FILE",
        help="record the API process with py-spy during the timed phase",
    )
    parser.add_argument(
        "--serve-log",
        type=Path,
        default=None,
        metavar="FILE",
        help="keep a copy of the sluice serve log",
    )
    args = parser.parse_args(argv)
    if args.recipients < 1 or args.concurrency < 1 or not 1 <= args.batch_size <= 1000:
        parser.error("--recipients and --concurrency must be >= 1, --batch-size 1..1000")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run the same clean-up as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with served(workers=0, keep_log=args.serve_log) as server:
            log(f"sluice serve pid {server.pid} on {server.url}, Redis {server.redis_url()}")
            report = asyncio.run(bench(server, args))
    except KeyboardInterrupt:
        log("interrupted; the server was stopped and its temp dir removed")
        return 130
    text = summary(report)
    if args.json:
        log(text)
        print(json.dumps(asdict(report)))
    else:
        print(text)
    ok = report.meets_throughput_target and report.meets_memory_target
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
