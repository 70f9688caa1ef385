"""A warmup on an accelerated clock: 30 days in a minute, against a fault sink, real Redis and SMTP.

Run::

    .venv/bin/python -m loadtests.sim_warmup [--days 30] [--out report.html|.png]

One cold IP (127.0.0.1) warms up for Gmail on a schedule growing 8% a day from 240
a day. Every simulated hour, Gmail mail is offered until the warmup gate has no
more budget for that hour; each message the gate lets through is sent over real
SMTP (``mta.pool.SmtpPool``) to a fault sink that defers 2% of Gmail mail, and 50%
on days 10 to 12 (the provider pushing back). Every outcome goes to the adaptive
hold (``WarmupGate.record``) at its simulated time. The clock is the ``now``
passed to the gate, so Redis budgets, hourly windows and rates all follow it.

Prints one line per day (planned, budget given, sent, deferral rate, held) and
the ``sluice warmup status`` view at the end, and writes the report.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from core.embedded_redis import EmbeddedRedis
from core.errors import DeliveryError
from core.settings import WarmupSettings
from core.store import Store, open_store
from loadtests.fault_sink import FaultSink
from loadtests.harness import fixture_message
from mta.pool import SmtpPool
from mta.routing import Destination
from warmup.gate import WarmupGate, WarmupIp, save_ip, status
from warmup.report import history, write_report

IP = "127.0.0.1"
START = date(2026, 1, 5)
SCHEDULE = tuple(int(240 * 1.08**d) for d in range(30))
BAD_DAYS = range(10, 13)


@dataclass
class DayResult:
    day: int
    planned: int
    sent: int
    deferred: int
    held_hours: int


async def simulate(
    store: Store, sink: FaultSink, days: int, settings: WarmupSettings
) -> list[DayResult]:
    await store.redis.flushall()
    await save_ip(store, WarmupIp(IP, "default", SCHEDULE, None, START))
    gate = WarmupGate(store, settings, refresh=0)
    pool = SmtpPool(
        ehlo_name="sim.sluice.test",
        timeout=10,
        per_host=8,
        per_domain=8,
        messages_per_connection=10_000,
    )
    dest = Destination(sink.host, sink.host, sink.port, False, "relay")
    message = fixture_message(1, domain="gmail.com")
    base = datetime(START.year, START.month, START.day, tzinfo=UTC).timestamp()
    results = []
    try:
        for day in range(days):
            sink.set_rule("gmail.com", p_4xx=0.5 if day in BAD_DAYS else 0.02)
            sent = deferred = held_hours = 0
            for hour in range(24):
                now = base + day * 86400 + hour * 3600 + 30
                n = 0
                while True:
                    moment = now + n * 2  # a message every 2 simulated seconds
                    choice = await gate.choose([IP], "gmail", moment)
                    if choice.ip is None:
                        break
                    try:
                        await pool.send(
                            dest,
                            "gmail.com",
                            "bounce@shop.example.com",
                            f"u{n}@gmail.com",
                            message,
                            source_ip=IP,
                        )
                        outcome = "sent"
                        sent += 1
                    except DeliveryError as exc:
                        outcome = "deferred" if exc.smtp_code and exc.smtp_code < 500 else "bounced"
                        deferred += outcome == "deferred"
                    await gate.record(IP, "gmail", outcome, moment)
                    n += 1
                doc = await status(store, now + 3000)
                held_hours += doc["ips"][0]["providers"]["gmail"]["held"]
            results.append(DayResult(day, SCHEDULE[day], sent, deferred, held_hours))
    finally:
        await pool.aclose()
    return results


def print_status(doc: dict[str, Any]) -> None:
    for ip in doc["ips"]:
        gmail = ip["providers"]["gmail"]
        print(
            f"{ip['ip']}: gmail day {gmail['day']} of {ip['days']}, budget {gmail['daily_budget']}, "
            f"sent today {gmail['sent_today']}, held {gmail['held']}, days held "
            f"{gmail['days_held']}, full volume on {gmail['full_volume_on']}"
        )


async def main_async(days: int, out: Path | None) -> int:
    settings = WarmupSettings(max_deferral_rate=0.15, min_attempts=10)  # ~10-40 an hour here
    with tempfile.TemporaryDirectory() as tmp, FaultSink(seed=11) as sink:
        redis = EmbeddedRedis(Path(tmp), fsync="everysec")
        url = redis.start()
        try:
            async with open_store(url) as store:
                results = await simulate(store, sink, days, settings)
                print(
                    f"{'day':>3} {'planned':>7} {'sent':>6} {'deferred':>8} {'rate':>6} {'held h':>6}"
                )
                for r in results:
                    total = r.sent + r.deferred
                    print(
                        f"{r.day:>3} {r.planned:>7} {r.sent:>6} {r.deferred:>8} "
                        f"{(r.deferred / total if total else 0):>6.1%} {r.held_hours:>6}"
                    )
                end = (
                    datetime(START.year, START.month, START.day, tzinfo=UTC).timestamp()
                    + days * 86400
                    - 600
                )
                print_status(await status(store, end))
                if out is not None:
                    write_report(out, f"Warmup of {IP} (simulated)", await history(store, IP, end))
                    print(f"report written to {out}")
        finally:
            redis.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args.days, args.out))


if __name__ == "__main__":
    sys.exit(main())
