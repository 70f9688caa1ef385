"""``SLUICE_REDIS_MIN_REPLICAS``: no 202 before enough replicas hold the batch.

Against a real master and replica (``loadtests/redis_cluster.Replicated``). A replica that
stops answering (SIGSTOP) makes accept answer 503 with ``Retry-After`` after its 2 s wait:
the batch is on the master, but a failover now could lose it, so Sluice must not say it
is safe. The client's retry with the same ``Idempotency-Key`` settles it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import keys
from loadtests.harness import fixture_batch
from loadtests.redis_cluster import Replicated
from tests.conftest import make_settings, need_tools
from tests.inprocess import running_api

# Each starts redis-server processes of its own: the full lane's.
pytestmark = pytest.mark.slow


@pytest.fixture
def replicated() -> Iterator[Replicated]:
    need_tools("redis-server")
    with Replicated() as running:
        yield running


async def test_no_202_until_a_replica_holds_the_batch(
    replicated: Replicated, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, redis_min_replicas=1)
    replica = replicated.node(replicated.replica_port)
    async with running_api(settings, replicated.master_url, port=0) as api:
        answer = await api.post(
            "/v1/messages", json=fixture_batch(3), headers={"Idempotency-Key": "first"}
        )
        assert answer.status == 202, await answer.text()
        ids = [r["message_id"] for r in (await answer.json())["results"]]
        # the replica had every record before the 202 was written
        assert all(replica.exists(keys.message(i)) for i in ids)

        os.kill(replicated.replica_process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            behind = await api.post(
                "/v1/messages",
                json=fixture_batch(3, start=3),
                headers={"Idempotency-Key": "second"},
            )
            waited = time.monotonic() - started
            assert behind.status == 503, await behind.text()
            assert behind.headers["Retry-After"] == "1"
            refusal = await behind.json()
            assert "retry with the same Idempotency-Key" in refusal["detail"]
            assert refusal["batch_id"]
            assert waited >= 1.9, "it waited for the replica"
            # nor is its replay a 202 while the replica is behind
            replayed = await api.post(
                "/v1/messages",
                json=fixture_batch(3, start=3),
                headers={"Idempotency-Key": "second"},
            )
            assert replayed.status == 503, await replayed.text()
        finally:
            os.kill(replicated.replica_process.pid, signal.SIGCONT)

        # the retry with the same key finds the batch queued and, once replicated, says so
        retried = await api.post(
            "/v1/messages", json=fixture_batch(3, start=3), headers={"Idempotency-Key": "second"}
        )
        assert retried.status == 202, await retried.text()
        results = (await retried.json())["results"]
        assert [r["status"] for r in results] == ["queued"] * 3
        assert all(replica.exists(keys.message(r["message_id"])) for r in results)


async def test_more_replicas_asked_for_than_exist_is_never_a_202(
    replicated: Replicated, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, redis_min_replicas=2)
    async with running_api(settings, replicated.master_url, port=0) as api:
        assert "has 1 replicas connected" in caplog.text, "said at start"
        answer = await api.post("/v1/messages", json=fixture_batch(1))
        assert answer.status == 503, await answer.text()
        # without a key a retry would send it twice: the answer says so, and names the batch
        refusal = await answer.json()
        assert "twice" in refusal["detail"]
        message_id = f"{refusal['batch_id']}-0"
        assert (await api.get(f"/v1/messages/{message_id}")).status == 200, "it is queued"
