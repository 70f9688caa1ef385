"""Scale-out benchmark: two gateways and their workers on one Redis, then on a three-master
Redis Cluster, in the same run.

Run::

    .venv/bin/python -m loadtests.bench_cluster [--recipients N] [--gateways G] [--shards S]
        [--json]

Needs ``redis-server`` and Postfix's ``smtp-sink`` (``scripts/test-deps``, ``apt-get install
postfix``).

For each setup, in turn:

- **single**: one ``redis-server`` (AOF, ``appendfsync always``, as the embedded Redis);
- **cluster**: three masters of a Redis Cluster on loopback, each with the same settings
  (``loadtests/redis_cluster.py``), Sluice's data in S shards (``SLUICE_SHARDS``, default 16).

G ``sluice serve`` gateways (default 2), each with one delivery worker, point at it with
``SLUICE_REDIS_URL`` (the cluster through a node that does not own Sluice's keys) and relay
into one ``smtp-sink``. N fixture recipients (default 20,000) go in 1,000-recipient batches
from 4 clients, batch i to gateway i mod G; the run waits until every one is delivered.

Reports per setup: accepted/s (first request to last 202), delivered/s (to the last
``delivered``), and each master's keys and ``used_memory``: where the data went (the single
Redis keeps the default of one shard, the embedded Redis's layout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from redis.cluster import RedisCluster

from core.shards import Shards
from loadtests.bench_e2e import submit
from loadtests.bench_pipelining import start_sink
from loadtests.harness import (
    Served,
    free_port,
    print_result,
    start_serve,
)
from loadtests.redis_cluster import LocalCluster, Replicated
from mta.dkimkeys import KeyStore

BATCH = 1000


@contextlib.contextmanager
def setup(kind: str) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(URL, a synchronous client, what to report on the servers when done)."""
    if kind == "single":
        with Replicated(replica=False, durable=True) as single:
            client = single.node(single.master_port)
            yield single.master_url, client, {"port": single.master_port}
        return
    with LocalCluster(masters=3, durable=True) as cluster:
        nodes = RedisCluster.from_url(cluster.url)
        try:
            yield cluster.url, nodes, {"cluster": cluster}
        finally:
            nodes.close()


def masters(found: dict[str, Any], client: Any) -> list[dict[str, float]]:
    if "cluster" in found:
        cluster: LocalCluster = found["cluster"]
        memory = cluster.memory_by_master()
        return [
            {"port": port, "keys": count, "used_memory_mb": round(memory[port] / 2**20, 1)}
            for port, count in cluster.keys_by_master().items()
        ]
    used = int(client.info("memory")["used_memory"])
    return [
        {"port": found["port"], "keys": client.dbsize(), "used_memory_mb": round(used / 2**20, 1)}
    ]


def delivered(client: Any, shards: Shards) -> int:
    """Messages delivered, summed over the shards' counters."""
    return sum(int(client.hget(shard.keys.stats, "delivered") or 0) for shard in shards.all)


def run(
    kind: str, recipients: int, gateways: int, sink_port: int, work: Path, dkim: bool, shards: int
) -> dict[str, Any]:
    with setup(kind) as (url, client, found):
        served: list[Served] = []
        try:
            for i in range(gateways):
                data = work / f"{kind}-{i}" / "data"
                if dkim:
                    KeyStore(data).generate("shop.example.com", "bench", "rsa", 2048)
                served.append(
                    start_serve(
                        data,
                        relay=f"127.0.0.1:{sink_port}",
                        workers=1,
                        extra_env={"SLUICE_REDIS_URL": url, "SLUICE_SHARDS": str(shards)},
                    )
                )
            for gateway in served:
                gateway.wait_workers_ready()
            started = time.perf_counter()
            accept_seconds = asyncio.run(submit([g.url for g in served], recipients, BATCH))
            deadline = time.monotonic() + 600
            while delivered(client, Shards(shards)) < recipients:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind}: not every message was delivered in 600 s")
                time.sleep(0.05)
            total_seconds = time.perf_counter() - started
        finally:
            for gateway in served:
                gateway.stop()
        return {
            "shards": shards,
            "accepted_per_s": round(recipients / accept_seconds),
            "delivered_per_s": round(recipients / total_seconds),
            "masters": masters(found, client),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument(
        "--dkim", choices=("rsa", "none"), default="rsa", help="RSA-2048 signing (default) or none"
    )
    parser.add_argument(
        "--shards", type=int, default=16, help="SLUICE_SHARDS on the cluster (default 16)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sink_port = free_port()
    sink = start_sink(sink_port)
    result: dict[str, Any] = {"recipients": args.recipients, "gateways": args.gateways}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for kind in ("single", "cluster"):
                shards = args.shards if kind == "cluster" else 1
                dkim = args.dkim == "rsa"
                result[kind] = run(
                    kind, args.recipients, args.gateways, sink_port, Path(tmp), dkim, shards
                )
    finally:
        sink.kill()
        sink.wait()
    result["cluster_to_single_delivered"] = round(
        result["cluster"]["delivered_per_s"] / result["single"]["delivered_per_s"], 2
    )
    result["cluster_to_single_accepted"] = round(
        result["cluster"]["accepted_per_s"] / result["single"]["accepted_per_s"], 2
    )
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
