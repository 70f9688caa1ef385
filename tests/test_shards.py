"""Sharded data (``core/shards.py``) on one real Redis: where keys go, a shard count fixed for
the life of the data, a batch over shards interrupted between two shards' scripts and
finished by the client's retry, concurrent requests with one key, cursors over shards. The
delivery path over eight shards runs in ``tests/test_inprocess_e2e.py``; over a real
cluster in ``tests/test_cluster*.py``."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from core import ids
from core.errors import ConfigurationError
from core.jobs import Job
from core.shards import Shards, tag_of
from core.store import BadCursor, Store, open_store
from core.store.events import decode_cursor, encode_cursor
from core.suppressions import bucket_of
from loadtests.harness import fixture_batch
from tests.conftest import fresh_store, make_settings
from tests.inprocess import Client, running_api

SHARDS = 8


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    async with fresh_store(redis_url, SHARDS) as opened:
        yield opened


def test_shard_tags_spread_evenly_over_the_masters_of_a_cluster() -> None:
    thirds = [0, 5461, 10923, REDIS_CLUSTER_HASH_SLOTS]  # what redis-cli gives three masters
    for count, expected in ((16, [6, 5, 5]), (64, [21, 21, 22]), (256, [85, 86, 85])):
        slots = [key_slot(f"x{{{shard.keys.tag}}}".encode()) for shard in Shards(count).all]
        per_master = [sum(lo <= s < hi for s in slots) for lo, hi in itertools.pairwise(thirds)]
        assert per_master == expected, count
        for shard, slot in zip(Shards(count).all, slots, strict=True):
            size = REDIS_CLUSTER_HASH_SLOTS // count
            assert shard.index * size <= slot < (shard.index + 1) * size
    assert tag_of(0, 16) == "sluice", "shard 0 keeps the tag of the data before sharding"
    with pytest.raises(ValueError, match="power of two"):
        Shards(12)


def test_a_recipients_records_share_one_slot() -> None:
    shards = Shards(64)
    for n in range(200):
        address = f"shopper{n}@inbox.example.org"
        shard = shards.of_address(address)
        message_id = ids.message_id("agrareeadmi5kof6mrqhemz3z4", n, shard.index)
        assert shards.of_message(message_id) == shard
        keys = [
            shards.bucket_key(address),
            shard.keys.cap("marketing:3:86400", address),
            shard.keys.message(message_id),
            shard.keys.jobs,
            shard.keys.events,
        ]
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
        assert shard == shards.of_bucket(bucket_of(address))
    assert shards.of_message("agrareeadmi5kof6mrqhemz3z4-1.64") is None, "no shard 64 of 64"


async def test_the_shard_count_is_fixed_for_the_life_of_the_data(redis_url: str) -> None:
    async with fresh_store(redis_url, 8):
        pass
    async with open_store(redis_url) as adopted:
        assert adopted.shards.count == 8, "a process not told the count reads it from Redis"
    with pytest.raises(ConfigurationError, match="SLUICE_SHARDS is 4, but this Redis holds"):
        async with open_store(redis_url, shards=4):
            pass


# --- a batch over shards, interrupted -------------------------------------------------------


async def post(api: Client, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
    answer = await api.post("/v1/messages", json=body, headers={"Idempotency-Key": key})
    return answer.status, await answer.json()


async def queued_per_recipient(store: Store) -> Counter[str]:
    """How many queue entries each recipient has, over every shard."""
    found: Counter[str] = Counter()
    for shard in store.shards.all:
        for _, fields in await store.redis.xrange(shard.keys.jobs, "-", "+"):
            found[Job.unpack(fields[b"j"]).email] += 1
    return found


async def test_a_gateway_stopped_between_shards_is_finished_by_the_retry_once_each(
    redis_url: str, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = fixture_batch(60)
    stopping = make_settings(tmp_path, test_pause_accept_after_shards=3)
    async with running_api(stopping, redis_url, port=0) as api:
        with caplog.at_level(logging.WARNING, logger="core.store.accepting"):
            request = asyncio.create_task(post(api, body, "cart-42"))
            while "accept paused after 3 shards" not in caplog.text:
                assert not request.done(), request
                await asyncio.sleep(0.01)
        request.cancel()  # the gateway dies here: its app is torn down with the request
    partial = await queued_per_recipient(store)
    assert 0 < len(partial) < 60, "some shards committed, others not"

    async with running_api(make_settings(tmp_path), redis_url, port=0) as api:
        status, answer = await post(api, body, "cart-42")
        assert status == 202, answer
        again, replayed = await post(api, body, "cart-42")
    assert again == 202 and replayed == answer, "a later retry replays the same answer"
    assert [r["status"] for r in answer["results"]] == ["queued"] * 60
    queued = await queued_per_recipient(store)
    assert sorted(queued) == sorted(r["email"] for r in body["recipients"])
    assert set(queued.values()) == {1}, "every recipient queued exactly once"
    ids = {r["message_id"].split("-")[0] for r in answer["results"]}
    assert len(ids) == 1, "the retry finished the batch the first request began"


async def test_concurrent_requests_with_one_key_queue_one_batch(
    redis_url: str, store: Store, tmp_path: Path
) -> None:
    body = fixture_batch(40)
    async with running_api(make_settings(tmp_path), redis_url, port=0) as api:
        answers = await asyncio.gather(*(post(api, body, "signup-7") for _ in range(4)))
    assert {status for status, _ in answers} == {202}
    assert all(answer == answers[0][1] for _, answer in answers)
    queued = await queued_per_recipient(store)
    assert len(queued) == 40 and set(queued.values()) == {1}


async def test_a_key_used_with_another_body_is_refused_before_anything_is_queued(
    redis_url: str, store: Store, tmp_path: Path
) -> None:
    async with running_api(make_settings(tmp_path), redis_url, port=0) as api:
        status, _ = await post(api, fixture_batch(10), "welcome-1")
        assert status == 202
        before = await store.gauges()
        status, answer = await post(api, fixture_batch(11), "welcome-1")
    assert (status, answer["field"]) == (422, "Idempotency-Key"), answer
    after = await store.gauges()
    assert (after.jobs, after.events) == (before.jobs, before.events)


# --- cursors over shards -----------------------------------------------------------------


positions = st.lists(
    st.one_of(
        st.none(),
        st.tuples(st.integers(0, 2**48), st.integers(0, 2**64 - 1)).map(lambda p: f"{p[0]}-{p[1]}"),
    ),
    min_size=SHARDS,
    max_size=SHARDS,
)


@given(positions)
def test_a_cursor_names_every_shards_position(given_positions: list[str | None]) -> None:
    cursor = encode_cursor(given_positions)
    assert decode_cursor(cursor, SHARDS) == given_positions
    assert cursor.isascii() and "&" not in cursor and "=" not in cursor


async def test_events_are_paged_over_shards_each_once(
    redis_url: str, store: Store, tmp_path: Path
) -> None:
    async with running_api(make_settings(tmp_path), redis_url, port=0) as api:
        status, _ = await post(api, fixture_batch(100), "events-1")
        assert status == 202
        seen: list[str] = []
        cursor = None
        while True:
            query = {"limit": "7", **({"after": cursor} if cursor else {})}
            page = await (await api.get("/v1/events", params=query)).json()
            if not page["events"]:
                assert page["next"] == cursor
                break
            seen += [e["message_id"] for e in page["events"]]
            cursor = page["next"]
        assert len(seen) == len(set(seen)) == 100
        # a plain stream id, kept from before sharding, means that id in every shard
        first = (await (await api.get("/v1/events", params={"limit": "1"})).json())["events"][0]
        plain = first["id"].split(".")[0]
        after_plain = await (await api.get("/v1/events", params={"after": plain})).json()
        assert first["message_id"] not in [e["message_id"] for e in after_plain["events"]]
        for bad in ("v1.1.2", "v2.0" + "." * SHARDS, "1-2-3", "v1.x" + ".0-0" * SHARDS):
            answer = await api.get("/v1/events", params={"after": bad})
            assert answer.status == 400, bad
    with pytest.raises(BadCursor):
        decode_cursor("v1.0" + ".0-0" * (SHARDS - 1), SHARDS)


async def test_the_suppressions_stopping_a_read_are_looked_up_together_over_shards(
    store: Store,
) -> None:
    """A worker looks up the jobs of one read in one call per shard: each answer is the one
    asked of that address alone (global before category; an unsubscribe does not stop
    transactional mail), whatever shard each address lives in."""
    suppressions = store.suppressions
    addresses = [f"user{i}@inbox.test" for i in range(120)]
    assert len({store.shards.of_address(a) for a in addresses}) == SHARDS
    await suppressions.add_many(
        [(a, None, "hard_bounce", "test") for a in addresses[0:120:7]]
        + [(a, None, "unsubscribe", "test") for a in addresses[1:120:7]]
        + [(a, "promo", "unsubscribe", "test") for a in addresses[2:120:7]]
        + [(a, "promo", "manual", "test") for a in addresses[3:120:7]]
    )
    checks = [
        (address.upper() if i % 5 == 0 else address, category, transactional)
        for i, address in enumerate(addresses)
        for category, transactional in ((None, False), ("promo", False), ("promo", True))
    ]
    together = await suppressions.check_many(checks)
    alone = [await suppressions.check(a, c, transactional=t) for a, c, t in checks]
    assert together == alone
    reasons = Counter(found.reason if found else None for found in together)
    assert reasons == {
        None: 120 * 3 - 18 * 3 - 17 * 2 - 17 * 1 - 17 * 2,
        "hard_bounce": 18 * 3,
        "unsubscribe": 17 * 2 + 17 * 1,
        "manual": 17 * 2,
    }
    assert await suppressions.check_many([]) == []
