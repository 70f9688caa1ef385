"""Frequency caps: no contact gets the same kind of mail every time a trigger re-fires.

A rule counts the marketing messages of one category (or of
every category, ``"*"``) sent to one contact (``contact_id``, else the normalized
address) and allows at most ``limit`` in any ``window_seconds`` (a rolling window,
to the millisecond). A message counts from the moment it is accepted for sending,
at the time it is due to go out. When a message would break a rule, ``drop``
makes it ``capped`` and ``defer`` schedules it at the earliest moment every rule
allows; several rules are enforced together. Transactional messages are exempt.
The check and the count are one Lua script (``core/lua/accept.lua``), atomic per
batch however many gateway processes share the Redis.

**Where it is enforced.** In ``core/lua/accept.lua``, the one script that accepts a batch
(``Store.accept``), for every recipient together with suppression and quiet hours: the
contact's counted send times per rule are sorted sets (``keys.cap``), pruned and expiring
with their window; the script finds the earliest moment every rule allows and records the
message there. This module decides which rules apply to a request and passes them to the
script (``core.jobs.PolicyInput``); ``tests/test_policy.py`` holds the script to a brute-force model
of the invariant "no window (t - W, t] ending at a send holds more than the limit".
SMTP submission asks ``Store.capped_many`` for an early answer at RCPT time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core import suppressions

MAX_RULES = 20
MAX_LIMIT = 10_000
MAX_WINDOW_SECONDS = 30 * 86400


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


def contact_key(contact_id: str | None, address: str) -> str:
    """Whom frequency caps count for: the contact id, else the address."""
    return f"c:{contact_id}" if contact_id else f"a:{suppressions.canonical(address)}"
