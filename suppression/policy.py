"""The contact policy document: frequency caps and quiet hours (``GET|PUT /v1/policy``).

``parse_policy`` validates what ``PUT /v1/policy`` takes (every problem a 400 naming the
field); the stored JSON is read back with ``load_policy`` (cached). The rules themselves
are ``suppression.caps`` and ``suppression.quiet_hours``.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from datetime import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core import validate
from core.errors import ValidationError
from suppression.caps import MAX_LIMIT, MAX_RULES, MAX_WINDOW_SECONDS, CapRule
from suppression.quiet_hours import DEFAULT_RAMP_SECONDS, MAX_RAMP_SECONDS, QuietHours

_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True)
class Policy:
    frequency_caps: tuple[CapRule, ...] = ()
    quiet_hours: QuietHours | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "frequency_caps": [rule.as_json() for rule in self.frequency_caps],
            "quiet_hours": self.quiet_hours.as_json() if self.quiet_hours else None,
        }

    def document(self) -> str:
        """``as_json`` as stored (``Store.set_policy``), compact."""
        return json.dumps(self.as_json(), separators=(",", ":"))

    def rules_for(self, stream: str, category: str | None) -> list[CapRule]:
        if stream != "marketing":
            return []
        return [rule for rule in self.frequency_caps if rule.applies_to(category)]


# --- parsing -----------------------------------------------------------------------------


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
        if category != "*":
            validate.category(category, f"{path}.category")
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
