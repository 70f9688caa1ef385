"""The contact policy: frequency caps and quiet hours (``GET|PUT /v1/policy``).

**Frequency caps.** A rule counts the marketing messages of one category (or of
every category, ``"*"``) sent to one contact (``contact_id``, else the normalized
address) and allows at most ``limit`` in any ``window_seconds`` (a rolling window,
to the millisecond). A message counts from the moment it is accepted for sending,
at the time it is due to go out. When a message would break a rule, ``drop``
makes it ``capped`` and ``defer`` schedules it at the earliest moment every rule
allows; several rules are enforced together. Transactional messages are exempt.
The check and the count are one Lua script (``core/lua/accept.lua``), atomic per
batch however many gateway processes share the Redis.

**Quiet hours.** ``start``-``end`` in the recipient's local time (``timezone`` of
the recipient, else ``default_timezone``), possibly across midnight. A marketing
message due inside the window is scheduled at its end plus an offset spread over
``ramp_seconds`` (taken from the message id, so it is stable), so that a morning
does not begin with every held message at once. Wall-clock times are converted
with ``zoneinfo``, so a window on a DST-change day has its real length.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.errors import ValidationError

MAX_RULES = 20
MAX_LIMIT = 10_000
MAX_WINDOW_SECONDS = 30 * 86400
MAX_RAMP_SECONDS = 6 * 3600
DEFAULT_RAMP_SECONDS = 1800
QUIET_HORIZON_DAYS = 64  # send_at (30 days ahead) plus the longest cap window, with margin
_CATEGORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True)
class CapRule:
    category: str  # "*": every marketing message
    limit: int
    window_seconds: int
    action: str  # "drop" | "defer"

    @property
    def key(self) -> str:
        """Names the rule's counters: a rule keeps its counts when only its limit or action change."""
        return f"{self.category}:{self.window_seconds}"

    def applies_to(self, category: str | None) -> bool:
        return self.category == "*" or self.category == category

    def as_json(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "limit": self.limit,
            "window_seconds": self.window_seconds,
            "action": self.action,
        }


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


@dataclass(frozen=True)
class Policy:
    frequency_caps: tuple[CapRule, ...] = ()
    quiet_hours: QuietHours | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "frequency_caps": [rule.as_json() for rule in self.frequency_caps],
            "quiet_hours": self.quiet_hours.as_json() if self.quiet_hours else None,
        }

    def rules_for(self, stream: str, category: str | None) -> list[CapRule]:
        if stream != "marketing":
            return []
        return [rule for rule in self.frequency_caps if rule.applies_to(category)]


# --- parsing --------------------------------------------------------------------------------


def _fail(path: str, detail: str) -> ValidationError:
    return ValidationError(detail, field=path)


def _int(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(path, f"'{path}' must be a whole number from {low} to {high}")
    return value


def _keys(value: object, path: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, f"'{path}' must be an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(f"{path}.{unknown[0]}", f"'{path}.{unknown[0]}' is not a known field")
    missing = sorted(required - set(value))
    if missing:
        raise _fail(f"{path}.{missing[0]}", f"'{path}.{missing[0]}' is required")
    return value


def _clock(value: object, path: str) -> time:
    match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _fail(path, f"'{path}' must be a local time HH:MM, e.g. \"21:00\"")
    return time(int(match.group(1)), int(match.group(2)))


def zone(name: object, path: str) -> ZoneInfo:
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or name.startswith(("/", ".")):
        raise _fail(path, f"'{path}' must be an IANA time zone name such as Europe/Istanbul")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise _fail(
            path, f"unknown time zone {name[:64]!r} (use an IANA name such as Europe/Istanbul)"
        ) from exc


def parse_policy(body: object) -> Policy:
    body = _keys(body, "policy", {"frequency_caps", "quiet_hours"}, set())
    rules: list[CapRule] = []
    caps = body.get("frequency_caps") or []
    if not isinstance(caps, list) or len(caps) > MAX_RULES:
        raise _fail(
            "frequency_caps", f"'frequency_caps' must be a list of at most {MAX_RULES} rules"
        )
    for i, raw in enumerate(caps):
        path = f"frequency_caps[{i}]"
        item = _keys(
            raw,
            path,
            {"category", "limit", "window_seconds", "action"},
            {"category", "limit", "window_seconds"},
        )
        category = item["category"]
        if not isinstance(category, str) or not (category == "*" or _CATEGORY.fullmatch(category)):
            raise _fail(f"{path}.category", f"'{path}.category' must be \"*\" or a category name")
        action = item.get("action", "drop")
        if action not in ("drop", "defer"):
            raise _fail(f"{path}.action", f'\'{path}.action\' must be "drop" or "defer"')
        rule = CapRule(
            category=category,
            limit=_int(item["limit"], f"{path}.limit", 1, MAX_LIMIT),
            window_seconds=_int(
                item["window_seconds"], f"{path}.window_seconds", 1, MAX_WINDOW_SECONDS
            ),
            action=action,
        )
        if any(r.key == rule.key for r in rules):
            raise _fail(path, f"two rules for category {category!r} with the same window")
        rules.append(rule)
    quiet = None
    if body.get("quiet_hours") is not None:
        raw = _keys(
            body["quiet_hours"],
            "quiet_hours",
            {"start", "end", "default_timezone", "ramp_seconds"},
            {"start", "end"},
        )
        start, end = (
            _clock(raw["start"], "quiet_hours.start"),
            _clock(raw["end"], "quiet_hours.end"),
        )
        if start == end:
            raise _fail("quiet_hours.end", "'quiet_hours.end' must differ from 'start'")
        default = raw.get("default_timezone", "UTC")
        zone(default, "quiet_hours.default_timezone")
        ramp = raw.get("ramp_seconds", DEFAULT_RAMP_SECONDS)
        quiet = QuietHours(
            start, end, default, _int(ramp, "quiet_hours.ramp_seconds", 0, MAX_RAMP_SECONDS)
        )
    return Policy(tuple(rules), quiet)


def load_policy(text: str | bytes | None) -> Policy:
    """The stored policy (JSON written by ``PUT /v1/policy``); no policy: nothing enforced."""
    return _cached_policy(text.decode() if isinstance(text, bytes) else text)


@functools.lru_cache(maxsize=8)
def _cached_policy(text: str | None) -> Policy:
    return Policy() if not text else parse_policy(json.loads(text))


# --- quiet hours ----------------------------------------------------------------------------


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


def iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")
