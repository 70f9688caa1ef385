"""``Store``: batches accepted, the jobs streams and delayed sets, message records, link
tables, events, inbound reports, destinations and counters; and ``open_store``, the
connection pool.

Every per-message call goes to the shard the message id names (``core.shards``); a call
about several messages is cut into one call per shard; the worker's reads, promotions and
reclaims go over every shard; counters are summed over shards when read."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import hiredis
import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from core import ids, keys
from core.errors import ConfigurationError
from core.events import CONTEXT_FIELDS
from core.jobs import BatchContent, Job, QueuedJob
from core.shards import Shard, Shards, valid_count
from core.store.accepting import Acceptor
from core.store.base import (
    EVENTS_MAXLEN,
    REDIS_ERRORS,
    RETENTION_SECONDS,
    Arg,
    Client,
    Script,
    StoreError,
    text,
)
from core.store.control import ControlStore
from core.store.events import EventLog, event_id
from core.store.queue import QueueStore
from core.store.rollups import RollupStore
from core.store.sandbox import SandboxStore
from core.store.suppressions import Suppressions
from core.store.warmup import WarmupStore
from core.store.webhooks import WebhookStore
from core.suppressions import SoftBounceLimit, canonical, pack_entry, soft_bounce_source
from core.suppressions import field as suppression_field

UNVERIFIED_KEPT = 1000  # unverified inbound reports kept to look at; the counter counts them all
MAX_CLAIMED_CHARS = 200  # a quoted Message-ID is short; a longer one is cut before storing

log = logging.getLogger(__name__)


ReportKind = Literal["complained", "bounced"]
# message record field per kind: when the first report of that kind was recorded
_REPORT_FLAGS: dict[str, str] = {"complained": "rc", "bounced": "rb"}


@dataclass(frozen=True)
class FirstReport:
    """The first report of its kind about a message, recorded: its event id, and the warming IP
    and provider that sent the message (``None`` when a warm IP did)."""

    event_id: str
    ip: str | None
    provider: str | None


@dataclass(frozen=True)
class UnverifiedReport:
    """An inbound report that named no message Sluice signed, so changed nothing."""

    kind: str  # what the parser read: arf, dsn, autoreply, delivered, unknown
    claimed: str  # the Message-ID the report quotes ("" for none)
    peer: str  # the address that sent it
    at: float
    reason: str  # unsigned, bad signature, no Message-ID, not ours, unknown message


class Outcome(NamedTuple):
    """One delivery attempt's result, to record (``Store.complete_many``)."""

    entry_id: str  # its queue entry ("" when the job did not come from the stream)
    message_id: str
    status: str  # the message's new status ("" keeps it: an event only)
    event: bytes  # packed (``core.events.pack_event``)
    retry_job: Job | None = None  # a deferral: the job to try again at ``retry_at``
    retry_at: float = 0.0
    domain: str = ""  # the message became final: drop its domain's pending count
    recipient: str = ""  # its address: a delivery resets the address's run of soft bounces
    # the message ended soft-bounced: the ``suppressed`` event its address gets should this
    # reach the soft-bounce limit (b"": it did not)
    soft_bounced: bytes = b""
    # a hard bounce: its address is suppressed (``hard_bounce``) in the same script call, so
    # a kill between the two cannot leave one without the other
    hard_bounced: bool = False


@dataclass(frozen=True)
class QueueGauges:
    """What ``/metrics`` reads from Redis at each scrape."""

    jobs: int  # entries in the jobs stream: ready or in flight
    delayed: int  # jobs waiting for their send_at or a retry
    events: dict[str, int]  # events recorded by every process since the data began, by type
    totals: dict[str, int]  # the rollups' counters since the data began (core.rollups.SERIES)
    # (state, provider) -> (messages, oldest age in seconds): what waits (gateway/queues.py)
    waiting: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    alerts_firing: dict[str, int] = field(default_factory=dict)  # rule -> alerts firing
    # (ip, provider) -> (today's budget, sent today) of the warming IPs
    warmup: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


# The cluster client's connections per node and process: it raises instead of waiting
# for a free one, so it must exceed what a worker (SLUICE_CONCURRENCY_PER_WORKER, 200 by
# default) or an API process can have in flight at once.
CLUSTER_CONNECTIONS = 1000


