"""Quiet hours: marketing mail waits for the recipient's morning.

``start``-``end`` in the recipient's local time (``timezone`` of
the recipient, else ``default_timezone``), possibly across midnight. A marketing
message due inside the window is scheduled at its end plus an offset spread over
``ramp_seconds`` (taken from the message id, so it is stable), so that a morning
does not begin with every held message at once. Wall-clock times are converted
with ``zoneinfo``, so a window on a DST-change day has its real length.

Enforced with the caps in ``core/lua/accept.lua``: Python computes each time zone's
windows as UTC intervals for the coming ``QUIET_HORIZON_DAYS`` (``zoneinfo`` knows DST;
cached per zone and day) and the script moves a due time out of them
(``after_quiet_hours`` is the same rule in Python). A retry after a temporary failure is
held the same way: the delivery worker moves its due time with ``after_quiet_hours``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

MAX_RAMP_SECONDS = 6 * 3600
DEFAULT_RAMP_SECONDS = 1800
QUIET_HORIZON_DAYS = 64  # send_at (30 days ahead) plus the longest cap window, with margin


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time
    default_timezone: str
    ramp_seconds: int = DEFAULT_RAMP_SECONDS

    def as_json(self) -> dict[str, Any]:
        return {
            "start": self.start.strftime("%H:%M"),
            "end": self.end.strftime("%H:%M"),
            "default_timezone": self.default_timezone,
            "ramp_seconds": self.ramp_seconds,
        }


@functools.lru_cache(maxsize=512)
def quiet_intervals(
    quiet: QuietHours, zone_name: str, first_day: str
) -> tuple[tuple[float, float], ...]:
    """Quiet windows as UTC epoch intervals [start, end) for QUIET_HORIZON_DAYS local days
    from the day before ``first_day`` (ISO date) in ``zone_name``."""
    tz = ZoneInfo(zone_name)
    crosses = quiet.end < quiet.start
    day = datetime.fromisoformat(first_day).date() - timedelta(days=1)
    out = []
    for _ in range(QUIET_HORIZON_DAYS):
        begin = datetime.combine(day, quiet.start, tzinfo=tz)
        finish = datetime.combine(day + timedelta(days=1) if crosses else day, quiet.end, tzinfo=tz)
        a, b = begin.timestamp(), finish.timestamp()
        if b > a:
            out.append((round(a, 3), round(b, 3)))
        day += timedelta(days=1)
    return tuple(out)


def intervals_from(quiet: QuietHours, zone_name: str, at: float) -> tuple[tuple[float, float], ...]:
    first_day = datetime.fromtimestamp(at, ZoneInfo(zone_name)).date().isoformat()
    return quiet_intervals(quiet, zone_name, first_day)


def ramp_offset(quiet: QuietHours, message_id: str) -> float:
    """Where in the ramp this message goes: stable, spread evenly over message ids."""
    if quiet.ramp_seconds == 0:
        return 0.0
    digest = int.from_bytes(hashlib.blake2b(message_id.encode(), digest_size=8).digest(), "big")
    return round((digest % (quiet.ramp_seconds * 1000)) / 1000, 3)


def after_quiet_hours(
    intervals: tuple[tuple[float, float], ...], at: float, offset: float
) -> float:
    """``at``, or the end of the quiet window it falls in plus ``offset`` (what the Lua does)."""
    for start, end in intervals:
        if start <= at < end:
            return end + offset
    return at
