"""Every Redis key Sluice uses, in one place: constants for the fixed ones, a function for
each family of keys named by something (a message, a batch, a contact, an IP...).

All keys share the hash tag ``{sluice}`` so every atomic script touches one hash
slot. Scripts never build a key: the access layer (``core.store``) passes each one in
``KEYS``, computed here. (That puts the queue on one shard; sharding it means one tag
per queue shard, with the shard in the message id.)
"""

from __future__ import annotations

import functools

PREFIX = "sluice:{sluice}:"

JOBS = PREFIX + "jobs"  # stream: one entry per recipient ready to deliver
DELIVERY_GROUP = "delivery"  # consumer group of the delivery workers
DELAYED = PREFIX + "delayed"  # zset: jobs waiting for send_at or a retry, scored by due time
EVENTS = PREFIX + "events"  # stream: delivery and engagement events
STATS = PREFIX + "stats"  # hash: counters per status
PENDING_BY_DOMAIN = PREFIX + "pending"  # hash: recipient domain -> messages not yet final
DESTINATIONS = PREFIX + "destinations"  # hash: worker name -> msgpack snapshot of its pools
SUPPRESSION_BUCKET_PREFIX = PREFIX + "sup:"  # 65,536 small hashes; see core/suppressions.py
SUPPRESSION_COUNT = PREFIX + "sup-count"  # string: entries in all buckets
POLICY = PREFIX + "policy"  # string: JSON of the contact policy (caps, quiet hours)
WEBHOOK_LEASE = PREFIX + "wh:lease"  # string: which gateway dispatches webhooks
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
INBOUND_UNVERIFIED = PREFIX + "in:unverified"  # list: msgpack of the latest unverified reports
INBOUND_UNVERIFIED_COUNT = PREFIX + "in:unverified-count"  # string: unverified reports in all
CAP_PREFIX = PREFIX + "cap:"  # zset per (rule, contact): counted message ids by send time
MESSAGE_PREFIX = PREFIX + "msg:"  # hash per message: status, event ids
BATCH_PREFIX = PREFIX + "batch:"  # string per batch: msgpack of the shared content
LINKS_PREFIX = PREFIX + "links:"  # string per batch: msgpack list of its tracked URLs
IDEMPOTENCY_PREFIX = PREFIX + "idem:"  # hash per Idempotency-Key: digest, first response


@functools.lru_cache(maxsize=1 << 16)
def suppression_bucket(bucket: int) -> str:
    """One of the 65,536 suppression hashes (``core.suppressions.bucket_of``); each name is
    made once per process (a batch of 1,000 recipients names 1,000 of them)."""
    return f"{SUPPRESSION_BUCKET_PREFIX}{bucket:04x}"


def cap(rule_key: str, contact: str) -> str:
    """The counted send times of one frequency-cap rule for one contact."""
    return f"{CAP_PREFIX}{rule_key}:{contact}"


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


def message(message_id: str) -> str:
    return MESSAGE_PREFIX + message_id


def batch(batch_id: str) -> str:
    return BATCH_PREFIX + batch_id


def link_table(batch_id: str) -> str:
    """The URLs a batch's link tokens index (``tracking.tokens``); kept as long as tokens live."""
    return LINKS_PREFIX + batch_id


def idempotency(key_digest: str) -> str:
    return IDEMPOTENCY_PREFIX + key_digest
