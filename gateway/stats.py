"""Statistics read from the rollups (``core/rollups.py``): rows per hour or day, grouped and
filtered by dimension, with rates whose denominators are named; the campaign list and a
campaign's report. Shared by ``GET /v1/stats``, ``GET /v1/campaigns`` and the CLI.

Rates (``docs/insight.md``): ``delivery`` and ``hard_bounce`` over delivered + bounced
(the messages whose fate is known), the others (``complaint``, ``open``, ``click``,
``unsubscribe``) over delivered; ``open`` and ``click`` count messages a person opened or
clicked, machines apart. A row whose delivered + bounced is under ``MIN_VOLUME`` is
flagged ``low_volume``: its rates rest on too few messages to act on.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core import rollups
from core.errors import ValidationError
from core.events import iso_time
from core.store import Store

MIN_VOLUME = 100
MAX_HOURS = 31 * 24
MAX_DAYS = 400
RESOLUTIONS = {"hour": rollups.HOURLY, "day": rollups.DAILY}
RATES = {
    "delivery": ("delivered", "delivered+bounced"),
    "hard_bounce": ("bounced_hard", "delivered+bounced"),
    "complaint": ("complained", "delivered"),
    "open": ("opened", "delivered"),
    "click": ("clicked", "delivered"),
    "unsubscribe": ("unsubscribed", "delivered"),
}


@dataclass(frozen=True)
class Query:
    resolution: str  # "hour" | "day"
    start: float  # unix seconds, the first bucket's start
    end: float  # unix seconds, within the last bucket
    group_by: tuple[str, ...] = ()
    filters: tuple[tuple[str, str], ...] = ()


LATEST = 32503680000.0  # 3000-01-01: times past it are refused (datetime ends at 9999)


def parse_time(text: str, name: str) -> float:
    """Unix seconds, ``YYYY-MM-DD`` or an ISO 8601 time (UTC unless it says otherwise),
    between 1970 and ``LATEST``."""
    try:
        if text.replace(".", "", 1).isdigit():
            stamp = float(text)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            stamp = moment.timestamp()
    except ValueError:
        raise ValidationError(
            f"'{name}' must be a date (2026-11-28), an ISO 8601 time or unix seconds", field=name
        ) from None
    if not 0 <= stamp <= LATEST:
        raise ValidationError(f"'{name}' must be between 1970 and 3000", field=name)
    return stamp


def query_of(params: dict[str, str], *, default_resolution: str = "day") -> Query:
    """A query from request parameters (``ValidationError`` for what cannot be one)."""
    for name, value in params.items():
        if value is not None and len(value) > (200 if name == "group_by" else 64):
            raise ValidationError(f"'{name}' is too long", field=name)
    resolution = params.get("resolution") or default_resolution
    if resolution not in RESOLUTIONS:
        raise ValidationError("'resolution' must be hour or day", field="resolution")
    end = parse_time(params["to"], "to") if params.get("to") else time.time()
    span = 86400 if resolution == "hour" else 30 * 86400
    start = parse_time(params["from"], "from") if params.get("from") else max(0.0, end - span + 1)
    if start > end:
        raise ValidationError("'from' is after 'to'", field="from")
    limit = MAX_HOURS * 3600 if resolution == "hour" else MAX_DAYS * 86400
    if end - start > limit:
        raise ValidationError(
            f"at most {MAX_HOURS} hours at resolution=hour, {MAX_DAYS} days at resolution=day",
            field="from",
        )
    group_by: tuple[str, ...] = ()
    if params.get("group_by"):
        group_by = tuple(part.strip() for part in params["group_by"].split(","))
        unknown = [g for g in group_by if g not in rollups.DIMENSIONS]
        if unknown or len(set(group_by)) != len(group_by):
            raise ValidationError(
                f"'group_by' takes {', '.join(rollups.DIMENSIONS)}, each once", field="group_by"
            )
    filters = tuple((d, params[d]) for d in rollups.DIMENSIONS if params.get(d) is not None)
    return Query(resolution, start, end, group_by, filters)


def buckets(query: Query) -> list[tuple[str, float]]:
    """(bucket name, its start in unix seconds) from ``start`` to ``end``."""
    hourly = query.resolution == "hour"
    step = timedelta(hours=1) if hourly else timedelta(days=1)
    moment = datetime.fromtimestamp(query.start, UTC)
    moment = moment.replace(minute=0, second=0, microsecond=0)
    if not hourly:
        moment = moment.replace(hour=0)
    found = []
    while moment.timestamp() <= query.end:
        found.append((moment.strftime("%Y%m%d%H" if hourly else "%Y%m%d"), moment.timestamp()))
        moment += step
    return found


def empty_counts() -> dict[str, Any]:
    return {**{name: 0 for name in rollups.COUNTS}, "bounced_class": {}}


def add_count(counts: dict[str, Any], metric: str, n: int) -> None:
    if metric.startswith(rollups.CLASS_PREFIX):
        classes = counts["bounced_class"]
        name = metric.removeprefix(rollups.CLASS_PREFIX)
        classes[name] = classes.get(name, 0) + n
    elif metric in counts:
        counts[metric] += n


def rates_of(counts: dict[str, Any]) -> dict[str, Any]:
    """Rates and their denominators; a rate is null when its denominator is 0."""
    known = counts["delivered"] + counts["bounced"]
    denominators = {"delivered+bounced": known, "delivered": counts["delivered"]}
    rates = {}
    for name, (numerator, over) in RATES.items():
        base = denominators[over]
        rates[name] = round(counts[numerator] / base, 6) if base else None
    return {
        "rates": rates,
        "denominators": {
            name: {"of": over, "messages": denominators[over]} for name, (_, over) in RATES.items()
        },
        "low_volume": known < MIN_VOLUME,
    }


def _grouped(counters: Counter[str], query: Query) -> dict[tuple[str, ...], dict[str, Any]]:
    """Counts per group of ``query.group_by`` values, keeping what the filters allow."""
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for name, n in counters.items():
        parsed = rollups.parse_field(name)
        if parsed is None:
            continue
        metric, dims = parsed
        if any(dims.value(d) != value for d, value in query.filters):
            continue
        key = tuple(dims.value(d) for d in query.group_by)
        add_count(groups.setdefault(key, empty_counts()), metric, n)
    return groups


async def stats(store: Store, query: Query) -> dict[str, Any]:
    """``GET /v1/stats``: a row per bucket and group that counted anything."""
    spans = buckets(query)
    resolution = RESOLUTIONS[query.resolution]
    found = await store.rollups.counters(resolution, [name for name, _ in spans])
    rows = []
    for name, start in spans:
        for key, counts in sorted(_grouped(found[name], query).items()):
            rows.append(
                {
                    "start": iso_time(start),
                    **dict(zip(query.group_by, key, strict=True)),
                    "counts": counts,
                    **rates_of(counts),
                }
            )
    return {
        "resolution": query.resolution,
        "from": iso_time(spans[0][1]) if spans else None,
        "to": iso_time(query.end),
        "group_by": list(query.group_by),
        "filters": dict(query.filters),
        "rows": rows,
    }


async def totals(store: Store, query: Query) -> dict[tuple[str, ...], dict[str, Any]]:
    """Counts per group over the whole range (no rows per bucket)."""
    resolution = RESOLUTIONS[query.resolution]
    found = await store.rollups.counters(resolution, [name for name, _ in buckets(query)])
    merged: Counter[str] = Counter()
    for counters in found.values():
        merged.update(counters)
    return _grouped(merged, query)


async def campaigns(store: Store, query: Query) -> dict[str, Any]:
    """``GET /v1/campaigns``: every campaign with counts in the range, most accepted first."""
    per = await totals(store, Query("day", query.start, query.end, ("campaign",), query.filters))
    listed = [
        {"campaign": key[0], "counts": counts, **rates_of(counts)}
        for key, counts in per.items()
        if key[0]
    ]
    listed.sort(key=lambda c: (-c["counts"]["accepted"], c["campaign"]))
    return {"from": iso_time(query.start), "to": iso_time(query.end), "campaigns": listed}


async def campaign_report(store: Store, campaign: str, query: Query) -> dict[str, Any] | None:
    """``GET /v1/campaigns/{campaign}``: funnel, providers, bounce classes with sample
    replies, links, and an hourly timeline (the last 48 hours of the range)."""
    scoped = (*query.filters, ("campaign", campaign))
    whole = await totals(store, Query("day", query.start, query.end, (), scoped))
    counts = whole.get((), None)
    if counts is None:
        return None
    by_provider = await totals(store, Query("day", query.start, query.end, ("provider",), scoped))
    classes = []
    for name, n in sorted(counts["bounced_class"].items(), key=lambda kv: -kv[1]):
        samples = await store.rollups.bounce_samples(campaign, name)
        classes.append({"class": name, "count": n, "samples": samples})
    found = await store.rollups.counters(
        rollups.DAILY, [name for name, _ in buckets(Query("day", query.start, query.end))]
    )
    links: dict[str, dict[str, int]] = {}
    for counters in found.values():
        for name, n in counters.items():
            parsed = rollups.parse_link(name)
            if parsed is None or parsed[0] != campaign:
                continue
            entry = links.setdefault(parsed[1], {"human": 0, "machine": 0})
            entry["machine" if parsed[2] else "human"] += n
    timeline_start = max(query.start, query.end - 48 * 3600 + 1)
    timeline = await stats(store, Query("hour", timeline_start, query.end, (), scoped))
    return {
        "campaign": campaign,
        "from": iso_time(query.start),
        "to": iso_time(query.end),
        "counts": counts,
        **rates_of(counts),
        "funnel": [
            {"step": step, "messages": counts[step]}
            for step in ("accepted", "delivered", "opened", "clicked")
        ],
        "providers": [
            {"provider": key[0], "counts": c, **rates_of(c)}
            for key, c in sorted(by_provider.items())
        ],
        "bounce_classes": classes,
        "links": [
            {"url": url, **n}
            for url, n in sorted(links.items(), key=lambda kv: -(kv[1]["human"] + kv[1]["machine"]))
        ],
        "timeline": [{"start": row["start"], "counts": row["counts"]} for row in timeline["rows"]],
    }
