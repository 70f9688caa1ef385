"""What a day of statistics rollups costs in Redis memory (``core/rollups.py``).

Run::

    .venv/bin/python -m loadtests.bench_rollups [--campaigns 1000] [--providers 30] [--ips 10]
        [--metrics 10] [--sample 100] [--json]

Writes, into a fresh ``redis-server``, the counter fields one day produces when every
campaign sent through every provider and IP and counted ``--metrics`` metrics for each
(accepted, delivered, deferred, bounced, a bounce class, opened, clicked...): the daily
hash, and one hour's hash (an hour in which every combination was active: the worst case;
a day has 24). Only ``--sample`` campaigns are written and the figure is scaled to
``--campaigns`` (memory grows linearly with the fields: measured at two sample sizes in
the same run to check). Reports bytes per field and MB per day, daily and hourly.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from core import rollups
from loadtests.harness import print_result
from loadtests.redis_cluster import Replicated

METRICS = (
    "accepted",
    "delivered",
    "deferred",
    "bounced",
    "bounced_class:bad-mailbox",
    "bounced_hard",
    "opened",
    "opened_machine",
    "clicked",
    "complained",
    "unsubscribed",
    "suppressed",
)


def fill(client: Any, key: str, campaigns: int, providers: int, ips: int, metrics: int) -> int:
    """Write the fields of ``campaigns`` x ``providers`` x ``ips`` x ``metrics``; how many."""
    written = 0
    pipe = client.pipeline(transaction=False)
    for c in range(campaigns):
        for p in range(providers):
            for i in range(ips):
                names = (f"campaign-{c:04d}", f"category-{c % 20}", f"provider-{p}")
                where = (f"203.0.113.{i + 1}", f"pool-{i % 3}", "shop.example.com")
                dims = rollups.Dims(*names, *where)
                for metric in METRICS[:metrics]:
                    pipe.hincrby(key, dims.field(metric), 1 + (c + p + i) % 500)
                    written += 1
            pipe.execute()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--campaigns", type=int, default=1000)
    parser.add_argument("--providers", type=int, default=30)
    parser.add_argument("--ips", type=int, default=10)
    parser.add_argument("--metrics", type=int, default=10, choices=range(1, len(METRICS) + 1))
    parser.add_argument("--sample", type=int, default=100, help="campaigns actually written")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "campaigns": args.campaigns,
        "providers": args.providers,
        "ips": args.ips,
        "metrics": args.metrics,
    }
    with Replicated(replica=False) as server:
        client = server.node(server.master_port)
        per_field = []
        for sample in (args.sample // 2, args.sample):
            client.flushall()
            base = int(client.info("memory")["used_memory"])
            key = "sluice:{sluice}:roll:d:20261128"
            fields = fill(client, key, sample, args.providers, args.ips, args.metrics)
            used = int(client.info("memory")["used_memory"]) - base
            per_field.append(used / fields)
        result["bytes_per_field"] = [round(b, 1) for b in per_field]
        fields_per_day = args.campaigns * args.providers * args.ips * args.metrics
        result["fields_per_day_daily_hash"] = fields_per_day
        result["daily_mb_per_day"] = round(fields_per_day * per_field[-1] / 2**20, 1)
        result["hourly_mb_per_active_hour"] = result["daily_mb_per_day"]
        result["hourly_mb_per_day_worst"] = round(24 * result["daily_mb_per_day"], 1)
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
