"""Prometheus metrics through ``prometheus_client``: what the API process and the delivery
workers count, and the one exposition ``GET /metrics`` serves.

| metric | type | labels | from |
|---|---|---|---|
| ``sluice_http_requests_total`` | counter | ``route`` (the route's pattern or ``unmatched``), ``status`` | API |
| ``sluice_api_recipients_total`` | counter | ``status`` (``queued``, ``scheduled``, ``suppressed``, ``capped``, ``rejected``) | API |
| ``sluice_accept_latency_seconds`` | histogram | | API: one per accepted send request, from the intake to the answer |
| ``sluice_messages_total`` | counter | ``outcome`` (``delivered``, ``deferred``, ``bounced``, ``expired``, ``suppressed``), ``provider``, ``ip``, ``pool`` | workers: each outcome they record |
| ``sluice_bounces_total`` | counter | ``class``, ``provider``, ``ip`` | the rollups in Redis (``core/rollups.py``), read at each scrape: every bounce since the data began |
| ``sluice_complaints_total`` | counter | ``provider``, ``ip`` | the rollups |
| ``sluice_engagement_total`` | counter | ``event`` (``opened``, ``clicked``, ``unsubscribed``), ``agent`` (``human``, ``machine``), ``provider`` | the rollups: every event, not unique ones |
| ``sluice_policy_holds_total`` | counter | ``reason`` (``quiet_hours``, ``frequency_cap``, ``warmup``) | the rollups |
| ``sluice_delivery_latency_seconds`` | histogram | ``provider`` | workers: one per delivery attempt, from its start (render) to its outcome (the SMTP reply or the error that ended it) |
| ``sluice_queue_jobs``, ``sluice_queue_delayed`` | gauge | | Redis, read at each scrape |
| ``sluice_queue_messages``, ``sluice_queue_oldest_age_seconds`` | gauge | ``state``, ``provider`` | what waits, read at each scrape (``gateway/queues.py``: up to 10,000 per place and shard) |
| ``sluice_alerts_firing`` | gauge | ``rule`` | the alerts firing (``gateway/alerts.py``) |
| ``sluice_warmup_budget_messages``, ``sluice_warmup_sent_messages`` | gauge | ``ip``, ``provider`` | warming IPs: today's budget and what was sent (``warmup/gate.py``) |
| ``sluice_recorded_events_total`` | counter | ``event`` | Redis's counters per event type, read at each scrape: every process, since the data began |

Labels are bounded: ``provider`` is the warmup provider group of the recipient's domain
(``gmail``, ``microsoft``, ``yahoo``, ``apple``, ``other``). Never a campaign, a domain or
an address.

**Every process in one scrape.** ``sluice serve`` answers HTTP in its main process and
delivers in spawned worker processes. In prometheus_client's multiprocess mode each process
writes its metrics to its own memory-mapped files in one directory, and ``/metrics`` (main
process) merges them all (``MultiProcessCollector``), the files of dead workers included,
so totals do not drop when a worker is restarted. The directory is ``<data dir>/metrics``,
emptied at each start of ``serve``: counters start from zero, like any process's.

**Import order.** prometheus_client decides once, when it is first imported, whether values
live in memory or in files, from the environment variable ``PROMETHEUS_MULTIPROC_DIR``. So
this module imports prometheus_client only inside its functions, and a process that wants
files calls ``use_directory()`` before any metric exists: ``serve`` does (after
``fresh_directory()``) before it builds the app or spawns a worker, and each worker does
again first thing (it inherits the variable too). ``use_directory()`` refuses to run once
prometheus_client was imported in memory mode, so a wrong order fails at start instead of
silently showing the API's metrics alone. It is the one place Sluice writes the environment
(prometheus_client reads it; Sluice reads none of it outside ``core.settings``). Without it
(``create_app`` alone, as the tests run it) each ``ApiMetrics`` keeps its metrics in memory,
in a registry of its own. In multiprocess mode a process holds one ``ApiMetrics`` or one
``DeliveryMetrics``: two would share the same file entries.

**Cost.** A delivery updates two metrics (its outcome and its attempt's latency): 8 us in
files, 3 us in memory (100,000 of each, one run on the 2-core machine), against about
1.6 ms of worker CPU per message.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from core.datadir import private_dir

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import Metric

    from core.store import QueueGauges

__all__ = [
    "ACCEPT_BUCKETS",
    "DELIVERY_BUCKETS",
    "ApiMetrics",
    "DeliveryMetrics",
    "fresh_directory",
    "process_exited",
    "use_directory",
]

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Seconds. An accept of one recipient takes about a millisecond, one of 1,000 about 0.1 s.
ACCEPT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds. A sink on loopback answers in milliseconds, a distant MX in a second or two, and
# an attempt can last up to the SMTP timeouts of its destinations.
DELIVERY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

_directory: Path | None = None  # set by use_directory(): multiprocess mode


def fresh_directory(path: Path) -> Path:
    """``path`` as an empty private directory (0700): the previous run's files removed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    return private_dir(path)


