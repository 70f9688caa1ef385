"""Every Redis key Sluice uses, in one place: constants for the fixed ones, and ``ShardKeys``
for the families that live in each logical shard (``core.shards``): the queue, message
records, events, batch content, idempotency records, suppression buckets, cap windows and
runs of soft bounces.

Each key carries a hash tag, so every atomic script touches one hash slot. Shard 0's tag
is ``sluice``, which is also the tag of every key that is not sharded (the contact
policy, webhook state, warmup budgets, inbound reports, destinations): one deployment of
one shard, the default, keeps the layout it always had. Scripts never build a key: the
access layer (``core.store``) passes each one in ``KEYS``, computed here.
"""

from __future__ import annotations

import functools

TAG = "sluice"
PREFIX = "sluice:{sluice}:"

CONFIG = PREFIX + "config"  # hash: "shards", the deployment's shard count (fixed at first start)
DELIVERY_GROUP = "delivery"  # consumer group of the delivery workers, on every shard's stream
DESTINATIONS = PREFIX + "destinations"  # hash: worker name -> msgpack snapshot of its pools
POLICY = PREFIX + "policy"  # string: JSON of the contact policy (caps, quiet hours)
WEBHOOK_LEASE = PREFIX + "wh:lease"  # string: which gateway dispatches webhooks
ROLLUP_LEASE = PREFIX + "roll:lease"  # string: which gateway counts events into rollups
PAUSED = PREFIX + "paused"  # hash: paused campaign -> msgpack {since, reason}
PARKED_CAMPAIGNS = PREFIX + "parked"  # set: campaigns that may hold jobs in some shard
PAUSED_SENDERS = PREFIX + "paused-senders"  # hash: "ip:provider" -> msgpack {since, reason}
ALERT_RULES = PREFIX + "alerts:rules"  # string: JSON of the alert rules (gateway/alerts.py)
ALERTS = PREFIX + "alerts:active"  # hash: firing alert's key -> JSON of its state
WEBHOOK_CURSOR = PREFIX + "wh:cursor"  # string: last event id delivered (or dead-lettered)
WEBHOOK_INFLIGHT = PREFIX + "wh:inflight"  # string: msgpack of the batch being (re)tried
WEBHOOK_STATE = PREFIX + "wh:state"  # hash: disabled, last_error, delivered_batches, ...
WEBHOOK_DEAD = PREFIX + "wh:dead"  # list: msgpack batches that failed for max_retry
WEBHOOK_REPLAY = PREFIX + "wh:replay"  # list: dead letters queued to be sent again
WARMUP_IPS = PREFIX + "wu:ips"  # hash: sending IP -> JSON of its warmup (warmup/gate.py)
WARMUP_PREFIX = PREFIX + "wu:sent:"  # counters per IP, provider, UTC day (and hour)
WARMUP_HOLDS = PREFIX + "wu:holds"  # hash: ip:provider -> msgpack {since?, total, reason}
WARMUP_SIGNALS = PREFIX + "wu:sig:"  # hash per ip:provider: 5-minute buckets of outcomes
WARMUP_DAILY = PREFIX + "wu:daily:"  # hash per ip:provider: day:outcome -> count
WARMUP_LAST = PREFIX + "wu:last"  # hash: ip -> unix time of its last warmup send
SANDBOX_INDEX = PREFIX + "sbx:index"  # sorted set: captured message id -> captured at
SANDBOX_MESSAGE = PREFIX + "sbx:m:"  # string per captured message: msgpack (core/store/sandbox.py)
SANDBOX_SUMMARY = PREFIX + "sbx:s:"  # string per captured message: its summary, msgpack
INBOUND_UNVERIFIED = PREFIX + "in:unverified"  # list: msgpack of the latest unverified reports
INBOUND_UNVERIFIED_COUNT = PREFIX + "in:unverified-count"  # string: unverified reports in all


def sandbox_message(message_id: str) -> str:
    return SANDBOX_MESSAGE + message_id


def sandbox_summary(message_id: str) -> str:
    return SANDBOX_SUMMARY + message_id


def warmup_sent(ip: str, provider: str, day: str, hour: int | None = None) -> str:
    """Messages a warming IP sent to a provider on a UTC day (``YYYYMMDD``), or in one hour."""
    base = f"{WARMUP_PREFIX}{ip}:{provider}:{day}"
    return base if hour is None else f"{base}:{hour}"


def warmup_taken(ip: str, provider: str, day: str) -> str:
    """The messages that took ``ip``'s budget at ``provider`` on a UTC day: a message taken
    again (a job delivered twice after a crash) finds its IP here and is not counted twice."""
    return f"{WARMUP_PREFIX}{ip}:{provider}:{day}:taken"


def warmup_signals(ip: str, provider: str) -> str:
    """5-minute buckets of a warming IP's outcomes at one provider."""
    return f"{WARMUP_SIGNALS}{ip}:{provider}"


