"""Accepting a batch: one atomic script per shard its recipients live in, idempotency keys
that hold across shards, and the replicas' confirmation (``SLUICE_REDIS_MIN_REPLICAS``).

A deployment of one shard runs one ``accept.lua`` per batch, with its idempotency record:
the whole batch is atomic. With several shards a batch is split by recipient shard
(``core.shards``) and each part is one ``accept.lua`` on its shard, run concurrently; what
holds it together:

1. With an ``Idempotency-Key``, the *intent* is written first in the key's home shard
   (``intent.lua``): digest, batch id, the first answer, and the shard of each accepted
   recipient. A key used with another body is refused there, before anything is queued.
2. The batch content goes to the batch's home shard before any job can need it.
3. Each shard's script keeps its own answer under the key (``accept.lua``'s record) and
   replays it when run again. A gateway that dies between shards leaves an intent and the
   answers of the shards that committed; the client's retry with the same key finds the
   intent, prepares the same batch id again (``Unfinished``) and runs every shard: those
   that committed replay, the others queue. Each recipient is queued exactly once.

Without a key, a batch interrupted between shards is partly queued and the client cannot
learn which part: as with any lost answer, a client must send a key to retry safely.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from core.jobs import AcceptEntry, BatchContent, PolicyInput
from core.shards import Shard, Shards
from core.store.base import (
    EVENTS_MAXLEN,
    REDIS_ERRORS,
    RETENTION_SECONDS,
    Arg,
    Client,
    Script,
    StoreError,
    lines,
    text,
)

log = logging.getLogger(__name__)

IDEMPOTENCY_SECONDS = 86400  # how long an Idempotency-Key's answer is kept
REPLICA_WAIT_MS = 2000  # how long accept waits for SLUICE_REDIS_MIN_REPLICAS replicas
QUIET_HOURS_MARGIN = 86400  # quiet hours move a due time by less than a day


@dataclass(frozen=True)
class Accepted:
    replay: bool  # True: the Idempotency-Key was seen before; response is the first answer
    digest: str  # the digest stored with the first answer
    response: str  # the answer without the policy outcomes
    outcomes: list[str]  # per accepted recipient, what the contact policy decided


@dataclass(frozen=True)
class Unfinished:
    """An Idempotency-Key whose batch spans shards and was not queued on all of them (the
    gateway died between shards): the request is to be prepared again with ``batch_id`` and
    accepted, which finishes it."""

    batch_id: str
    digest: str


class OtherBatch(StoreError):
    """Another request with the same Idempotency-Key (and body) started ``batch_id`` first:
    this one must be prepared again with that batch id (``Unfinished``)."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"the key's batch is {batch_id}")
        self.batch_id = batch_id


class ReplicasBehind(StoreError):
    """An accepted batch is on the master but not yet on enough replicas: a failover now
    could lose it, so the caller must not answer 202. Its outcome is unknown to the client,
    which settles it by retrying with the same ``Idempotency-Key``; ``batch_id``: the batch,
    when it was just queued (None: a replay of an earlier one)."""

    def __init__(self, message: str, batch_id: str | None = None) -> None:
        super().__init__(message)
        self.batch_id = batch_id


def retention_for(entries: Sequence[AcceptEntry], now: float) -> int:
    """How long a batch's content and message records are kept: ``RETENTION_SECONDS`` after
    its last recipient is due (``send_at`` may be 30 days ahead; quiet hours and their ramp
    move a due time further), so a scheduled job still finds its content, and retries and
    status lookups theirs."""
    latest = max((e.due + e.ramp_offset for e in entries if e.due), default=0.0)
    if latest <= now:
        return RETENTION_SECONDS
    return RETENTION_SECONDS + math.ceil(latest - now) + QUIET_HOURS_MARGIN