# what the scripts recording an outcome use (core/lua/lib/): the timeline, the soft-bounce run
OUTCOME_LIBRARIES = ("timeline.lua", "soft_bounces.lua")


class Store:
    """The queue, messages and events; ``suppressions``, ``webhooks`` and ``warmup`` are the
    other parts of the layer, on the same connection pool."""

    def __init__(
        self, client: Client, *, shards: Shards | None = None, min_replicas: int = 0
    ) -> None:
        """``shards``: the deployment's (``open_store`` reads them from Redis; one by default).
        ``min_replicas``: replicas that must have an accepted batch before ``accept`` returns
        (``WAIT``); fewer within ``REPLICA_WAIT_MS`` is a ``ReplicasBehind``."""
        self.redis = client
        self.shards = shards or Shards(1)
        self.min_replicas = min_replicas
        self.acceptor = Acceptor(client, self.shards, min_replicas)
        # queue a batch, and the first answer to an Idempotency-Key (core/store/accepting.py)
        self.accept = self.acceptor.accept
        self.idempotent_response = self.acceptor.idempotent_response
        self.events = EventLog(client, self.shards)
        self._complete = Script(client, "complete.lua", libraries=OUTCOME_LIBRARIES)
        self._promote = Script(client, "promote.lua")
        self._engage = Script(client, "engage.lua")
        self._report = Script(client, "report.lua", libraries=OUTCOME_LIBRARIES)
        self.suppressions = Suppressions(client, self.shards)
        self.rollups = RollupStore(client, self.shards)
        self.control = ControlStore(client, self.shards)
        self.queue = QueueStore(client, self.shards)
        self.sandbox = SandboxStore(client)
        self.webhooks = WebhookStore(client)
        self.warmup = WarmupStore(client)

    async def ping(self) -> None:
        await self.redis.ping()

    async def connected_replicas(self) -> int:
        """Replicas connected to a master that holds a shard, the fewest of them (``INFO
        replication``)."""
        if not isinstance(self.redis, RedisCluster):
            info: Any = await self.redis.info("replication")
            return int(info.get("connected_slaves", 0))
        nodes = {}
        for shard in self.shards.all:
            node = self.redis.get_node_from_key(shard.keys.jobs)
            if node is not None:
                nodes[node.name] = node
        counts = []
        for node in nodes.values():
            info = await self.redis.info("replication", target_nodes=node)
            counts.append(int(info.get("connected_slaves", 0)))
        return min(counts, default=0)

    def shard_of(self, message_id: str) -> Shard:
        """The shard a message id names; shard 0 for a string that is no message id (nothing
        of it is stored anywhere else); ``StoreError`` for a shard this deployment has not."""
        if self.shards.count == 1:
            return self.shards.all[0]
        index = ids.shard_of(message_id)
        if index is None:
            return self.shards.all[0]
        if index >= self.shards.count:
            raise StoreError(f"message id {message_id!r} names no shard of this deployment")
        return self.shards.all[index]

    def _by_shard(self, message_ids: Sequence[str]) -> dict[Shard, list[int]]:
        """The positions of ``message_ids`` per shard, in order."""
        groups: dict[Shard, list[int]] = {}
        for position, message_id in enumerate(message_ids):
            groups.setdefault(self.shard_of(message_id), []).append(position)
        return groups

    # --- accept side --------------------------------------------------------

    async def policy(self) -> bytes | None:
        blob: Any = await self.redis.get(keys.POLICY)
        return None if blob is None else bytes(blob)

    async def set_policy(self, document: str) -> None:
        await self.redis.set(keys.POLICY, document)

    async def capped_many(
        self, asked: Sequence[tuple[str, str, str, float]], now: float
    ) -> list[int]:
        """How many messages each cap rule counts for a contact (whose mail goes to the
        address) in the window ending ``now``, for each (rule key, contact, address, window),
        in one round trip: an early answer (SMTP submission, the sandbox); ``accept.lua``
        decides."""
        if not asked:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for rule_key, contact, address, window in asked:
                key = self.shards.of_address(address).keys.cap(rule_key, contact)
                pipe.zcount(key, f"({now - window}", now)
            return [int(n) for n in await pipe.execute()]

    # --- delivery side ------------------------------------------------------

    async def ensure_group(self) -> None:
        for shard in self.shards.all:
            try:
                await self.redis.xgroup_create(
                    shard.keys.jobs, keys.DELIVERY_GROUP, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read_jobs(
        self, consumer: str, *, count: int, block_ms: int | None, own_pending: bool = False
    ) -> list[QueuedJob]:
        """New jobs for this consumer, or (own_pending) the ones it read and never acknowledged.
        ``block_ms``: how long to wait for a new job (``None``: answer at once). Over several
        shards, every shard is read in one pipeline without blocking (a blocking read waits
        on one slot only) and an empty round is tried again after a pause that grows from
        2 to 100 ms, up to ``block_ms``."""
        if self.shards.count == 1:
            reply: Any = await self.redis.xreadgroup(
                keys.DELIVERY_GROUP,
                consumer,
                {keys.JOBS: "0" if own_pending else ">"},
                count=count,
                block=None if own_pending else block_ms,
            )
            return [job for _, entries in reply or [] for job in self._decode_entries(entries)]
        each = -(-count // self.shards.count)  # a share of count per shard, rounded up
        deadline = time.monotonic() + (block_ms or 0) / 1000
        pause = 0.002
        while True:
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard in self.shards.all:
                    pipe.xreadgroup(
                        keys.DELIVERY_GROUP,
                        consumer,
                        {shard.keys.jobs: "0" if own_pending else ">"},
                        count=count if own_pending else each,
                    )
                replies = await pipe.execute()
            jobs = [
                job
                for reply in replies
                for _, entries in reply or []
                for job in self._decode_entries(entries)
            ]
            if jobs or own_pending or time.monotonic() + pause > deadline:
                return jobs
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def claim_stale(self, consumer: str, *, min_idle_ms: int, count: int) -> list[QueuedJob]:
        """Take over jobs another (dead) consumer read but never finished, on every shard."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards.all:
                pipe.xautoclaim(
                    shard.keys.jobs,
                    keys.DELIVERY_GROUP,
                    consumer,
                    min_idle_time=min_idle_ms,
                    count=count,
                )
            replies = await pipe.execute()
        return [job for reply in replies for job in self._decode_entries(reply[1])]

    @staticmethod
    def _decode_entries(entries: list[Any]) -> list[QueuedJob]:
        jobs = []
        for entry_id, fields in entries:
            if not fields:  # deleted while pending
                continue
            jobs.append(QueuedJob(text(entry_id), Job.unpack(fields[b"j"])))
        return jobs

    async def acknowledge(self, jobs: Sequence[QueuedJob]) -> None:
        """Take queue entries out of their streams without recording anything (their jobs
        were finished before: a recovered job whose message is already final)."""
        if not jobs:
            return
        groups = self._by_shard([q.job.message_id for q in jobs])
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard, positions in groups.items():
                entry_ids = [jobs[p].entry_id for p in positions]
                pipe.xack(shard.keys.jobs, keys.DELIVERY_GROUP, *entry_ids)
                pipe.xdel(shard.keys.jobs, *entry_ids)
            await pipe.execute()

    async def complete(self, outcome: Outcome, *, now: float | None = None) -> None:
        """Record one outcome (``complete_many`` of one)."""
        await self.complete_many([outcome], now=now)

    async def complete_many(
        self,
        outcomes: Sequence[Outcome],
        *,
        now: float | None = None,
        soft_bounce: SoftBounceLimit | None = None,
    ) -> None:
        """Record a group of outcomes in one atomic script call per shard
        (``core/lua/complete.lua``), at ``now`` (default: the clock). With ``soft_bounce``, a
        delivery resets its address's run of soft bounces and a soft-bounced message extends
        it, suppressing the address at the limit (without: runs are only reset)."""
        at = time.time() if now is None else now
        groups = self._by_shard([outcome.message_id for outcome in outcomes])
        if len(groups) == 1:
            [shard] = groups
            await self._complete_shard(shard, outcomes, at, soft_bounce)
            return
        await asyncio.gather(
            *(
                self._complete_shard(shard, [outcomes[p] for p in positions], at, soft_bounce)
                for shard, positions in groups.items()
            )
        )

    async def _complete_shard(
        self,
        shard: Shard,
        outcomes: Sequence[Outcome],
        now: float,
        limit: SoftBounceLimit | None,
    ) -> None:
        where = shard.keys
        touched = [
            where.jobs,
            where.delayed,
            where.events,
            where.stats,
            where.pending,
            where.suppression_count,
        ]
        counting = limit is not None and limit.enabled
        args: list[Arg] = [
            keys.DELIVERY_GROUP,
            EVENTS_MAXLEN,
            f"{now:.3f}",
            RETENTION_SECONDS,
            limit.messages if limit is not None and counting else 0,
            limit.seconds if limit is not None else 0,
            limit.forget_seconds if limit is not None else 0,
        ]
        elsewhere: list[Outcome] = []  # hard bounces to an address of another shard
        for outcome in outcomes:
            touched.append(where.message(outcome.message_id))
            retry = outcome.retry_job
            args += (
                outcome.entry_id,
                outcome.status,
                outcome.event,
                retry.pack() if retry is not None else "",
                f"{outcome.retry_at:.3f}",
                outcome.domain,
            )
            address = canonical(outcome.recipient)
            message_id = outcome.message_id
            # a message's recipient lives in the message's shard (a message id names it)
            if not address or self.shards.of_address(address) != shard:
                args += ("", message_id, "", "", "")
                if outcome.hard_bounced:
                    elsewhere.append(outcome)
            elif outcome.hard_bounced:
                entry = pack_entry("hard_bounce", now, f"bounce:{message_id}")
                touched.append(self.shards.bucket_key(address))
                args += ("hard", message_id, suppression_field(address), entry, "")
            elif outcome.status == "delivered":
                touched.append(where.soft_bounces(address))
                args += ("delivered", message_id, "", "", "")
            elif outcome.soft_bounced and counting:
                bucket, entry_field, entry = self._limit_entry(address, message_id, now)
                touched += (where.soft_bounces(address), bucket)
                args += ("count", message_id, entry_field, entry, outcome.soft_bounced)
            else:
                args += ("", message_id, "", "", "")
        await self._complete(touched, args)
        if elsewhere:  # not expected (a message id names its recipient's shard)
            await self.suppressions.add_many(
                [(o.recipient, None, "hard_bounce", f"bounce:{o.message_id}") for o in elsewhere],
                at=now,
            )

    def _limit_entry(self, address: str, message_id: str, now: float) -> tuple[str, str, bytes]:
        """The bucket, field and entry of the ``soft_bounce_limit`` suppression ``address``
        gets should this message take it to the limit (the outcome scripts decide)."""
        entry = pack_entry("soft_bounce_limit", now, soft_bounce_source(message_id))
        return self.shards.bucket_key(address), suppression_field(address), entry

    async def remember_sender(self, message_id: str, ip: str, provider: str) -> None:
        """The warming IP and provider that sent a message, for a complaint about it later."""
        record = self.shard_of(message_id).keys.message(message_id)
        await self.redis.hset(record, mapping={"ip": ip, "pv": provider})

    async def record_report(
        self,
        message_id: str,
        kind: ReportKind,
        event: bytes,
        *,
        status: str = "",
        suppress: tuple[str, str, str] | None = None,
        recipient: str = "",
        soft_bounced: bytes = b"",
        soft_bounce: SoftBounceLimit | None = None,
        now: float | None = None,
    ) -> FirstReport | None:
        """Record a bounce or complaint report about a message once (``core/lua/report.lua``):
        its event, its new ``status`` ("" keeps it) and a global suppression ``suppress`` =
        (address, reason, source). A bounce that suppresses nothing keeps ``recipient``'s run
        of soft bounces, as ``complete_many`` does: with ``soft_bounced`` (the ``suppressed``
        event its address gets at the limit) and ``soft_bounce``, the message counts toward
        the limit; else its delivery ends no run. ``None``: the message is unknown, or a
        report of this kind was recorded before, and nothing changed."""
        at = time.time() if now is None else now
        shard = self.shard_of(message_id)
        where = shard.keys
        # untouched unless there is an entry to write: a name in this shard's slot
        bucket, entry_field, entry = where.suppression_bucket(0), "", b""
        run: list[str] = []
        changes: list[Arg] = ["", message_id, 0, 0, 0, ""]
        elsewhere = ""  # an address of another shard, suppressed apart
        address = canonical(suppress[0] if suppress is not None else recipient)
        mine = bool(address) and self.shards.of_address(address) == shard  # its recipient
        if suppress is not None:
            if mine:
                bucket, entry_field = self.shards.bucket_key(address), suppression_field(address)
                entry = pack_entry(suppress[1], at, suppress[2])
            else:
                elsewhere = address
        elif kind == "bounced" and mine:
            run = [where.soft_bounces(address)]
            changes[0] = "undelivered"
            if soft_bounced and soft_bounce is not None and soft_bounce.enabled:
                bucket, entry_field, entry = self._limit_entry(address, message_id, at)
                changes = [
                    "count",
                    message_id,
                    soft_bounce.messages,
                    soft_bounce.seconds,
                    soft_bounce.forget_seconds,
                    soft_bounced,
                ]
        touched = [
            where.message(message_id),
            where.events,
            where.stats,
            bucket,
            where.suppression_count,
            *run,
        ]
        flag = _REPORT_FLAGS[kind]
        args: list[Arg] = [flag, event, status, EVENTS_MAXLEN, f"{at:.3f}", RETENTION_SECONDS]
        result = await self._report(touched, [*args, entry_field, entry, *changes])
        if not result:
            return None
        if elsewhere and suppress is not None:
            await self.suppressions.add(elsewhere, reason=suppress[1], source=suppress[2])
        entry_id, ip, provider = (text(value) for value in result)
        return FirstReport(event_id(entry_id, shard), ip or None, provider or None)

    async def record_unverified(self, report: UnverifiedReport) -> None:
        """Keep an unverified report (the latest ``UNVERIFIED_KEPT``) and count it."""
        entry = msgpack.packb(
            [report.kind, report.claimed[:MAX_CLAIMED_CHARS], report.peer, report.at, report.reason]
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.INBOUND_UNVERIFIED, entry)
            pipe.ltrim(keys.INBOUND_UNVERIFIED, 0, UNVERIFIED_KEPT - 1)
            pipe.incr(keys.INBOUND_UNVERIFIED_COUNT)
            await pipe.execute()

    async def unverified_reports(self, limit: int = 100) -> tuple[int, list[UnverifiedReport]]:
        """How many unverified reports came in all, and the latest ``limit`` (newest first)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.INBOUND_UNVERIFIED_COUNT)
            pipe.lrange(keys.INBOUND_UNVERIFIED, 0, max(0, limit - 1))
            count, entries = await pipe.execute()
        return int(count or 0), [UnverifiedReport(*msgpack.unpackb(e)) for e in entries]

    async def engage(
        self, message_id: str, event: bytes, *, click_window: float = 0.0
    ) -> tuple[str, bool]:
        """Record an open, click or unsubscribe; (event id, flagged as a machine's by timing)."""
        [result] = await self.engage_many([(message_id, event, click_window)])
        return result

    async def engage_many(self, items: list[tuple[str, bytes, float]]) -> list[tuple[str, bool]]:
        """Several engagement events, (message id, event, click window) each, in one call per
        shard; (event id, machine) for each, in order."""
        found: list[tuple[str, bool]] = [("", False)] * len(items)
        for shard, positions in self._by_shard([item[0] for item in items]).items():
            where = shard.keys
            touched = [where.events, where.stats]
            args: list[Arg] = [EVENTS_MAXLEN, f"{time.time():.3f}"]
            for p in positions:
                message_id, event, click_window = items[p]
                touched.append(where.message(message_id))
                args += [event, click_window]
            try:
                flat = await self._engage(touched, args)
            except RedisError as exc:
                raise StoreError(f"could not record the events: {exc}") from exc
            for n, p in enumerate(positions):
                found[p] = (event_id(text(flat[2 * n]), shard), bool(flat[2 * n + 1]))
        return found

    async def promote_due(self, *, now: float, limit: int = 500) -> int:
        """Move the delayed jobs that are due into their streams, up to ``limit`` per shard;
        how many moved (``limit`` or more: more may be due, call again)."""
        moved = 0
        for shard in self.shards.all:
            streams = [shard.keys.delayed, shard.keys.jobs]
            moved += int(await self._promote(streams, [f"{now:.3f}", limit]))
        return moved

    async def batch_content(self, batch_id: str) -> BatchContent | None:
        blob: Any = await self.redis.get(self.shards.home(batch_id).keys.batch(batch_id))
        return None if blob is None else BatchContent.unpack(blob)

    async def save_link_table(self, batch_id: str, urls: list[str], ttl_seconds: int) -> None:
        """The batch's link table, written once: several workers may save it, the first write
        wins (``SET NX``), so every link token of the batch indexes the same list."""
        try:
            table = self.shards.home(batch_id).keys.link_table(batch_id)
            await self.redis.set(table, msgpack.packb(urls), nx=True, ex=ttl_seconds)
        except RedisError as exc:
            raise StoreError(f"could not save the link table: {exc}") from exc

    async def link_table(self, batch_id: str) -> list[str] | None:
        """The batch's link table; None if none was saved or it expired."""
        try:
            blob: Any = await self.redis.get(self.shards.home(batch_id).keys.link_table(batch_id))
        except RedisError as exc:
            raise StoreError(f"could not read the link table: {exc}") from exc
        return None if blob is None else list(msgpack.unpackb(blob))

    async def message_statuses(self, message_ids: Sequence[str]) -> list[str | None]:
        """Each message's status (None: unknown or expired), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                pipe.hget(self.shard_of(message_id).keys.message(message_id), "s")
            found = await pipe.execute() if message_ids else []
        return [None if status is None else text(status) for status in found]

    async def message_context(self, message_id: str) -> dict[str, Any] | None:
        """Email, contact, category, campaign and metadata of a message, from its first
        event."""
        found = await self.message(message_id)
        if found is None or not found["events"]:
            return None
        first = found["events"][0]
        return {
            "status": found["status"],
            **{k: first.get(k) for k in CONTEXT_FIELDS},
        }

    # --- destinations -----------------------------------------------------------

    async def publish_destinations(self, worker: str, snapshot: list[dict[str, Any]]) -> None:
        await self.redis.hset(
            keys.DESTINATIONS, worker, msgpack.packb({"at": time.time(), "hosts": snapshot})
        )

    async def destinations(self) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """(pending messages per domain, host states published by live workers)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.DESTINATIONS)
            for shard in self.shards.all:
                pipe.hgetall(shard.keys.pending)
            published, *per_shard = await pipe.execute()
        pending: dict[str, int] = {}
        for counts in per_shard:
            for domain, n in counts.items():
                pending[text(domain)] = pending.get(text(domain), 0) + int(n)
        hosts: list[dict[str, Any]] = []
        for worker, blob in published.items():
            snapshot = msgpack.unpackb(blob)
            if time.time() - snapshot["at"] < 30:  # a dead worker's state is stale
                hosts += [{"worker": text(worker), **h} for h in snapshot["hosts"]]
        return pending, hosts

    # --- reading ------------------------------------------------------------

    async def message(self, message_id: str) -> dict[str, Any] | None:
        shard = self.shards.of_message(message_id)
        if shard is None:
            return None
        status, event_ids = await self.redis.hmget(shard.keys.message(message_id), ["s", "ev"])
        if status is None:
            return None
        entry_ids = [e for e in text(event_ids or b"").split(",") if e]
        events = await self.events.of_message(shard, entry_ids)
        return {"message_id": message_id, "status": text(status), "events": events}

    async def latest_events(self, count: int) -> list[dict[str, Any]]:
        """The ``count`` most recent events, newest first."""
        return await self.events.latest(count)

    async def events_after(
        self, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` events after ``cursor``, oldest first, and the next page's cursor
        (``core/store/events.py``)."""
        return await self.events.after(cursor, limit)

    async def gauges(self) -> QueueGauges:
        """The queue's size and the event counters over every shard, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards.all:
                pipe.xlen(shard.keys.jobs)
                pipe.zcard(shard.keys.delayed)
                pipe.hgetall(shard.keys.stats)
            replies = await pipe.execute()
        jobs = delayed = 0
        events: dict[str, int] = {}
        for n in range(0, len(replies), 3):
            jobs += int(replies[n])
            delayed += int(replies[n + 1])
            for name, value in replies[n + 2].items():
                events[text(name)] = events.get(text(name), 0) + int(value)
        totals = dict(await self.rollups.totals())
        return QueueGauges(jobs=jobs, delayed=delayed, events=events, totals=totals)


class _HiredisPacking:
    """Commands packed by hiredis's C packer instead of redis-py's Python one (which the
    asyncio client always uses): accepting 1,000 recipients passes ~2,000 keys to one script,
    which took redis-py 1.5 ms to pack and takes hiredis 0.24 ms. Same bytes (a test checks)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str):  # "CLIENT SETNAME" is two words on the wire
            args = (*name.encode().split(), *args[1:])
        elif b" " in name:
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # a bytearray: hiredis takes bytes
            converted: Any = tuple(bytes(a) if isinstance(a, bytearray) else a for a in args)
            return [hiredis.pack_command(converted)]


class _TcpConnection(_HiredisPacking, aioredis.Connection):
    pass


class _UnixConnection(_HiredisPacking, aioredis.UnixDomainSocketConnection):
    pass


@asynccontextmanager
async def open_store(
    url: str, max_connections: int = 32, *, min_replicas: int = 0, shards: int | None = None
) -> AsyncIterator[Store]:
    """The store on the Redis at ``url``: one server, or any node of a Redis Cluster (asked
    once: a cluster is then reached through redis-py's cluster client, which follows the
    slot map and its changes). ``shards``: the shard count this process is configured with,
    written to Redis if none is yet and a ``ConfigurationError`` if another is (``None``:
    whatever Redis says, and one, written, if it says nothing)."""
    client: Client = _single(url, max_connections)
    try:
        try:
            await client.ping()
            cluster = (await client.info("cluster")).get("cluster_enabled") == 1
        except RedisError as exc:
            raise StoreError(f"cannot reach Redis at {url}: {exc}") from exc
        if cluster:
            await _close(client)
            client = RedisCluster.from_url(
                url,
                max_connections=CLUSTER_CONNECTIONS,  # per node: it raises, not waits, beyond
                socket_timeout=30,
                socket_connect_timeout=10,
            )
            _pack_with_hiredis(client)
            try:
                await client.initialize()
            except RedisError as exc:
                raise StoreError(f"cannot reach the Redis Cluster at {url}: {exc}") from exc
            masters = len(client.get_primaries())
            log.debug("Redis Cluster at %s: %d masters", url, masters)
        count = await _shard_count(client, shards)
        yield Store(client, shards=Shards(count), min_replicas=min_replicas)
    finally:
        await _close(client)


async def _shard_count(client: Client, wanted: int | None) -> int:
    """The deployment's shard count: written by the first process that opens the data (one
    unless it is told another), fixed after: data written in one layout must never be read
    in another."""
    try:
        await client.hsetnx(keys.CONFIG, "shards", wanted or 1)
        stored: Any = await client.hget(keys.CONFIG, "shards")
    except REDIS_ERRORS as exc:
        raise StoreError(f"cannot read Sluice's configuration in Redis: {exc}") from exc
    count = int(stored) if stored is not None else 1
    if not valid_count(count):
        raise ConfigurationError(
            f"Redis says this deployment has {count} shards: not a valid count"
        )
    if wanted is not None and wanted != count:
        raise ConfigurationError(
            f"SLUICE_SHARDS is {wanted}, but this Redis holds data in {count} shard"
            f"{'s' if count > 1 else ''}: the count "
            f"is fixed for the life of a deployment (changing it would move every contact)"
        )
    return count


def _single(url: str, max_connections: int) -> aioredis.Redis:
    # A blocking pool: hundreds of concurrent deliveries wait for a connection
    # instead of failing with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        socket_timeout=30,
        socket_connect_timeout=10,
    )
    if pool.connection_class is aioredis.UnixDomainSocketConnection:
        pool.connection_class = _UnixConnection
    elif pool.connection_class is aioredis.Connection:
        pool.connection_class = _TcpConnection
    return aioredis.Redis(connection_pool=pool)


def _pack_with_hiredis(cluster: RedisCluster) -> None:
    """The cluster client's connections pack as the single client's do (``_HiredisPacking``):
    the class its nodes, present and discovered, make connections of."""
    manager = cluster.nodes_manager
    if manager.connection_kwargs.get("connection_class") is not aioredis.Connection:
        return  # TLS: left as it is
    manager.connection_kwargs["connection_class"] = _TcpConnection
    for node in manager.startup_nodes.values():
        node.connection_class = _TcpConnection


async def _close(client: Client) -> None:
    await client.aclose()
    if isinstance(client, aioredis.Redis):
        await client.connection_pool.aclose()  # a pool given to Redis() is not closed by it
