"""The one Redis access layer: the connection pool, every Redis call, the Lua scripts.

Nothing outside this package talks to Redis. Key names come from ``core.keys``; every
multi-key step is a script of ``core/lua/`` loaded once and called through a typed
method, with every key it touches passed in ``KEYS``. On the accept path Redis errors
become ``StoreError`` (the API answers 503 with ``Retry-After``), as does a batch that fewer
than ``SLUICE_REDIS_MIN_REPLICAS`` replicas confirmed (``ReplicasBehind``); the workers
retry on any Redis error.

| module | what it reads and writes |
|---|---|
| ``store`` | ``Store``: the jobs streams and delayed sets, message records, link tables, reports, destinations, counters |
| ``accepting`` | ``Store.accept``: a batch in one script per shard, idempotency keys over shards, replicas' confirmation |
| ``events`` | ``Store.events``: the events streams of every shard, merged, and their cursors |
| ``suppressions`` | ``Store.suppressions``: the suppression list |
| ``webhooks`` | ``Store.webhooks``: the dispatcher's lease, cursor, batch in flight, dead letters |
| ``warmup`` | ``Store.warmup``: warmup configurations, budgets per IP x provider, signals, holds |
| ``base`` | the error, the script wrapper, shared limits |
"""

from core.jobs import QueuedJob
from core.store.accepting import Accepted, OtherBatch, ReplicasBehind, Unfinished
from core.store.base import (
    EVENTS_MAXLEN,
    REDIS_ERRORS,
    RETENTION_SECONDS,
    StoreError,
    valid_stream_id,
)
from core.store.events import BadCursor, check_cursor
from core.store.store import (
    FirstReport,
    Outcome,
    QueueGauges,
    ReportKind,
    Store,
    UnverifiedReport,
    open_store,
)
from core.store.suppressions import Suppressions
from core.store.warmup import Candidate, StoredHold, WarmupStore
from core.store.webhooks import WebhookBatch, WebhookState, WebhookStore

__all__ = [
    "EVENTS_MAXLEN",
    "REDIS_ERRORS",
    "RETENTION_SECONDS",
    "Accepted",
    "BadCursor",
    "Candidate",
    "FirstReport",
    "OtherBatch",
    "Outcome",
    "QueueGauges",
    "QueuedJob",
    "ReplicasBehind",
    "ReportKind",
    "Store",
    "StoreError",
    "StoredHold",
    "Suppressions",
    "Unfinished",
    "UnverifiedReport",
    "WarmupStore",
    "WebhookBatch",
    "WebhookState",
    "WebhookStore",
    "check_cursor",
    "open_store",
    "valid_stream_id",
]
