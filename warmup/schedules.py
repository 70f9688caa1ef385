"""Warmup schedules: how many messages a new IP may send per day and hour, per mailbox provider.

A schedule is a list of daily limits by warmup day (day 0 first) that applies to
each provider group separately (Gmail counts its own reputation for the IP, as do
Microsoft and Yahoo). After its last day the IP is warm: no limit. Each day's
budget is spread over 24 hours: by the end of hour h of the (UTC) day at most
``daily * (h + 1) / 24`` may have left, and a single hour takes at most twice its
share, so an unused morning carries over only boundedly and the day is never
front-loaded.

Built-in schedules follow public ESP guidance (SendGrid's ~1.4x daily growth,
Amazon SES's 45 days to 50,000 a day per provider, Mailgun's staged plan):
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PROVIDERS = ("gmail", "microsoft", "yahoo", "apple", "other")


def _grow(start: int, factor: float, days: int, cap: int) -> tuple[int, ...]:
    out, value = [], float(start)
    for _ in range(days):
        out.append(min(cap, int(round(value, -1)) if value >= 100 else int(value)))
        value *= factor
    return tuple(out)


BUILT_IN: dict[str, tuple[int, ...]] = {
    # ~1.4x a day from 50 to about 100,000 a day per provider in 30 days
    "standard-30d": _grow(50, 1.31, 30, 100_000),
    # 45 days to 50,000 a day per provider (Amazon SES's managed warmup horizon)
    "conservative-45d": _grow(20, 1.195, 45, 50_000),
    # two weeks, for senders with an established domain and clean lists
    "aggressive-14d": _grow(200, 1.75, 14, 100_000),
}


@dataclass(frozen=True)
class Budget:
    daily: int  # 0: nothing today; -1: warm, no limit
    hourly: int  # one hour's share (ceil(daily / 24))

    @property
    def warm(self) -> bool:
        return self.daily < 0


WARM = Budget(-1, -1)


def schedule_named(name: str) -> tuple[int, ...]:
    try:
        return BUILT_IN[name]
    except KeyError:
        raise ValueError(
            f"unknown schedule {name!r}; built in: {', '.join(sorted(BUILT_IN))}, "
            "or a list of daily limits"
        ) from None


def parse_schedule(value: object) -> tuple[int, ...]:
    """A built-in name or a list of 1 to 365 daily limits (whole numbers, 0 to 10,000,000)."""
    if isinstance(value, str):
        return schedule_named(value)
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 365
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10_000_000 for v in value
        )
    ):
        raise ValueError("a schedule is a built-in name or a list of 1 to 365 daily limits")
    return tuple(value)


def budget(schedule: tuple[int, ...], day: int) -> Budget:
    if day >= len(schedule):
        return WARM
    daily = schedule[max(0, day)]
    return Budget(daily, math.ceil(daily / 24) if daily else 0)


def plan(schedule: tuple[int, ...]) -> list[dict[str, int]]:
    """Day by day: the daily and hourly budget for each provider group."""
    return [
        {"day": day, "daily": limit, "hourly": budget(schedule, day).hourly}
        for day, limit in enumerate(schedule)
    ]