def use_directory(path: Path) -> None:
    """Multiprocess mode, with its files in ``path``: call before any metric exists."""
    global _directory
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(
            "prometheus_client was imported before its multiprocess directory was set; "
            "call core.metrics.use_directory() first"
        )
    if _directory is not None and _directory != path:
        raise RuntimeError(f"metrics already use {_directory}, not {path}")
    os.environ[MULTIPROC_VARIABLE] = str(path)
    _directory = path


def process_exited(pid: int) -> None:
    """prometheus_client's bookkeeping for a process that exited (its live gauges go; its
    counters and histograms stay, so totals do not drop)."""
    if _directory is None:
        return
    from prometheus_client import multiprocess

    # prometheus_client.multiprocess has no annotations
    multiprocess.mark_process_dead(pid, str(_directory))  # type: ignore[no-untyped-call]


def _own_registry() -> CollectorRegistry | None:
    """Where this process's metrics register: nowhere in multiprocess mode (the exposition
    reads their files), else a registry of their own."""
    from prometheus_client import CollectorRegistry

    return None if _directory is not None else CollectorRegistry()


class ApiMetrics:
    """What the API process counts, and the exposition of every metric."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.registry = _own_registry()
        self._requests = Counter(
            "sluice_http_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self._recipients = Counter(
            "sluice_api_recipients",
            "Recipients answered by the API, by status.",
            ["status"],
            registry=self.registry,
        )
        self._accept = Histogram(
            "sluice_accept_latency_seconds",
            "Seconds from a send request entering the intake to its answer, per accepted request.",
            buckets=ACCEPT_BUCKETS,
            registry=self.registry,
        )

    def count_request(self, route: str, status: int) -> None:
        self._requests.labels(route, str(status)).inc()

    def accepted(self, counts: dict[str, int], seconds: float) -> None:
        """A send request was accepted: its recipients per status, and how long it took."""
        for status, n in counts.items():
            self._recipients.labels(status).inc(n)
        self._accept.observe(seconds)

    def exposition(self, queue: QueueGauges, accept: str | None) -> tuple[bytes, str]:
        """The body and content type of ``/metrics``: every process's metrics (this one's
        alone outside multiprocess mode) and the queue's figures, in the format the
        scraper's ``Accept`` header asks for (the text format by default)."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        if self.registry is None:
            MultiProcessCollector(registry, path=str(_directory))  # type: ignore[no-untyped-call]
        else:
            registry.register(self.registry)
        registry.register(_QueueCollector(queue))
        encode, content_type = choose_encoder(accept or "")
        return encode(registry), content_type