class Acceptor:
    """``Store.accept`` and ``Store.idempotent_response``."""

    def __init__(self, client: Client, shards: Shards, min_replicas: int) -> None:
        self.shards = shards
        self.min_replicas = min_replicas
        self._accept = Script(client, "accept.lua")
        self._confirm = Script(client, "confirm.lua")
        self._intent = Script(client, "intent.lua")
        self._put = Script(client, "put.lua")
        self.redis = client
        # A test hook (SLUICE_TEST_PAUSE_ACCEPT_AFTER_SHARDS): run the shards of a batch one
        # after another and stop for good after this many, so a test can kill the gateway
        # between two shards' scripts.
        self.pause_after_shards: int | None = None

    async def accept(
        self,
        *,
        batch_id: str,
        content: BatchContent,
        entries: Sequence[AcceptEntry],
        policy: PolicyInput,
        response: str,
        idempotency_key: str | None,
        digest: str,
        now: float | None = None,
    ) -> Accepted:
        """Queue a batch: content, and per recipient the contact policy's decision, its
        record, event and queue entry; one atomic script per shard. ``now`` defaults to the
        clock (tests pass their own). ``OtherBatch``: another request with this key started
        the batch, prepare it again with that batch id."""
        clock = time.time() if now is None else now
        retention = retention_for(entries, clock)
        tally = _Tally(self.min_replicas)
        if self.shards.count == 1:
            whole = _Part(self.shards.all[0], list(entries))
            key, packed = idempotency_key, content.pack()
            answer = await self._run_part(
                whole, batch_id, packed, policy, response, key, digest, clock, retention, tally
            )
            tally.check(None if answer.replay else batch_id)
            return answer
        placed = [self._shard_of(entry.message_id) for entry in entries]
        parts: dict[int, _Part] = {}
        for shard, entry in zip(placed, entries, strict=True):
            parts.setdefault(shard.index, _Part(shard, [])).entries.append(entry)
        earlier = None
        if idempotency_key:
            order = bytes(shard.index for shard in placed)
            earlier = await self._write_intent(
                idempotency_key, digest, response, batch_id, order, tally
            )
            if earlier is not None:
                if earlier.digest != digest:
                    return Accepted(True, earlier.digest, "", [])
                if earlier.batch_id != batch_id:
                    raise OtherBatch(earlier.batch_id)
        content_key = self.shards.home(batch_id).keys.batch(batch_id)
        await self._call(self._put, [content_key], [content.pack(), retention], tally)
        results = await self._run_parts(
            list(parts.values()), batch_id, policy, idempotency_key, digest, clock, retention, tally
        )
        # every shard is written: only now may too few replicas stop the 202 (a submission
        # answers 250 then, and its mail must be queued)
        tally.check(batch_id)
        outcomes = {part.shard.index: iter(result.outcomes) for part, result in results}
        merged = [next(outcomes[shard.index]) for shard in placed]
        return Accepted(earlier is not None, digest, response, merged)

    def _shard_of(self, message_id: str) -> Shard:
        shard = self.shards.of_message(message_id)
        if shard is None:
            raise StoreError(f"message id {message_id} names no shard of this deployment")
        return shard

    async def _run_parts(
        self,
        parts: list[_Part],
        batch_id: str,
        policy: PolicyInput,
        idempotency_key: str | None,
        digest: str,
        clock: float,
        retention: int,
        tally: _Tally,
    ) -> list[tuple[_Part, Accepted]]:
        """Every shard's script, concurrently; the first failure is raised once all ended."""

        async def run(part: _Part) -> Accepted:
            return await self._run_part(
                part, batch_id, "", policy, "", idempotency_key, digest, clock, retention, tally
            )

        if self.pause_after_shards is not None:
            done = []
            for n, part in enumerate(parts):
                if n == self.pause_after_shards:
                    log.warning("test hook: accept paused after %d shards of batch %s", n, batch_id)
                    await asyncio.Event().wait()
                done.append((part, await run(part)))
            return done
        results = await asyncio.gather(*(run(part) for part in parts), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(zip(parts, results, strict=True))  # type: ignore[arg-type]

    async def _run_part(
        self,
        part: _Part,
        batch_id: str,
        content: bytes | str,
        policy: PolicyInput,
        response: str,
        idempotency_key: str | None,
        digest: str,
        clock: float,
        retention: int,
        tally: _Tally,
    ) -> Accepted:
        """One ``accept.lua`` call for the recipients of one shard."""
        shard = part.shard.keys
        touched = [
            shard.jobs,
            shard.delayed,
            shard.events,
            shard.stats,
            shard.batch(batch_id),
            shard.pending,
        ]
        if idempotency_key:
            touched.append(shard.idempotency(idempotency_key))
        # each recipient's keys, in its order: message record, suppression bucket, cap counts
        rules = policy.rules
        bucket_key = self.shards.bucket_key
        for entry in part.entries:
            touched += (shard.message(entry.message_id), bucket_key(entry.suppression_field))
            if rules:
                contact = entry.contact or ""
                touched += [shard.cap(rule.key, contact) for rule in rules]
        args: list[Arg] = [
            content,
            retention,
            digest,
            response,
            # each entry as an array (positions: accept.lua's header); Lua has no bin type
            msgpack.packb(part.entries, use_bin_type=False),
            EVENTS_MAXLEN,
            f"{clock:.3f}",
            policy.pack(),
            "1" if idempotency_key else "0",
            "1" if self.min_replicas else "0",
        ]
        result = await self._call(self._accept, touched, args, tally)
        if text(result[0]) == "replay":
            return Accepted(True, text(result[1]), text(result[2]), lines(result[3]))
        return Accepted(False, digest, response, lines(result[1]))

    async def _write_intent(
        self, key: str, digest: str, response: str, batch_id: str, order: bytes, tally: _Tally
    ) -> Unfinished | None:
        """Write the intent of a batch over shards; the earlier one if there is one."""
        record = self.shards.home(key).keys.intent(key)
        args: list[Arg] = [digest, response, batch_id, order, IDEMPOTENCY_SECONDS]
        found = await self._call(self._intent, [record], args, tally)
        return None if not found else Unfinished(text(found[1]), text(found[0]))

    async def _call(
        self, script: Script, keys: Sequence[str], args: Sequence[Arg], tally: _Tally
    ) -> Any:
        """A script of the accept path; with ``min_replicas``, followed by WAIT on its
        connection, how many replicas confirmed its writes counted in ``tally``."""
        try:
            if not self.min_replicas:
                return await script(keys, args)
            result, acked = await script.then_wait(keys, args, self.min_replicas, REPLICA_WAIT_MS)
        except REDIS_ERRORS as exc:
            raise StoreError(f"could not queue the batch: {exc}") from exc
        tally.fewest = min(tally.fewest, acked)
        return result

    # --- replays ------------------------------------------------------------------------

    async def idempotent_response(self, key: str) -> Accepted | Unfinished | None:
        """The first answer to an earlier request with this key, if any; ``Unfinished`` when
        its batch spans shards and some did not commit. With ``min_replicas``, an answer only
        once that many replicas hold what it answers for (else ``ReplicasBehind``: after a
        failover, the new master may have none yet), read and counted by ``confirm.lua`` in
        the call its WAIT follows."""
        if self.shards.count == 1:
            found = await self._read(
                self.shards.all[0].keys.idempotency(key), ("digest", "response", "outcomes")
            )
            if found is None:
                return None
            digest, response, outcomes = found
            return Accepted(True, text(digest), text(response), lines(outcomes))
        intent = await self._read(
            self.shards.home(key).keys.intent(key), ("digest", "response", "batch", "order")
        )
        if intent is None:
            return None
        digest, response, batch_id = (text(value) for value in intent[:3])
        order = bytes(intent[3] or b"")
        shards = [self.shards.all[i] for i in sorted(set(order)) if i < self.shards.count]
        answers = await asyncio.gather(
            *(self._read(shard.keys.idempotency(key), ("digest", "outcomes")) for shard in shards)
        )
        if any(answer is None for answer in answers):
            return Unfinished(batch_id, digest)
        outcomes = {
            shard.index: iter(lines(answer[1]))
            for shard, answer in zip(shards, answers, strict=True)
            if answer is not None
        }
        try:
            merged = [next(outcomes[i]) for i in order]
        except (KeyError, StopIteration):
            raise StoreError(f"the answers kept for batch {batch_id} do not match it") from None
        return Accepted(True, digest, response, merged)

    async def _read(self, record: str, fields: tuple[str, ...]) -> list[Any] | None:
        """Fields of an idempotency record or intent; None if there is none (or it lacks the
        first field). With ``min_replicas``, confirmed as ``idempotent_response`` says."""
        acked = self.min_replicas
        try:
            if self.min_replicas:
                found, acked = await self._confirm.then_wait(
                    [record], list(fields), self.min_replicas, REPLICA_WAIT_MS
                )
            else:
                found = await self.redis.hmget(record, list(fields))
        except REDIS_ERRORS as exc:
            raise StoreError(f"could not confirm the earlier answer: {exc}") from exc
        if not found or any(value is None for value in found[:2]):
            return None
        if acked < self.min_replicas:
            raise ReplicasBehind(
                f"the answer for this key is on the master, but {acked} of "
                f"{self.min_replicas} replicas confirmed it within {REPLICA_WAIT_MS} ms"
            )
        return list(found)


@dataclass
class _Tally:
    """The fewest replicas that confirmed any write of one accept, against those wanted."""

    wanted: int
    fewest: int = 1 << 30

    def check(self, batch_id: str | None) -> None:
        """``ReplicasBehind`` if a write was confirmed by fewer replicas than wanted."""
        if self.wanted and self.fewest < self.wanted:
            raise ReplicasBehind(
                f"{f'batch {batch_id}' if batch_id else 'the batch'} is on the master, but "
                f"{self.fewest} of {self.wanted} "
                f"replicas confirmed it within {REPLICA_WAIT_MS} ms",
                batch_id,
            )


@dataclass
class _Part:
    """The recipients of a batch that live in one shard, in the batch's order."""

    shard: Shard
    entries: list[AcceptEntry]
