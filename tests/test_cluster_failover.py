"""A master of the cluster dies (``kill -9``), or Sluice's slot moves to another master,
while Sluice accepts and delivers.

With ``SLUICE_REDIS_MIN_REPLICAS=1`` every 202 means the batch was on the master's replica
too, so the failover (the replica promoted after ``cluster-node-timeout``) loses nothing a
client was told was accepted. A client retries a 503 or a dropped request with the same
``Idempotency-Key`` (what the 503's detail asks for), so a batch whose outcome was unknown
is settled, not sent twice.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from redis.cluster import key_slot

from core import keys
from loadtests.harness import Served, fixture_batch
from loadtests.redis_cluster import LocalCluster
from tests.conftest import Sink, need_tools, on_cluster
from tests.test_cluster import owner_of
from tests.test_end_to_end import post

BATCHES = 60
PER_BATCH = 10
T = TypeVar("T")


@pytest.fixture
def failover_cluster() -> Iterator[LocalCluster]:
    need_tools("redis-server")
    # two replicas each: after the failover the new master still has one to confirm to
    with LocalCluster(masters=3, replicas=2) as running:
        yield running


class Client(threading.Thread):
    """Sends the batches one after another, each until it gets its 202."""

    def __init__(self, served: Served) -> None:
        super().__init__(daemon=True)
        self.served = served
        self.accepted: dict[str, str] = {}  # message id -> address, from 202 answers
        self.unavailable_seconds = 0.0
        self.failures: list[str] = []

    def run(self) -> None:
        for number in range(BATCHES):
            body = fixture_batch(PER_BATCH, start=number * PER_BATCH)
            key = f"failover-{number}"
            deadline = time.monotonic() + 60
            while True:
                started = time.monotonic()
                try:
                    status, answer = post(
                        self.served, "/v1/messages", body, {"Idempotency-Key": key}
                    )
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    status, answer = 0, {"detail": str(exc)}
                if status == 202:
                    for result in answer["results"]:
                        assert result["status"] == "queued", result
                        self.accepted[result["message_id"]] = result["email"]
                    break
                self.unavailable_seconds += time.monotonic() - started
                if status not in (0, 503) or time.monotonic() > deadline:
                    self.failures.append(f"batch {number}: {status} {answer}")
                    return
                time.sleep(0.2)
                self.unavailable_seconds += 0.2

    def around(self, disruption: Callable[[], T]) -> T:
        """Send every batch, with ``disruption()`` once a third of them got their 202; every
        batch must be accepted, some after it. What the disruption returned."""
        self.start()
        deadline = time.monotonic() + 30
        while len(self.accepted) < BATCHES * PER_BATCH // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        returned = disruption()
        at_disruption = len(self.accepted)
        self.join(120)
        assert not self.is_alive() and not self.failures, self.failures
        assert len(self.accepted) == BATCHES * PER_BATCH
        assert at_disruption < len(self.accepted), "batches were accepted after the disruption"
        return returned


def duplicates_once_all_arrived(sink: Sink, wanted: set[str]) -> int:
    """Wait until every address in ``wanted`` has arrived (failing if one never does); how
    many messages arrived more than once."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        arrived = [r.rcpt_tos[0] for r in sink.snapshot()]
        if wanted <= set(arrived):
            break
        time.sleep(0.2)
    missing = wanted - set(arrived)
    assert not missing, f"{len(missing)} accepted recipients never arrived: {sorted(missing)[:5]}"
    return len(arrived) - len(set(arrived))


@pytest.mark.slow
def test_a_master_killed_while_accepting_and_delivering_loses_nothing_accepted(
    failover_cluster: LocalCluster, serve_factory: Any, sink: Sink
) -> None:
    cluster = failover_cluster
    served = serve_factory(
        relay=sink.relay,
        extra_env=on_cluster(cluster, SLUICE_REDIS_MIN_REPLICAS="1"),
    )
    home = cluster.ports.index(owner_of(cluster, keys.JOBS))
    client = Client(served)
    client.around(lambda: os.kill(cluster.processes[home].pid, signal.SIGKILL))
    wanted = set(client.accepted.values())
    duplicates = duplicates_once_all_arrived(sink, wanted)
    print(
        f"failover: {len(wanted)} accepted, all delivered; {duplicates} duplicates; "
        f"{client.unavailable_seconds:.1f} s without a 202"
    )


@pytest.fixture
def moving_cluster() -> Iterator[LocalCluster]:
    need_tools("redis-server")
    with LocalCluster(masters=3, replicas=1) as running:
        yield running


@pytest.mark.slow
@pytest.mark.parametrize("min_replicas", ["0", "1"])
def test_the_slot_moving_to_another_master_while_accepting_and_delivering_loses_nothing(
    moving_cluster: LocalCluster, serve_factory: Any, sink: Sink, min_replicas: str
) -> None:
    """``redis-cli --cluster reshard`` of the slot of shard 0 (and of the keys that are not
    sharded: policy, warmup, webhooks), mid-run: scripts
    on keys half moved get ``TRYAGAIN`` or ``ASK`` (a 503 the client retries), the blocked
    ``XREADGROUP`` is released when the slot moves, and everything follows the new owner;
    with ``SLUICE_REDIS_MIN_REPLICAS`` too, whose script and WAIT go to the slot's master
    directly (``Script.then_wait``). No process dies, so nothing may be sent twice."""
    cluster = moving_cluster
    served = serve_factory(
        relay=sink.relay,
        extra_env=on_cluster(cluster, SLUICE_REDIS_MIN_REPLICAS=min_replicas),
    )
    source = owner_of(cluster, keys.JOBS)
    target = next(port for port in cluster.ports if port != source)
    client = Client(served)
    slot = key_slot(keys.JOBS.encode())  # shard 0's, and every key not sharded
    moved = client.around(lambda: cluster.migrate_slot(slot, source, target))
    assert moved > 0 and cluster.node(source).cluster("countkeysinslot", slot) == 0
    wanted = set(client.accepted.values())
    duplicates = duplicates_once_all_arrived(sink, wanted)
    print(
        f"slot move (min replicas {min_replicas}): {moved} keys moved; {len(wanted)} accepted, "
        f"all delivered; {duplicates} duplicates; {client.unavailable_seconds:.1f} s without a 202"
    )
    assert duplicates == 0
