"""The one Redis access layer: the connection pool, every Redis call, the Lua scripts.

Nothing outside this package talks to Redis. Key names come from ``core.keys``; every
multi-key step is a script of ``core/lua/`` loaded once and called through a typed
method, with every key it touches passed in ``KEYS``. On the accept path Redis errors
become ``StoreError`` (the API answers 503 with ``Retry-After``), as does a batch that fewer
than ``SLUICE_REDIS_MIN_REPLICAS`` replicas confirmed (``ReplicasBehind``); the workers
retry on any Redis error.

| module | what it reads and writes |
|---|---|
| ``store`` | ``Store``: accepting batches, the jobs stream and delayed set, message records, link tables, events, reports, destinations, counters |
| ``suppressions`` | ``Store.suppressions``: the suppression list |
| ``webhooks`` | ``Store.webhooks``: the dispatcher's lease, cursor, batch in flight, dead letters |
| ``warmup`` | ``Store.warmup``: warmup configurations, budgets per IP x provider, signals, holds |
| ``base`` | the error, the script wrapper, shared limits |
"""

from core.jobs import QueuedJob
from core.store.base import (
    EVENTS_MAXLEN,
    REDIS_ERRORS,
    RETENTION_SECONDS,
    StoreError,
    valid_stream_id,
)
from core.store.store import (
    Accepted,
    FirstReport,
    Outcome,
    QueueGauges,
    ReplicasBehind,
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
    "Candidate",
    "FirstReport",
    "Outcome",
    "QueueGauges",
    "QueuedJob",
    "ReplicasBehind",
    "ReportKind",
    "Store",
    "StoreError",
    "StoredHold",
    "Suppressions",
    "UnverifiedReport",
    "WarmupStore",
    "WebhookBatch",
    "WebhookState",
    "WebhookStore",
    "open_store",
    "valid_stream_id",
]
