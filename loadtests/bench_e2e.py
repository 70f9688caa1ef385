"""End-to-end benchmark: API to SMTP with DKIM, tracking and durable acceptance, against the
wire limit and the peer (Postfix + OpenDKIM), all measured in the same run.

Run (as root, for the peer: Postfix starts as root)::

    .venv/bin/python -m loadtests.bench_e2e [--recipients N] [--workers W] [--batch-size B]
        [--dkim rsa|ed25519|both|none] [--peer-messages M] [--milter unix|inet|both] [--no-peer]
        [--py-spy DIR] [--json]

Needs Postfix's ``smtp-sink`` and ``smtp-source`` (``apt-get install postfix``) and, for the
peer, ``opendkim`` (``scripts/test-deps`` installs all three).

1. **Raw RSA-2048**: the best of three rounds of 500 ``cryptography`` signatures of header-sized
   data (``bench_dkim.raw_rsa``), one core, nothing else running: the price of the one
   operation any RSA signer must pay per message, the unit the workers' CPU is reported in.
   Measured again after step 4; the faster of the two is the unit (the machine's speed
   drifts, and a slow minute must not make the workers look cheaper).
2. **The peer**: Postfix with the OpenDKIM milter (RSA-2048) relaying M fixture messages
   (default 2,000) from ``smtp-source -s 20`` into ``smtp-sink`` (``loadtests.postfix_peer``,
   every 100th message's signature verified); by default once with the milter on a unix
   socket (Debian's setup, the faster one here) and once on loopback TCP (the other common
   setup; ~210 msg/s, latency-bound). The ratio to the peer is to the faster one.
3. **The wire**: ``smtp-source -s 20 -m N -l LEN`` into a fresh ``smtp-sink`` (LEN: the
   fixture's size): what the SMTP wire carries on this machine with no work per message.
4. **Sluice**: an RSA-2048 DKIM key for the fixture's From domain (``--dkim``: Ed25519, both or
   none instead, to show the signature's share) and the real ``sluice serve`` relaying into
   the same sink: embedded Redis with ``appendfsync always``, ``--workers W`` (default: CPU
   count), tracking on. N fixture recipients (default 20,000) are submitted in batches of B
   (default 1,000; smaller batches from more concurrent clients, so that the API is never
   the limit), then the run waits until every one is delivered.

Reports accepted/s (first request to last 202), delivered/s (first request to the last
``delivered``), delivered/s as a ratio to the peer and to smtp-source, and the workers' CPU per
delivered message in raw RSA-2048 signatures. Also, sampled every 0.5 s: the peak RSS of each
delivery worker (target < 250 MB) and the embedded Redis's peak ``used_memory``; and the CPU time
per 1,000 messages of the gateway process (HTTP API), the workers together, Redis and
``smtp-sink``: where the machine's two cores went.

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
from typing import Any, get_args

import aiohttp
import redis
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families

from core import keys
from loadtests import postfix_peer
from loadtests.bench_dkim import rate, raw_rsa
from loadtests.bench_pipelining import smtp_source, start_sink
from loadtests.harness import (
    API_KEY,
    Served,
    context_switches,
    cpu_seconds,
    fixture_batch,
    fixture_message,
    free_port,
    print_result,
    py_spy,
    rss_bytes,
    start_serve,
    system_seconds,
)
from mta.dkimkeys import KeyStore


def clients_for(batch_size: int) -> int:
    """Concurrent submitters: 4 for full batches; for small ones enough that about 4,000
    recipients are in flight, at most 64."""
    return max(4, min(64, 4000 // batch_size))


async def submit(urls: list[str], recipients: int, batch_size: int) -> float:
    """Send the fixture batches, batch i to gateway ``urls[i % len(urls)]``; seconds from the
    first request to the last 202."""
    batches = [
        (urls[n % len(urls)], fixture_batch(min(batch_size, recipients - start), start=start))
        for n, start in enumerate(range(0, recipients, batch_size))
    ]
    clients = clients_for(batch_size)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    queue = iter(batches)
    started = time.perf_counter()
    async with aiohttp.ClientSession(headers=headers) as session:

        async def client() -> None:
            for url, body in queue:
                async with session.post(url + "/v1/messages", json=body) as answer:
                    assert answer.status == 202, await answer.text()

        await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started


def raw_rsa_ms(rounds: int = 3, signatures: int = 500) -> float:
    """The best time of one raw RSA-2048 signature, in ms (``bench_dkim.raw_rsa``)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    work = raw_rsa(key)
    return 1000 / max(rate(work, signatures) for _ in range(rounds))


def peers(messages: int, milter: str) -> dict[str, Any]:
    """Postfix + OpenDKIM's relay rate per milter socket, or why it was not measured."""
    if os.geteuid() != 0:
        return {"skipped": "the peer needs root (Postfix starts as root)"}
    missing = postfix_peer.missing_tools()
    if missing:
        return {"skipped": f"needs {', '.join(missing)}: apt-get install postfix opendkim"}
    sockets = [m for m in get_args(postfix_peer.Milter) if milter in (m, "both")]
    found: dict[str, Any] = {}
    for socket in sockets:
        measured = postfix_peer.measure(messages, milter=socket)
        found[socket] = {
            "relayed_per_s": measured["relayed_per_s"],
            "dkim_verified": measured["dkim_verified"],
            "cpu_ms_per_message": measured["cpu_ms_per_message"],
        }
        found["versions"] = {"postfix": measured["postfix"], "opendkim": measured["opendkim"]}
    return found


