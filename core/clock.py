"""The time of day, for what Sluice decides by the calendar.

A ``Clock`` is a function returning unix seconds; ``time.time`` everywhere Sluice runs. The
intake (a ``send_at``, quiet hours, cap windows), the delivery worker (retry times, expiry
after ``SLUICE_MAX_DEFERRAL``, the quiet hours of a retry) and the outcomes it records (the
days of the soft-bounce limit) take one, so that a test can live through a week of
deferrals in a second: it passes a ``ManualClock`` and moves it. What measures this process
rather than the calendar keeps ``time.monotonic``: timeouts, latencies, a destination's
back-off, how stale a cached read is.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]


class ManualClock:
    """A clock that moves only when told to: ``clock()`` is ``at`` plus every ``advance``."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at

    def advance(self, seconds: float) -> float:
        """Move on by ``seconds``; the new time."""
        self.at += seconds
        return self.at

    def __repr__(self) -> str:
        return f"ManualClock({self.at:.3f})"
