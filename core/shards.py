"""Logical shards: how Sluice's data spreads over the masters of a Redis Cluster.

A deployment has a fixed number of shards (``SLUICE_SHARDS``, a power of two, written to
Redis at the first start and refused if it changes later: a different count would move
every contact). Each shard's keys share one hash tag (``core.keys.ShardKeys``), chosen so
the tags spread evenly over the slot space: shard i's tag is the first ``s<i>.<n>`` whose
slot falls in the i-th 1/N of the 16,384 slots, so N shards spread over masters that own
even ranges (plain ``{q0}..{q15}`` land 4/4/8 on three masters). Shard 0's tag is
``sluice``, the one tag of a deployment of one shard, so data written before sharding stays
where it is.

What lives together: a recipient's shard follows the suppression bucket of its address
(``core.suppressions.bucket_of``, a CRC32 of the lower-cased address), bucket * N // 65,536,
so its suppression entry, cap windows, message record, queue entries and events share one
slot and each accept, completion, engagement or report stays one atomic script. A message
id names its shard (``core.ids``). A batch's content and link table live in the batch's
home shard (a CRC32 of the batch id); an Idempotency-Key's intent in the key's.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from core import ids
from core.keys import SHARD0, TAG, ShardKeys
from core.suppressions import BUCKETS, bucket_of, canonical

MAX_SHARDS = 256  # a message id's suffix has three digits at most


@dataclass(frozen=True)
class Shard:
    index: int
    keys: ShardKeys = field(compare=False)


def valid_count(count: int) -> bool:
    return 1 <= count <= MAX_SHARDS and count & (count - 1) == 0


def tag_of(index: int, count: int) -> str:
    """Shard ``index``'s hash tag among ``count``: ``sluice`` for shard 0, else the first
    ``s<index>.<n>`` whose slot is in the shard's share of the slot space."""
    if index == 0:
        return TAG
    low = index * REDIS_CLUSTER_HASH_SLOTS // count
    high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // count
    n = 0
    while not low <= key_slot(f"s{index}.{n}".encode()) < high:
        n += 1
    return f"s{index}.{n}"


class Shards:
    """The shards of a deployment, and which one a recipient, message, batch or key is in."""

    def __init__(self, count: int = 1) -> None:
        if not valid_count(count):
            raise ValueError(f"a shard count is a power of two up to {MAX_SHARDS}, not {count}")
        self.count = count
        self.all = tuple(
            Shard(i, SHARD0 if i == 0 else ShardKeys(tag_of(i, count))) for i in range(count)
        )

    def __repr__(self) -> str:
        return f"Shards({self.count})"

    def of_bucket(self, bucket: int) -> Shard:
        return self.all[bucket * self.count // BUCKETS]

    def of_address(self, address: str) -> Shard:
        """The shard of a recipient: where its suppression entry lives."""
        if self.count == 1:
            return self.all[0]
        return self.of_bucket(bucket_of(canonical(address)))

    def bucket_key(self, address: str) -> str:
        """The suppression hash of an address already in canonical form."""
        bucket = bucket_of(address)
        return self.of_bucket(bucket).keys.suppression_bucket(bucket)

    def of_message(self, message_id: str) -> Shard | None:
        """The shard a message id names; None if it is not a message id of this deployment."""
        index = ids.shard_of(message_id)
        if index is None or index >= self.count:
            return None
        return self.all[index]

    def home(self, name: str) -> Shard:
        """The shard of a batch's content and link table (``name``: the batch id), or of an
        Idempotency-Key's intent (its digest)."""
        if self.count == 1:
            return self.all[0]
        return self.all[zlib.crc32(name.encode()) & (self.count - 1)]