class DeliveryMetrics:
    """What a delivery worker counts."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.registry = _own_registry()
        self._outcomes = Counter(
            "sluice_messages",
            "Delivery outcomes recorded by the workers, by outcome, provider group, sending IP "
            "and pool (empty: the host's default address, or none chosen yet).",
            ["outcome", "provider", "ip", "pool"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "sluice_delivery_latency_seconds",
            "Seconds from the start of a delivery attempt to its outcome, by provider group.",
            ["provider"],
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )

        # each labelled child, looked up once (``labels`` validates and locks every call)
        self._outcome_children: dict[tuple[str, str, str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def outcome(self, outcome: str, provider: str, ip: str = "", pool: str = "") -> None:
        key = (outcome, provider, ip, pool)
        child = self._outcome_children.get(key)
        if child is None:
            child = self._outcome_children[key] = self._outcomes.labels(*key)
        child.inc()

    def attempt(self, provider: str, seconds: float) -> None:
        child = self._latency_children.get(provider)
        if child is None:
            child = self._latency_children[provider] = self._latency.labels(provider)
        child.observe(seconds)


class _QueueCollector:
    """The figures read from Redis for one scrape."""

    def __init__(self, queue: QueueGauges) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "sluice_queue_jobs",
            "Jobs in the delivery stream (ready or in flight).",
            value=self.queue.jobs,
        )
        yield GaugeMetricFamily(
            "sluice_queue_delayed",
            "Jobs waiting for send_at or a retry.",
            value=self.queue.delayed,
        )
        recorded = CounterMetricFamily(
            "sluice_recorded_events",
            "Events recorded in Redis by every process since the data began, by type "
            "(every Sluice sharing this Redis shows the same figures).",
            labels=["event"],
        )
        for event, n in sorted(self.queue.events.items()):
            recorded.add_metric([event], n)
        yield recorded
        from core.rollups import SEPARATOR, SERIES

        families = {
            name: CounterMetricFamily(
                name.removesuffix("_total"), _SERIES_HELP[name], labels=list(labels)
            )
            for name, labels in SERIES.items()
        }
        waiting = GaugeMetricFamily(
            "sluice_queue_messages",
            "Messages waiting, by state (ready, in_flight, scheduled, held_quiet_hours, "
            "held_cap, retrying, held_warmup, paused) and provider group.",
            labels=["state", "provider"],
        )
        oldest = GaugeMetricFamily(
            "sluice_queue_oldest_age_seconds",
            "Seconds since the oldest waiting message was accepted, by state and provider.",
            labels=["state", "provider"],
        )
        for (state, provider), (count, age) in sorted(self.queue.waiting.items()):
            waiting.add_metric([state, provider], count)
            oldest.add_metric([state, provider], round(age, 3))
        yield waiting
        yield oldest
        budget = GaugeMetricFamily(
            "sluice_warmup_budget_messages",
            "Today's warmup budget of a warming IP at a provider group.",
            labels=["ip", "provider"],
        )
        sent = GaugeMetricFamily(
            "sluice_warmup_sent_messages",
            "Messages a warming IP sent to a provider group today (UTC).",
            labels=["ip", "provider"],
        )
        for (ip, provider), (daily, today) in sorted(self.queue.warmup.items()):
            budget.add_metric([ip, provider], daily)
            sent.add_metric([ip, provider], today)
        yield budget
        yield sent
        firing = GaugeMetricFamily(
            "sluice_alerts_firing", "Alerts firing now, by rule.", labels=["rule"]
        )
        for rule, n in sorted(self.queue.alerts_firing.items()):
            firing.add_metric([rule], n)
        yield firing
        for field, n in sorted(self.queue.totals.items()):
            name, *values = field.split(SEPARATOR)
            if name in families and len(values) == len(SERIES[name]):
                families[name].add_metric(values, n)
        yield from families.values()


_SERIES_HELP = {
    "sluice_bounces_total": "Bounces since the data began, by class, provider group and "
    "sending IP (every Sluice sharing this Redis shows the same figures).",
    "sluice_complaints_total": "Complaints (ARF reports) since the data began, by provider "
    "group and sending IP.",
    "sluice_engagement_total": "Opens, clicks and unsubscribes since the data began, by "
    "people or machines (Apple's proxy, scanners), by provider group.",
    "sluice_policy_holds_total": "Messages held since the data began: by quiet hours, a "
    "deferring frequency cap, or a warming IP's budget (attempts).",
}
