"""Recording delivery outcomes in groups: one script call for the deliveries that finish
together, not one per delivery.

A worker finishes deliveries at the rate the receiving servers answer, hundreds a second,
and each outcome is a few Redis writes (``core/lua/complete.lua``). Made one call each, the
round trips and the per-call work on both sides cost more than the writes. ``Outcomes``
commits them the way a database commits a group of transactions: the first outcome to
arrive starts a commit at the loop's next turn; what arrives while a commit is on its way
waits for the next one. A quiet worker commits each outcome alone, at once. A busy one (a
commit ended less than ``BUSY_WITHIN`` ago) first gathers for ``COMMIT_DELAY``, as a
database's commit delay does: a Redis call costs its client ~100 us of CPU whatever it
carries, and without the delay a worker finishing ~900 deliveries a second committed them
~4 at a time (0.25 calls a message); with it, ~12 (``loadtests/bench_e2e``'s Redis calls
per message). A delivery holds its slot 5 ms longer, of the ~200 ms it waits for a
connection at that rate.

The guarantee is the one a single call gave: ``record`` returns once the outcome is in
Redis, and a delivery holds its slot until then. A process killed between sending and
recording leaves at most its deliveries in flight unrecorded; their jobs are still pending
in the stream and are delivered once more (at least once, at most one duplicate per job in
flight). A failed call fails every outcome of its group: their jobs stay pending, like any
other delivery that failed unexpectedly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from core.clock import Clock
from core.store import Outcome, Store
from core.suppressions import SoftBounceLimit

MAX_GROUP = 256  # outcomes per script call: bounds the script's run, Redis serves others between
COMMIT_DELAY = 0.005  # seconds a busy worker gathers outcomes before a commit
BUSY_WITHIN = 0.05  # a worker is busy when its last commit ended this recently


class Outcomes:
    """Group commit of delivery outcomes into a ``Store``."""

    def __init__(
        self,
        store: Store,
        clock: Clock = time.time,
        soft_bounce: SoftBounceLimit | None = None,
    ) -> None:
        self.store = store
        self.clock = clock  # the time each group is recorded at
        self.soft_bounce = soft_bounce  # when soft-bounced messages suppress their address
        self._waiting: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._committing: asyncio.Task[None] | None = None
        self._last_commit = -1.0  # when the last commit ended (monotonic)

    async def record(self, outcome: Outcome) -> None:
        """Record ``outcome`` with whatever else is waiting; returns once it is committed. A
        cancelled caller's outcome is still committed (what happened, happened)."""
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # a cancelled caller no longer reads it
        self._waiting.append((outcome, future))
        if self._committing is None:
            self._committing = asyncio.create_task(self._commit())
        await asyncio.shield(future)

    async def _commit(self) -> None:
        group: list[tuple[Outcome, asyncio.Future[None]]] = []
        try:
            while self._waiting:
                if time.monotonic() - self._last_commit < BUSY_WITHIN:
                    await asyncio.sleep(COMMIT_DELAY)
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                try:
                    await self.store.complete_many(
                        [outcome for outcome, _ in group],
                        now=self.clock(),
                        soft_bounce=self.soft_bounce,
                    )
                except Exception as exc:
                    for _, future in group:
                        future.set_exception(exc)
                else:
                    for _, future in group:
                        future.set_result(None)
                self._last_commit = time.monotonic()
        finally:  # cancelled (the loop is closing): nothing more is committed
            for _, future in group + self._waiting:
                if not future.done():
                    future.cancel()
            self._waiting = []
            self._committing = None

    async def aclose(self) -> None:
        """Wait for what is waiting to be committed (or to fail)."""
        while self._committing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._committing)


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
