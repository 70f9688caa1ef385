"""Sluice on a real Redis Cluster (three masters on loopback, ``loadtests/redis_cluster.py``).

``SLUICE_REDIS_URL`` may name any node of a cluster: Sluice asks the node whether it is in
cluster mode and then talks through redis-py's cluster client, which follows the slot map.
With ``SLUICE_SHARDS`` shards (``CLUSTER_SHARDS`` here) the queue, message records, events,
suppression and caps spread over every master (``core/shards.py``, ``docs/scaling.md``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.cluster import key_slot

from core import keys
from core.store import open_store
from core.store.store import _HiredisPacking
from loadtests.harness import fixture_batch
from loadtests.redis_cluster import LocalCluster
from tests.conftest import CLUSTER_SHARDS, Sink, make_settings, need_tools, on_cluster
from tests.inprocess import running_api
from tests.test_end_to_end import get, post, wait_status

# Each starts redis-server processes of its own: the full lane's.
pytestmark = pytest.mark.slow


def owner_of(cluster: LocalCluster, key: str) -> int:
    """The port of the master that owns ``key``'s slot."""
    slot = key_slot(key.encode())
    per = 16384 // cluster.masters
    return cluster.ports[min(slot // per, cluster.masters - 1)]


async def test_any_node_of_a_cluster_opens_a_store_through_the_cluster_client(
    cluster: LocalCluster,
) -> None:
    for port in cluster.ports:
        async with open_store(f"redis://127.0.0.1:{port}", shards=CLUSTER_SHARDS) as store:
            assert isinstance(store.redis, RedisCluster)
            await store.redis.hset(keys.STATS, "probe", port)  # type: ignore[misc]
    home = owner_of(cluster, keys.STATS)
    assert cluster.node(home).hget(keys.STATS, "probe") == str(cluster.ports[-1]).encode()
    cluster.node(home).hdel(keys.STATS, "probe")


@pytest.mark.slow
def test_a_batch_is_accepted_and_delivered_through_a_cluster(
    cluster: LocalCluster, serve_factory: Any, sink: Sink
) -> None:
    served = serve_factory(relay=sink.relay, extra_env=on_cluster(cluster))
    status, answer = post(served, "/v1/messages", fixture_batch(300))
    assert status == 202, answer
    ids = [result["message_id"] for result in answer["results"]]
    assert all(result["status"] == "queued" for result in answer["results"])
    received = sink.wait_for(300)
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(
        recipient["email"] for recipient in fixture_batch(300)["recipients"]
    )
    assert wait_status(served, ids[-1], "delivered")["status"] == "delivered"
    assert get(served, f"/v1/messages/{ids[0]}")["status"] == "delivered"
    assert "embedded Redis" not in served.log(), "an external Redis: nothing embedded started"
    # 300 message records, suppression-free: spread over the three masters by shard
    counts = cluster.keys_by_master()
    assert sum(counts.values()) > 300 and all(n > 60 for n in counts.values()), counts
    shards = {i.partition(".")[2] or "0" for i in ids}
    assert len(shards) == CLUSTER_SHARDS, "300 recipients land in every shard"


@pytest.fixture(scope="module")
def replicated_cluster() -> Iterator[LocalCluster]:
    need_tools("redis-server")
    with LocalCluster(masters=3, replicas=1) as running:
        yield running


async def test_on_a_cluster_no_202_until_the_masters_replica_holds_the_batch(
    replicated_cluster: LocalCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cluster's pipeline refuses scripts, so the accept script and its ``WAIT`` go on
    one connection of the master that owns the slot: the replica has the records at 202."""
    cluster = replicated_cluster
    async with open_store(cluster.url, shards=CLUSTER_SHARDS) as store:
        shards = store.shards
    settings = make_settings(tmp_path, redis_min_replicas=1)
    async with running_api(settings, cluster.url, port=0) as api:
        answer = await api.post("/v1/messages", json=fixture_batch(30))
        assert answer.status == 202, await answer.text()
        ids = [r["message_id"] for r in (await answer.json())["results"]]
        for message_id in ids:  # each on the replica of its shard's master
            record = shards.of_message(message_id).keys.message(message_id)  # type: ignore[union-attr]
            master = cluster.ports.index(owner_of(cluster, record))
            replica = cluster.node(cluster.replica_ports[master][0])
            replica.execute_command("READONLY")
            assert replica.exists(record), (message_id, master)
        for port in cluster.ports:
            cluster.node(port).script_flush()  # as after a restart: the script is loaded again
        again = await api.post("/v1/messages", json=fixture_batch(20, start=30))
        assert again.status == 202, await again.text()
    settings = make_settings(tmp_path, redis_min_replicas=2)
    async with running_api(settings, cluster.url, port=0) as api:
        assert "has 1 replicas connected" in caplog.text, "the shards' masters', said at start"
        answer = await api.post("/v1/messages", json=fixture_batch(1, start=9))
        assert answer.status == 503, await answer.text()
        assert answer.headers["Retry-After"] == "1"


async def test_the_cluster_client_packs_commands_with_hiredis(cluster: LocalCluster) -> None:
    """As the single client does (``tests/test_store_packing.py``): a 1,000-recipient accept
    passes ~2,000 keys to one script."""
    async with open_store(cluster.url) as store:
        assert isinstance(store.redis, RedisCluster)
        await store.ping()
        nodes = store.redis.get_nodes()
        assert len(nodes) == 3
        for node in nodes:
            connection = node.acquire_connection()
            try:
                assert isinstance(connection, _HiredisPacking), type(connection)
            finally:
                node.release(connection)


@pytest.mark.slow
def test_nodes_sharing_a_cluster_have_their_own_worker_names_kept_across_restarts(
    cluster: LocalCluster, serve_factory: Any, tmp_path: Path
) -> None:
    """Two nodes' workers must not share a consumer name: a restarted worker re-reads the
    unacknowledged jobs of its name as its own, which would take the other node's jobs in
    flight and send them twice."""
    env = on_cluster(cluster)
    first = serve_factory(workers=2, extra_env=env)
    second = serve_factory(workers=1, data_dir=tmp_path / "second", extra_env=env)
    for node in (first, second):
        node.wait_workers_ready()
    nodes = [(tmp_path / name / "node-id").read_text().strip() for name in ("data", "second")]
    assert nodes[0] != nodes[1]
    expected = {f"{nodes[0]}-w0", f"{nodes[0]}-w1", f"{nodes[1]}-w0"}
    assert consumers_of(cluster, nodes) == expected, "as the consumer group has them"
    second.stop()
    again = serve_factory(workers=1, data_dir=tmp_path / "second", extra_env=env)
    again.wait_workers_ready()
    assert f"worker {nodes[1]}-w0 ready" in again.log(), "the same node, the same name"
    assert consumers_of(cluster, nodes) == expected


def consumers_of(cluster: LocalCluster, nodes: list[str]) -> set[str]:
    """The delivery group's consumers named after ``nodes``, once there are some of each."""
    client = SyncRedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            found = client.xinfo_consumers(keys.JOBS, keys.DELIVERY_GROUP)
            names = {c["name"] for c in found if c["name"].split("-")[0] in nodes}
            prefixes = {name.split("-")[0] for name in names}
            if prefixes == set(nodes) or time.monotonic() > deadline:
                return names
            time.sleep(0.1)
    finally:
        client.close()


@pytest.mark.slow
def test_a_gateway_killed_between_shards_then_the_retry_queues_each_recipient_once(
    cluster: LocalCluster, serve_factory: Any, sink: Sink, tmp_path: Path
) -> None:
    """``kill -9`` of a gateway after some of a batch's shard scripts committed (a test hook
    holds the request there), then the client's retry with the same key on another gateway:
    the intent names the batch, the shards that committed replay their answers, the others
    queue. Every recipient is delivered once."""
    body = fixture_batch(200, start=1000)
    key = {"Idempotency-Key": "journey-881-step-2"}
    held = serve_factory(
        workers=0,
        extra_env=on_cluster(cluster, SLUICE_TEST_PAUSE_ACCEPT_AFTER_SHARDS="6"),
        data_dir=tmp_path / "held",
    )
    request = threading.Thread(target=lambda: _post_quietly(held, body, key), daemon=True)
    request.start()
    deadline = time.monotonic() + 30
    while "accept paused after 6 shards" not in held.log():
        assert time.monotonic() < deadline, held.log()
        time.sleep(0.05)
    held.kill_group()  # kill -9: the request never answered
    request.join(30)

    retrying = serve_factory(relay=sink.relay, workers=1, extra_env=on_cluster(cluster))
    status, answer = post(retrying, "/v1/messages", body, key)
    assert status == 202, answer
    assert [r["status"] for r in answer["results"]] == ["queued"] * 200
    received = sink.wait_for(200)
    time.sleep(1)  # a duplicate would arrive within the worker's next reads
    addresses = Counter(r.rcpt_tos[0] for r in sink.snapshot())
    assert sorted(addresses) == sorted(r["email"] for r in body["recipients"])
    assert set(addresses.values()) == {1}, "every recipient exactly once"
    assert len(received) >= 200
    assert len({r["message_id"].split("-")[0] for r in answer["results"]}) == 1


def _post_quietly(served: Any, body: Any, headers: dict[str, str]) -> None:
    with contextlib.suppress(OSError):  # the gateway is killed under it
        post(served, "/v1/messages", body, headers)