def warmup_daily(ip: str, provider: str) -> str:
    """A warming IP's outcomes at one provider, per UTC day."""
    return f"{WARMUP_DAILY}{ip}:{provider}"


class ShardKeys:
    """The keys of one logical shard, all under the shard's hash tag."""

    def __init__(self, tag: str) -> None:
        prefix = f"sluice:{{{tag}}}:"
        self.tag = tag
        self.jobs = prefix + "jobs"  # stream: one entry per recipient ready to deliver
        self.delayed = prefix + "delayed"  # zset: jobs waiting for send_at or a retry, by due time
        self.events = prefix + "events"  # stream: delivery and engagement events
        self.stats = prefix + "stats"  # hash: counters per status
        self.pending = prefix + "pending"  # hash: recipient domain -> messages not yet final
        self.suppression_count = prefix + "sup-count"  # string: entries in this shard's buckets
        self._suppression = (
            prefix + "sup:"
        )  # its share of the 65,536 buckets (core/suppressions.py)
        self._cap = prefix + "cap:"  # zset per (rule, contact): counted message ids by send time
        self._soft = prefix + "sb:"  # hash per address: its run of soft-bounced messages
        self._message = prefix + "msg:"  # hash per message: status, event ids
        self._batch = prefix + "batch:"  # string per batch: msgpack of the shared content
        self._links = prefix + "links:"  # string per batch: msgpack list of its tracked URLs
        self._idempotency = prefix + "idem:"  # hash per Idempotency-Key: digest, answer
        self._intent = prefix + "intent:"  # hash per Idempotency-Key of a batch over shards
        self.rollup_cursor = prefix + "roll:cursor"  # string: last event counted in rollups
        self._rollup = prefix + "roll:"  # hash per hour and per day: counters (core/rollups.py)
        # each name made once per process: a batch of 1,000 recipients names 1,000 of them
        self.suppression_bucket = functools.lru_cache(maxsize=1 << 16)(self._bucket)

    def _bucket(self, bucket: int) -> str:
        """One of the 65,536 suppression hashes (``core.suppressions.bucket_of``)."""
        return f"{self._suppression}{bucket:04x}"

    def cap(self, rule_key: str, contact: str) -> str:
        """The counted send times of one frequency-cap rule for one contact."""
        return f"{self._cap}{rule_key}:{contact}"

    def soft_bounces(self, address: str) -> str:
        """An address's run of soft-bounced messages since its last delivery (``n``, ``first``:
        when the first of them ended): the soft-bounce limit (``core.suppressions``). The
        address in canonical form, and in its own shard."""
        return self._soft + address

    def message(self, message_id: str) -> str:
        return self._message + message_id

    def batch(self, batch_id: str) -> str:
        return self._batch + batch_id

    def link_table(self, batch_id: str) -> str:
        """The URLs a batch's link tokens index (``tracking.tokens``); kept as long as tokens live."""
        return self._links + batch_id

    def idempotency(self, key_digest: str) -> str:
        """The answer kept for an Idempotency-Key: the whole batch's, or (a batch over several
        shards) this shard's part."""
        return self._idempotency + key_digest

    def rollup(self, resolution: str, bucket: str) -> str:
        """The counters of one hour (``h``, ``YYYYMMDDHH``) or day (``d``, ``YYYYMMDD``)."""
        return f"{self._rollup}{resolution}:{bucket}"

    def parked(self, campaign: str) -> str:
        """Jobs of a paused campaign, held until it is resumed (zset by when held)."""
        return f"{self._rollup}parked:{campaign}"

    def rollup_totals(self) -> str:
        """Counters since the data began, with bounded labels (``core.rollups.SERIES``)."""
        return f"{self._rollup}totals"

    def bounce_samples(self, campaign: str, bounce_class: str) -> str:
        """The latest replies of a campaign's bounces of one class."""
        return f"{self._rollup}sample:{campaign}:{bounce_class}"

    def intent(self, key_digest: str) -> str:
        """A batch over several shards: the request digest and answer kept for its key before
        any shard is written (``core.store``, ``Store.accept``)."""
        return self._intent + key_digest


# Shard 0: the only one of a deployment of one shard, and where data without a shard lives.
SHARD0 = ShardKeys(TAG)
JOBS = SHARD0.jobs
DELAYED = SHARD0.delayed
EVENTS = SHARD0.events
STATS = SHARD0.stats
PENDING_BY_DOMAIN = SHARD0.pending
SUPPRESSION_COUNT = SHARD0.suppression_count
suppression_bucket = SHARD0.suppression_bucket
cap = SHARD0.cap
message = SHARD0.message
batch = SHARD0.batch
link_table = SHARD0.link_table
idempotency = SHARD0.idempotency
