"""Chaos run: ``kill -9`` delivery workers and Redis at random moments while Sluice accepts and
delivers into a faulty sink; then count what was accepted, delivered, bounced, lost and sent twice.

Run::

    .venv/bin/python -m loadtests.chaos [--recipients 5000] [--kills 12] [--seed 1] [--json]

1. Starts the fault sink (``loadtests/fault_sink.py``) answering 5% 4xx, 2% 5xx, dropping 1%
   of connections after the final dot (the message arrived, the reply never does), with 20 ms
   before each reply so transactions are really in flight when a kill lands.
2. Starts the real ``sluice serve`` relaying into it: 2 workers, 10 deliveries in flight each,
   embedded Redis with ``appendfsync always``, retries after 1 s, 2 s, 4 s.
3. Submits ``--recipients`` fixture recipients in batches of ``--batch`` from 2 clients. A
   request that fails (connection refused or 503 while Redis restarts) is sent again with the
   same ``Idempotency-Key`` until it is answered 202: a recipient counts as *accepted* only once
   the API said 202 for it.
4. Meanwhile, every 0.5-3 s (seeded), ``kill -9`` either one delivery worker (2 in 3) or the
   embedded Redis (1 in 3), ``--kills`` times in all. ``sluice serve`` restarts both.
5. Waits until every accepted message has a final status, then checks each against the sink.

Reported: **accepted**; **delivered** and **bounced** (final statuses, each checked against
what the sink recorded: delivered means the sink accepted it at least once, bounced means it
answered 5xx); **lost** = accepted messages with no final status after ``--settle`` seconds, or
marked delivered without the sink ever accepting them (must be 0); **duplicates** = extra
copies the sink accepted, split into those after a dropped connection (a retry of a message the
client could not know arrived: SMTP's own at-least-once) and the rest, which only a kill
causes; the latter must not exceed **in-flight bound**, the deliveries that can be in flight at
a kill (10 per killed worker, 20 per Redis kill). Exit status 1 if anything is lost or the
bound is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import redis

from core import keys
from loadtests.fault_sink import FaultSink
from loadtests.harness import API_KEY, Served, fixture_batch, print_result, start_serve
from mta.worker import FINAL_STATUSES

WORKERS = 2
PER_WORKER = 10


class Chaos(threading.Thread):
    """Kills at random moments until ``kills`` are done or ``stop`` is set."""

    def __init__(self, served: Served, sink: FaultSink, kills: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.served = served
        self.sink = sink
        self.kills = kills
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.log: list[dict[str, Any]] = []

    def run(self) -> None:
        while len(self.log) < self.kills and not self.stop.wait(self.random.uniform(0.5, 3.0)):
            what = "worker" if self.random.random() < 2 / 3 else "redis"
            pid = (
                self.random.choice(self.served.worker_pids() or [0])
                if what == "worker"
                else self.served.redis_pid()
            )
            if not pid:
                continue  # still being restarted after the previous kill
            open_connections = self.sink.open_connections
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.log.append(
                {
                    "what": what,
                    "pid": pid,
                    "sink_connections": open_connections,
                    "at": round(time.monotonic(), 2),
                }
            )
            print(
                f"chaos: kill -9 {what} {pid} ({open_connections} sink connections open)",
                file=sys.stderr,
                flush=True,
            )


async def submit(
    url: str, recipients: int, batch: int, deadline: float
) -> tuple[dict[str, str], int]:
    """{email: message id} of every recipient the API answered 202 for, and how many requests
    had to be sent again (refused or answered 503 while something restarted)."""
    accepted: dict[str, str] = {}
    retried = 0
    starts = iter(range(0, recipients, batch))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:

        async def client() -> None:
            nonlocal retried
            for start in starts:
                body = fixture_batch(min(batch, recipients - start), start=start)
                while True:
                    try:
                        async with session.post(
                            url + "/v1/messages",
                            json=body,
                            headers={"Idempotency-Key": f"chaos-{start}"},
                        ) as answer:
                            if answer.status == 202:
                                for r in (await answer.json())["results"]:
                                    if r["message_id"]:
                                        accepted[r["email"]] = r["message_id"]
                                break
                            if answer.status < 500:
                                raise RuntimeError(f"{answer.status}: {await answer.text()}")
                    except (aiohttp.ClientError, TimeoutError):
                        pass  # the gateway or its Redis is restarting: send it again
                    retried += 1
                    if time.monotonic() > deadline:
                        raise RuntimeError("the API did not accept a batch in time")
                    await asyncio.sleep(0.2)

        await asyncio.gather(client(), client())
    return accepted, retried


def final_statuses(served: Served, ids: list[str]) -> dict[str, str]:
    try:
        client = redis.Redis.from_url(served.redis_url(), socket_timeout=30)
        pipe = client.pipeline(transaction=False)
        for message_id in ids:
            pipe.hget(keys.message(message_id), "s")
        values = pipe.execute()
        client.close()
    except redis.RedisError:
        return {}
    return {m: (v or b"").decode() for m, v in zip(ids, values, strict=True)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    sink = FaultSink(seed=args.seed).start()
    sink.set_rule("*", p_4xx=0.05, p_5xx=0.02, p_drop=0.01, latency=0.02)
    tmp = tempfile.TemporaryDirectory(prefix="sluice-chaos-")
    served = start_serve(
        Path(tmp.name) / "data",
        relay=sink.relay,
        workers=WORKERS,
        extra_env={
            "SLUICE_CONCURRENCY_PER_WORKER": str(PER_WORKER),
            "SLUICE_RETRY_SCHEDULE": "1s,2s,4s",
            "SLUICE_MAX_DEFERRAL": "300s",
        },
    )
    chaos = Chaos(served, sink, args.kills, args.seed)
    try:
        started = time.monotonic()
        chaos.start()
        accepted, retried = asyncio.run(
            submit(served.url, args.recipients, args.batch, started + args.settle)
        )
        ids = list(accepted.values())
        deadline = time.monotonic() + args.settle
        while True:
            statuses = final_statuses(served, ids)
            settled = sum(s in FINAL_STATUSES for s in statuses.values())
            if settled == len(ids) and not chaos.is_alive():
                break
            if time.monotonic() > deadline:
                break
            time.sleep(1.0)
        chaos.stop.set()
        chaos.join()
        seconds = time.monotonic() - started
    finally:
        chaos.stop.set()
        served.stop()
        sink.stop()
        tmp.cleanup()

    by_email: dict[str, list[str]] = defaultdict(list)
    for received in sink.received():
        by_email[received.rcpt_tos[0]].append(received.outcome)
    outcome = Counter(statuses.get(m, "") for m in ids)
    lost = [e for e, m in accepted.items() if statuses.get(m) not in FINAL_STATUSES]
    lost += [
        e
        for e, m in accepted.items()
        if statuses.get(m) == "delivered" and not {"accepted", "drop"} & set(by_email[e])
    ]
    wrong_bounces = [
        e for e, m in accepted.items() if statuses.get(m) == "bounced" and "5xx" not in by_email[e]
    ]
    after_drop = kill_duplicates = 0
    for email in accepted:
        copies = by_email[email]
        arrived = [o for o in copies if o in ("accepted", "drop")]
        extra = max(0, len(arrived) - 1)
        drops = copies.count("drop")
        after_drop += min(extra, drops)
        kill_duplicates += extra - min(extra, drops)
    kills = Counter(k["what"] for k in chaos.log)
    bound = kills["worker"] * PER_WORKER + kills["redis"] * WORKERS * PER_WORKER
    return {
        "recipients_submitted": args.recipients,
        "accepted": len(accepted),
        "requests_sent_again": retried,
        "delivered": outcome["delivered"],
        "bounced": outcome["bounced"],
        "expired": outcome["expired"],
        # bounced hard, then killed before the outcome was recorded: the retry finds the
        # address already suppressed by that bounce
        "suppressed": outcome["suppressed"],
        "lost": len(lost),
        "lost_examples": lost[:5],
        "bounced_without_5xx": len(wrong_bounces),
        "worker_kills": kills["worker"],
        "redis_kills": kills["redis"],
        "sink_attempts": len(sink.received()),
        "sink_counts": dict(sink.counts),
        "duplicates_after_drop": after_drop,
        "duplicates_from_kills": kill_duplicates,
        "in_flight_bound": bound,
        "seconds": round(seconds, 1),
        "ok": not lost and not wrong_bounces and kill_duplicates <= bound,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settle", type=float, default=300.0, help="seconds to wait at most")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args)
    print_result(result, as_json=args.json)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
