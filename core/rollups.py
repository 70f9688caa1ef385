"""Statistics rollups: durable counters per hour and per day, kept from the events.

Every event is counted once, after it happened, by one counter reading each shard's events
stream after a cursor (``gateway/rollups.py``); a page of events and the cursor's move are
one script (``core/lua/rollup.lua``), so a crash between them counts nothing twice and
nothing is lost. Counters live in the shard of the events they count, one hash per hour
and one per day; a field is a metric and the dimensions it was counted under:

    <metric> TAB <campaign> TAB <category> TAB <provider> TAB <ip> TAB <pool> TAB <sending domain>

(every dimension value is a name Sluice validated, a domain or an IP: none holds a TAB).
The campaign is the request's ``campaign``, else its category. ``provider`` is the warmup
provider group of the recipient's domain; ``ip`` and ``pool``, the sending IP of the
delivery (empty before one, or when the host's default address sent it). Clicks per link
are kept per campaign in the daily hashes (``link`` fields).

Metrics: ``accepted`` (every recipient the API accepted, including those suppressed or
capped at once), ``delivered``, ``deferred`` (attempts), ``bounced``, ``bounced_hard``,
``bounced_class:<class>``, ``expired``, ``complained``, ``unsubscribed``, ``suppressed``,
``capped``, ``held_quiet_hours``, ``held_cap``, ``held_warmup`` (attempts held by a
warming IP's budget), ``opened`` and ``clicked`` (messages with at least one open or click
by a person), ``opened_machine`` and ``clicked_machine`` (messages with one by a machine:
Apple's proxy, a scanner, a HEAD request, a click too soon after delivery).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SEPARATOR = "\t"
DIMENSIONS = ("campaign", "category", "provider", "ip", "pool", "sending_domain")
HOURLY, DAILY = "h", "d"
TOTALS = "t"  # counters since the data began, with bounded labels, for Prometheus

COUNTS = (
    "accepted",
    "delivered",
    "deferred",
    "bounced",
    "bounced_hard",
    "expired",
    "complained",
    "unsubscribed",
    "suppressed",
    "capped",
    "held_quiet_hours",
    "held_cap",
    "held_warmup",
    "held_paused",
    "opened",
    "opened_machine",
    "clicked",
    "clicked_machine",
)
CLASS_PREFIX = "bounced_class:"
LINK = "link"  # daily: clicks per link, <campaign> TAB <url> TAB human|machine


@dataclass(frozen=True)
class Dims:
    campaign: str
    category: str
    provider: str
    ip: str
    pool: str
    sending_domain: str

    def field(self, metric: str) -> str:
        values = (self.campaign, self.category, self.provider, self.ip, self.pool)
        return SEPARATOR.join((metric, *values, self.sending_domain))

    def value(self, dimension: str) -> str:
        return str(getattr(self, dimension))


def parse_field(field: str) -> tuple[str, Dims] | None:
    """(metric, dimensions) of a counter field; None for a link field or a foreign one."""
    parts = field.split(SEPARATOR)
    if len(parts) != 7:
        return None
    return parts[0], Dims(*parts[1:])


def link_field(campaign: str, url: str, machine: bool) -> str:
    return SEPARATOR.join((LINK, campaign, url, "machine" if machine else "human"))


def parse_link(field: str) -> tuple[str, str, bool] | None:
    """(campaign, url, machine) of a link field."""
    parts = field.split(SEPARATOR)
    if len(parts) != 4 or parts[0] != LINK:
        return None
    return parts[1], parts[2], parts[3] == "machine"


# Prometheus series kept in the totals hash: name -> label names (all bounded: provider
# groups, configured IPs, bounce classes, event kinds)
SERIES = {
    "sluice_bounces_total": ("class", "provider", "ip"),
    "sluice_complaints_total": ("provider", "ip"),
    "sluice_engagement_total": ("event", "agent", "provider"),
    "sluice_policy_holds_total": ("reason",),
}
_HOLDS = {
    "held_quiet_hours": "quiet_hours",
    "held_cap": "frequency_cap",
    "held_warmup": "warmup",
    "held_paused": "paused",
}


def series_of(event: dict[str, Any], dims: Dims) -> Iterator[str]:
    """The totals one event adds to: ``<series> TAB <label values>`` fields."""
    kind = event.get("type")
    if kind == "bounced":
        bounce_class = str(event.get("bounce_class") or "other")
        yield SEPARATOR.join(("sluice_bounces_total", bounce_class, dims.provider, dims.ip))
    elif kind == "complained":
        yield SEPARATOR.join(("sluice_complaints_total", dims.provider, dims.ip))
    elif kind in ("opened", "clicked", "unsubscribed"):
        agent = "machine" if event.get("machine") else "human"
        yield SEPARATOR.join(("sluice_engagement_total", str(kind), agent, dims.provider))
    for metric in metrics_of(event):
        if metric in _HOLDS:
            yield SEPARATOR.join(("sluice_policy_holds_total", _HOLDS[metric]))


def hour_of(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y%m%d%H")


def day_of(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y%m%d")


def metrics_of(event: dict[str, Any]) -> Iterator[str]:
    """The metrics one event counts toward."""
    kind = event.get("type")
    machine = bool(event.get("machine"))
    if kind == "queued":
        yield "accepted"
        held = event.get("held_by")
        if held == "quiet_hours":
            yield "held_quiet_hours"
        elif held == "frequency_cap":
            yield "held_cap"
    elif kind == "suppressed":
        stage = event.get("stage")
        if stage == "outcome":  # the address, after this message's outcome (counted as that)
            return
        if stage != "delivery":  # suppressed at accept: a recipient accepted
            yield "accepted"
        yield "suppressed"
    elif kind == "capped":
        yield "accepted"
        yield "capped"
    elif kind == "delivered":
        yield "delivered"
    elif kind == "deferred":
        if event.get("held_by") in ("paused", "paused_sender"):  # held, not an attempt
            yield "held_paused"
            return
        yield "deferred"
        if event.get("held_by") == "warmup":
            yield "held_warmup"
    elif kind == "bounced":
        yield "bounced"
        if event.get("hard"):
            yield "bounced_hard"
        yield CLASS_PREFIX + str(event.get("bounce_class") or "other")
    elif kind in ("expired", "complained"):
        yield str(kind)
    elif kind == "unsubscribed":
        # one-click: the message's first (engage.lua marks it); mailto: one per address
        if event.get("first") or event.get("method") == "mailto":
            yield "unsubscribed"
    elif kind in ("opened", "clicked") and event.get("first"):
        yield f"{kind}_machine" if machine else str(kind)
