"""Limits stay exact with several gateways and processes on a Redis Cluster.

The same checks as on one Redis (``tests/test_contact_policy_e2e.py``,
``tests/test_warmup.py``), against three masters on loopback reached through a node that
does not own Sluice's keys: a frequency cap of 3 hammered by 200 concurrent requests through
two gateways queues exactly 3; a warming IP's hourly budget of 100 taken from two processes
at once gives exactly 100.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from core.store import open_store
from loadtests.redis_cluster import LocalCluster
from tests.conftest import CLUSTER_SHARDS, on_cluster
from tests.test_contact_policy_e2e import assert_a_cap_of_three_holds
from tests.test_warmup import COLD, _hammer, at, configure

# Each starts redis-server processes of its own: the full lane's.
pytestmark = pytest.mark.slow


@pytest.mark.slow
def test_a_cap_of_three_through_two_gateways_on_a_cluster_queues_three(
    cluster: LocalCluster, serve_factory: Any, tmp_path: Path
) -> None:
    env = on_cluster(cluster)
    first = serve_factory(workers=0, extra_env=env)
    second = serve_factory(workers=0, data_dir=tmp_path / "second", extra_env=env)
    assert_a_cap_of_three_holds(first, second)


async def test_a_warmup_budget_taken_from_two_processes_on_a_cluster_is_exact(
    cluster: LocalCluster,
) -> None:
    async with open_store(cluster.url, shards=CLUSTER_SHARDS) as store:
        await configure(store, COLD, (2400,), "2026-11-23")  # 100 an hour
    now = at("2026-11-23T00:30:00")
    context = multiprocessing.get_context("spawn")
    out, go = context.Queue(), context.Event()
    processes = [
        context.Process(target=_hammer, args=(cluster.url, now, 150, go, out)) for _ in range(2)
    ]
    for process in processes:
        process.start()
    assert [await asyncio.to_thread(out.get, True, 60) for _ in processes] == ["ready"] * 2
    go.set()
    taken = [await asyncio.to_thread(out.get, True, 60) for _ in processes]
    for process in processes:
        process.join(30)
    assert sum(taken) == 100, taken
    assert all(t > 0 for t in taken), "both processes took part"