def redis_calls(commandstats: dict[str, Any], messages: int) -> dict[str, float]:
    """Redis commands per message by name (scripts count once each, whatever they do
    inside), the busiest first, and their total: the round trips a message costs."""
    calls = {
        name.removeprefix("cmdstat_"): stat["calls"] / messages
        for name, stat in commandstats.items()
    }
    busiest = sorted(calls.items(), key=lambda item: -item[1])
    return {"total": round(sum(calls.values()), 3)} | {
        name: round(per, 3) for name, per in busiest if per >= 0.001
    }


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
        "workers_system": sum(system_seconds(p) for p in served.worker_pids()),
        "workers_switches": sum(context_switches(p) for p in served.worker_pids()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="recipients per request (1-1000)"
    )
    parser.add_argument("--peer-messages", type=int, default=2000, metavar="M")
    parser.add_argument(
        "--milter",
        choices=("unix", "inet", "both"),
        default="both",
        help="the peer's OpenDKIM socket (default: both, one run each)",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip Postfix + OpenDKIM")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR")
    parser.add_argument(
        "--dkim",
        choices=("rsa", "ed25519", "both", "none"),
        default="rsa",
        help="signing key (default RSA-2048, the target's setting; the others show its cost)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= 1000:
        parser.error("--batch-size must be 1-1000")
    n = args.recipients
    length = len(fixture_message(0))
    rsa_before = raw_rsa_ms()
    try:
        peer = {} if args.no_peer else peers(args.peer_messages, args.milter)
    except postfix_peer.PeerFailed as exc:
        print(f"the peer failed: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        sink_port = free_port()
        sink = start_sink(sink_port)
        try:
            wire = smtp_source(sink_port, n, 20, length)
            data = Path(tmp) / "data"
            for algorithm in ("rsa", "ed25519"):
                if args.dkim in (algorithm, "both"):
                    KeyStore(data).generate("shop.example.com", algorithm, algorithm, 2048)
            served = start_serve(data, relay=f"127.0.0.1:{sink_port}", workers=args.workers)
            served.wait_workers_ready()
            sampler = Sampler(served)
            try:
                with contextlib.ExitStack() as spies:
                    if args.py_spy is not None:
                        args.py_spy.mkdir(parents=True, exist_ok=True)
                        for name, pid in [("api", served.pid)] + [
                            (f"worker-{i}", p) for i, p in enumerate(served.worker_pids())
                        ]:
                            spies.enter_context(py_spy(pid, args.py_spy / f"{name}.txt"))
                    with redis.Redis.from_url(served.redis_url()) as stats:
                        stats.config_resetstat()
                    cpu_before = cpu_by_process(served, sink.pid)
                    sampler.start()
                    started = time.perf_counter()
                    accept_seconds = asyncio.run(submit([served.url], n, args.batch_size))
                    with redis.Redis.from_url(served.redis_url()) as counts:
                        while delivered(counts) < n:
                            time.sleep(0.05)
                    total_seconds = time.perf_counter() - started
                    cpu_after = cpu_by_process(served, sink.pid)
                    by_workers = delivered_by_metrics(served.url)
                    with redis.Redis.from_url(served.redis_url()) as stats:
                        commands = stats.info("commandstats")
            finally:
                sampler.stop.set()
                served.stop()
        finally:
            sink.kill()
            sink.wait()
    rsa_after = raw_rsa_ms()
    # The machine's speed drifts: the faster of the two measurements is its RSA cost, so a
    # slow minute at either end cannot make the workers look cheaper than they are.
    rsa_ms = min(rsa_before, rsa_after)
    per_s = n / total_seconds
    workers_ms = (cpu_after["workers"] - cpu_before["workers"]) * 1000 / n
    peer_rates = [v["relayed_per_s"] for k, v in peer.items() if k in ("unix", "inet")]
    result: dict[str, Any] = {
        "recipients": n,
        "batch_size": args.batch_size,
        "message_bytes": length,
        "workers": args.workers,
        "dkim": args.dkim,
        "raw_rsa_ms": round(rsa_ms, 3),
        "raw_rsa_ms_before_after": [round(rsa_before, 3), round(rsa_after, 3)],
        "peer": peer,
        "peer_per_s": max(peer_rates) if peer_rates else None,
        "smtp_source_per_s": round(wire),
        "accepted_per_s": round(n / accept_seconds),
        "delivered_per_s": round(per_s),
        "ratio_to_peer": round(per_s / max(peer_rates), 2) if peer_rates else None,
        "ratio_to_wire": round(per_s / wire, 3),
        "workers_cpu_per_message_in_signatures": round(workers_ms / rsa_ms, 2),
        "workers_counted_delivered": by_workers,
        "worker_peak_rss_mb": [round(v / 2**20) for v in sampler.worker_rss.values()],
        "redis_peak_used_memory_mb": round(sampler.redis_peak / 2**20),
        "redis_calls_per_message": redis_calls(commands, n),
        "cpu_ms_per_1000_messages": {
            name: round((cpu_after[name] - cpu_before[name]) * 1000 / n * 1000)
            for name in ("api", "workers", "redis", "smtp_sink")
        },
        "workers_system_cpu_share": round(
            (cpu_after["workers_system"] - cpu_before["workers_system"])
            / max(cpu_after["workers"] - cpu_before["workers"], 1e-9),
            2,
        ),
        "workers_context_switches_per_message": round(
            (cpu_after["workers_switches"] - cpu_before["workers_switches"]) / n, 2
        ),
    }
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
