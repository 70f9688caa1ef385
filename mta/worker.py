"""Delivery workers: consume the jobs stream at least once and deliver.

Each worker process reads jobs through the ``delivery`` consumer group, renders
and builds the message, sends it through a pooled SMTP connection and records
the outcome atomically (``complete.lua``). A job read but not finished by a
worker that died is taken over by another after ``STALE_AFTER_MS``; a worker
that restarts under the same name first finishes its own unfinished jobs.

Shutdown has two stages: stop reading, wait for in-flight transactions up to
the drain timeout, then cancel what is left (those jobs stay pending in the
stream and are delivered after the next start).

``run_until_idle`` is the same loop in burst mode, as arq has it: it returns once
no job is ready and none is in flight, so a test delivers in-process, with the
real code path, and then looks at the outcome without polling.

Templates are compiled and rendered on the worker's own render threads
(``RENDER_THREADS``), not on its event loop: a render may take up to its budget
(``MAX_RENDER_SECONDS``) and the loop keeps every other delivery's SMTP
conversation going meanwhile. A render over budget bounces the message
(``bounce_class: content``) like any other template failure. Measured with uvloop
on the fixture, 1,000 renders 100 at a time: 0.040 ms of CPU per message rendered
in the loop, 0.076 ms through one thread, 0.097 ms through two (0.03 to 0.06 ms
per message, against ~1.6 ms of worker CPU per message end to end). Two, so that
one slow render does not hold up the renders of the messages behind it. The one
exception is a plain template (``mta.render._plain``: it prints at most a few values
of the recipient's validated data, like the fixture), which cannot spend a budget
and renders in about 10 us on the loop, saving the hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

from core.addresses import domain_of
from core.clock import Clock
from core.errors import (
    DeliveryError,
    PermanentDeliveryError,
    SenderPaused,
    TransientDeliveryError,
    WarmupDeferral,
)
from core.events import EventType, pack_event
from core.jobs import BatchContent, Job, QueuedJob
from core.metrics import DeliveryMetrics, use_directory
from core.settings import DeliverySettings, Secret, Settings
from core.store import Outcome, Store, open_store
from core.suppressions import Suppression
from mta.composer import KEPT_BATCHES, Composer, Memo
from mta.dkim import DkimSignError
from mta.mime import MimeError
from mta.outcomes import Outcomes
from mta.pool import SmtpPool
from mta.render import RenderError, TemplateError
from mta.routing import Destination, Router
from mta.soft_bounces import LIMIT_EVENT, bounce_is_soft, expiry_is_soft
from suppression.policy import Policy, load_policy
from suppression.quiet_hours import after_quiet_hours, intervals_from, ramp_offset
from warmup.gate import WarmupGate
from warmup.providers import provider_of

log = logging.getLogger(__name__)
T = TypeVar("T")

STALE_AFTER_MS = 60_000
RENDER_THREADS = 2
RECENT_SECONDS = 1.0  # how stale a worker's paused campaigns and senders and policy may be
SENDER_PAUSED_RETRY_SECONDS = 300.0  # a message whose every IP is paused looks again then
GATHER_SECONDS = 0.02  # how long a worker at its limit waits for more free slots before reading


class _Recent(Generic[T]):
    """A value read from Redis, read again once ``RECENT_SECONDS`` have passed."""

    def __init__(self, read: Callable[[], Awaitable[T]], empty: T) -> None:
        self._read = read
        self._value = empty
        self._at = -RECENT_SECONDS

    async def get(self) -> T:
        now = time.monotonic()
        if now - self._at > RECENT_SECONDS:
            self._value = await self._read()
            self._at = now
        return self._value

    def forget(self) -> None:
        """Read it again next time."""
        self._at = -RECENT_SECONDS


async def _names(read: Callable[[], Awaitable[Mapping[str, Any]]]) -> frozenset[str]:
    return frozenset(await read())


def _stop_if_cancelled() -> None:
    """Raise the cancellation of the current task if one was asked for: redis-py (8.1, seen
    with its hiredis parser) can swallow a cancellation that lands inside a command, and a
    cancelled burst run must not go on to wait for its deliveries."""
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError


def campaign_of(batch: BatchContent) -> str:
    """What a batch's messages are grouped and paused under: its campaign, else category."""
    return batch.campaign or batch.category or ""


FINAL_STATUSES = frozenset(
    {"delivered", "bounced", "expired", "rejected", "suppressed", "cancelled"}
)


def retry_delay(schedule: tuple[float, ...], attempts: int) -> float:
    """Delay before attempt number ``attempts + 1`` (attempts >= 1 already made)."""
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        name: str,
        verp_key: Secret,
        *,
        clock: Clock = time.time,
    ) -> None:
        """``clock``: the time of day of retries, expiry and what is recorded
        (``core.clock``; tests pass a ``ManualClock``)."""
        self.settings = settings
        self.clock = clock
        self.delivery: DeliverySettings = settings.delivery
        self.store = store
        self.name = name
        self.stopping = asyncio.Event()
        self.batches: Memo[BatchContent | None] = Memo(KEPT_BATCHES)
        # what holds mail back on purpose, read at most once a second (a pause holds the
        # next reads): paused campaigns, and paused "ip:provider" pairs
        self.paused_campaigns: _Recent[frozenset[str]] = _Recent(
            functools.partial(_names, store.control.paused), frozenset()
        )
        self.paused_senders: _Recent[frozenset[str]] = _Recent(
            functools.partial(_names, store.control.paused_senders), frozenset()
        )
        self.policy = _Recent(self._read_policy, Policy())  # quiet hours hold retries too
        self.outcomes = Outcomes(store, clock, self.delivery.soft_bounce_limit)
        self.renderer = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix=f"{name}-render")
        self.composer = Composer(settings, store, verp_key, self.renderer)
        self.router = Router(self.delivery)
        workers = max(1, self.delivery.workers)  # each worker takes its share of the limits
        self.pool = SmtpPool(
            ehlo_name=self.delivery.ehlo_name,
            timeout=self.delivery.smtp_timeout,
            per_host=math.ceil(self.delivery.max_connections_per_host / workers),
            per_domain=math.ceil(self.delivery.max_connections_per_domain / workers),
            messages_per_connection=self.delivery.messages_per_connection,
            idle_timeout=self.delivery.idle_timeout,
            throttle_backoff=self.delivery.throttle_backoff,
            ehlo_by_ip={s.ip: s.ehlo_name for s in self.delivery.ips if s.ehlo_name},
        )
        self.pools: dict[str, list[str]] = {}
        for sending in self.delivery.ips:
            self.pools.setdefault(sending.pool, []).append(sending.ip)
        self.warmup = WarmupGate(store, settings.warmup)
        self.limit = self.delivery.concurrency_per_worker
        self.capacity = asyncio.Semaphore(self.limit)
        self._gathered = max(1, self.limit // 4)  # free slots _gather_slots waits for
        self._slots_gathered = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.metrics = DeliveryMetrics()

    # --- loops ----------------------------------------------------------------

    async def run(self) -> None:
        await self.store.ensure_group()
        self.composer.load()
        log.info(
            "worker %s ready (pid %d): up to %d deliveries at once",
            self.name,
            os.getpid(),
            self.limit,
        )
        housekeeping = asyncio.create_task(self._housekeeping())
        try:
            await self._dispatch_own_pending()
            while not self.stopping.is_set():
                async with self.capacity:  # wait until at least one slot is free
                    pass
                await self._gather_slots()
                free = max(1, self.limit - len(self.in_flight))
                try:
                    jobs = await self._read_unless_stopping(free)
                except Exception as exc:  # Redis restarting: keep the worker, retry shortly
                    log.warning("reading jobs failed: %s", exc)
                    await asyncio.sleep(1)
                    continue
                await self._dispatch(jobs)
        finally:
            housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await housekeeping
            await self._drain()
            await self.aclose()

    async def run_until_idle(self) -> None:
        """Deliver until the queue is idle, then return: arq's burst mode, so that a test (or
        a one-off run) knows when delivery is over. The same loop as ``run`` without the
        housekeeping task: promote the delayed jobs that are due, read what is ready, deliver
        it; idle is no job ready in the stream after a promotion and none in flight. A job
        delayed to later (a retry, a ``send_at``, quiet hours) stays delayed. The worker
        stays open for another run (``aclose`` closes it). Bound it with ``asyncio.timeout``:
        cancelled, it cancels the deliveries in flight (their jobs stay pending, for the
        next run)."""
        await self.store.ensure_group()
        try:
            await self._dispatch_own_pending()
            while True:
                await self._promote_due()
                await self.store.control.release_resumed()
                self.paused_campaigns.forget()  # a burst run reads them fresh
                self.paused_senders.forget()
                self.policy.forget()
                free = max(1, self.limit - len(self.in_flight))
                jobs = await self.store.read_jobs(self.name, count=free, block_ms=None)
                _stop_if_cancelled()
                if jobs:
                    await self._dispatch(jobs)
                elif self.in_flight:
                    await asyncio.wait(set(self.in_flight), return_when=asyncio.FIRST_COMPLETED)
                else:
                    return
        except BaseException:
            await self._cancel_in_flight()
            raise

    async def aclose(self) -> None:
        """Cancel what is still in flight (its jobs stay pending) and close the SMTP pool and
        the render threads."""
        await self._cancel_in_flight()
        await self.outcomes.aclose()
        await self.pool.aclose()
        # a render still running ends within its budget; nothing waits for it
        self.renderer.shutdown(wait=False, cancel_futures=True)

    async def _read_unless_stopping(self, count: int) -> list[QueuedJob]:
        """The next jobs, or none as soon as the worker is told to stop: with Redis gone, a read
        can wait up to the pool's timeout for a connection, and a stop must not wait for it.
        Jobs a cancelled read had already taken stay pending and are claimed again later."""
        read = asyncio.ensure_future(self.store.read_jobs(self.name, count=count, block_ms=500))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not read.done():
            read.cancel()
            await asyncio.wait({read})  # its outcome is dropped; our own cancellation is not
            if not read.cancelled():
                read.exception()  # retrieved, so asyncio does not log it as lost
            return []
        return read.result()

    async def _dispatch_own_pending(self) -> None:
        """At start: the jobs this worker's name read in an earlier life and never finished."""
        own = await self.store.read_jobs(self.name, count=1000, block_ms=None, own_pending=True)
        await self._dispatch(own, recovered=True)

    async def _dispatch(self, jobs: list[QueuedJob], *, recovered: bool = False) -> None:
        """Start a delivery for each job, as slots free up; the jobs that can start now are
        looked up together (``_prepare``), so that what they ask of Redis is one round trip
        and no answer waits long for its delivery."""
        at = 0
        while at < len(jobs):
            async with self.capacity:  # wait until at least one slot is free
                pass
            group = jobs[at : at + max(1, self.limit - len(self.in_flight))]
            at += len(group)
            try:
                ready = await self._prepare(group, recovered)
            except Exception as exc:  # they stay pending: taken over after STALE_AFTER_MS
                log.warning("looking up %d jobs failed: %s", len(group), exc)
                continue
            for queued, batch, suppressed in ready:
                await self.capacity.acquire()
                task = asyncio.create_task(self._deliver_guarded(queued, batch, suppressed))
                self.in_flight.add(task)
                task.add_done_callback(self._done)

    async def _prepare(
        self, group: list[QueuedJob], recovered: bool
    ) -> list[tuple[QueuedJob, BatchContent | None, Suppression | None]]:
        """Each job with its batch's content and the suppression entry that stops it: one
        round trip for all the checks. A recovered job whose message is already final (its
        outcome was recorded, the worker died before the acknowledgement) is acknowledged."""
        if recovered:
            statuses = await self.store.message_statuses([q.job.message_id for q in group])
            done = [
                q for q, status in zip(group, statuses, strict=True) if status in FINAL_STATUSES
            ]
            await self.store.acknowledge(done)
            group = [
                q for q, status in zip(group, statuses, strict=True) if status not in FINAL_STATUSES
            ]
        batches = {}
        for batch_id in dict.fromkeys(q.job.batch_id for q in group):
            batches[batch_id] = await self.batches.get(
                batch_id, functools.partial(self.store.batch_content, batch_id)
            )
        checked = [(q, batches[q.job.batch_id]) for q in group]
        paused = await self.paused_campaigns.get()
        if paused:
            held = [(q, b) for q, b in checked if b is not None and campaign_of(b) in paused]
            if held:
                await self._park(held)
                checked = [(q, b) for q, b in checked if b is None or campaign_of(b) not in paused]
        found = await self.store.suppressions.check_many(
            [(q.job.email, b.category, b.transactional) for q, b in checked if b is not None]
        )
        entries = iter(found)
        return [(q, b, next(entries) if b is not None else None) for q, b in checked]

    async def _park(self, held: list[tuple[QueuedJob, BatchContent]]) -> None:
        """Hold jobs of paused campaigns until they are resumed (``ControlStore.park``)."""
        groups: dict[tuple[int, str], list[tuple[QueuedJob, bytes]]] = {}
        for queued, batch in held:
            campaign = campaign_of(batch)
            event = pack_event(
                EventType.DEFERRED,
                timestamp=self.clock(),
                message_id=queued.job.message_id,
                email=queued.job.email,
                contact_id=queued.job.contact_id,
                category=batch.category,
                campaign=batch.campaign,
                metadata={**batch.metadata, **queued.job.metadata},
                held_by="paused",
                reason=f"campaign {campaign} is paused",
            )
            shard = self.store.shard_of(queued.job.message_id)
            groups.setdefault((shard.index, campaign), []).append((queued, event))
        for (index, campaign), jobs in groups.items():
            await self.store.control.park(self.store.shards.all[index], campaign, jobs)
        log.info("held %d messages of paused campaigns", len(held))

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self.capacity.release()
        if self.limit - len(self.in_flight) >= self._gathered:
            self._slots_gathered.set()

    async def _gather_slots(self) -> None:
        """With few slots free, wait a little for more before reading: jobs are read, looked
        up and started in groups, a Redis round trip each (~100 us of a worker's CPU
        whatever the group's size), and a worker at its limit frees a slot at a time. Up to
        ``GATHER_SECONDS`` for a quarter of the slots."""
        if self.limit - len(self.in_flight) >= self._gathered:
            return
        self._slots_gathered.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GATHER_SECONDS):
                await self._slots_gathered.wait()

    async def _drain(self) -> None:
        if not self.in_flight:
            return
        log.info(
            "draining %d in-flight deliveries (up to %.0fs)",
            len(self.in_flight),
            self.delivery.drain_timeout,
        )
        _, pending = await asyncio.wait(set(self.in_flight), timeout=self.delivery.drain_timeout)
        if pending:
            await self._cancel_in_flight()
            log.warning("%d deliveries cancelled at shutdown; they stay queued", len(pending))

    async def _cancel_in_flight(self) -> None:
        tasks = set(self.in_flight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _promote_due(self) -> None:
        """Move the delayed jobs that are due into the stream (500 a call)."""
        now = self.clock()
        while await self.store.promote_due(now=now) >= 500:
            pass

    async def _housekeeping(self) -> None:
        while True:
            try:
                await self._promote_due()
                if not self.stopping.is_set():
                    claimed = await self.store.claim_stale(
                        self.name, min_idle_ms=STALE_AFTER_MS, count=200
                    )
                    if claimed:
                        log.info("took over %d stale jobs", len(claimed))
                        await self._dispatch(claimed, recovered=True)
                await self.pool.close_idle()
                await self.store.publish_destinations(self.name, self.pool.snapshot())
                if await self.store.control.release_resumed():
                    log.info("released messages of resumed campaigns")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("housekeeping failed: %s", exc)
            await asyncio.sleep(0.5)

    # --- one job --------------------------------------------------------------

    async def _deliver_guarded(
        self, queued: QueuedJob, batch: BatchContent | None, suppressed: Suppression | None
    ) -> None:
        try:
            await self._deliver(queued, batch, suppressed)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left unacknowledged: another attempt happens after STALE_AFTER_MS.
            log.exception("delivery of %s failed unexpectedly", queued.job.message_id)

    async def _deliver(
        self, queued: QueuedJob, batch: BatchContent | None, suppressed: Suppression | None
    ) -> None:
        job = queued.job
        message_id = job.message_id
        if batch is None:
            await self._finish(queued, None, EventType.EXPIRED, reason="batch content expired")
            return
        if suppressed is not None:  # suppressed after the message was accepted
            await self._finish(
                queued,
                batch,
                EventType.SUPPRESSED,
                reason=suppressed.reason,
                scope=suppressed.category or "global",
                stage="delivery",  # suppressed after it was accepted: counted once, at accept
            )
            return
        started = time.monotonic()
        attempt = job.attempts + 1
        provider = provider_of(domain_of(job.email))
        try:
            dest, reply_code, source_ip = await self._send(batch, job)
        except (RenderError, MimeError, TemplateError, DkimSignError) as exc:
            self.metrics.attempt(provider, time.monotonic() - started)
            log.warning("message=%s cannot be built: %s", message_id, exc)
            await self._finish(
                queued,
                batch,
                EventType.BOUNCED,
                smtp_code=None,
                bounce_class="content",
                hard=False,
                status=None,
                reason=str(exc),
                attempt=attempt,
            )
        except PermanentDeliveryError as exc:
            self._attempted(
                message_id, provider, exc.host or "-", exc.smtp_code, started, "bounced"
            )
            await self._finish(
                queued,
                batch,
                EventType.BOUNCED,
                hard_bounced=exc.hard,  # suppressed with the outcome, in one script call
                smtp_code=exc.smtp_code,
                status=exc.status,
                bounce_class=exc.bounce_class,
                hard=exc.hard,
                reason=exc.detail,
                attempt=attempt,
                soft_bounced=bounce_is_soft(exc.bounce_class, exc.hard),
                **self._sent_from(exc.source_ip, batch, provider),
            )
        except TransientDeliveryError as exc:
            self._attempted(
                message_id, provider, exc.host or "-", exc.smtp_code, started, "deferred"
            )
            await self._defer(queued, batch, exc)
        else:
            self._attempted(message_id, provider, dest, reply_code, started, "delivered")
            await self._finish(
                queued,
                batch,
                EventType.DELIVERED,
                smtp_code=reply_code,
                mx=dest,
                attempt=attempt,
                **self._sent_from(source_ip, batch, provider),
            )

    def _sent_from(
        self, source_ip: str | None, batch: BatchContent, provider: str
    ) -> dict[str, Any]:
        """What an attempt's event says of where it went from: the mailbox provider, the
        sending IP and its pool (None: the host's default address), for statistics."""
        pool = batch.ip_pool if source_ip is not None else None
        if source_ip is not None and pool is None:
            pool = next((p for p, ips in self.pools.items() if source_ip in ips), None)
        return {"provider": provider, "ip": source_ip, "pool": pool}

    async def _send(self, batch: BatchContent, job: Job) -> tuple[str, int, str | None]:
        """Build and send one message; (destination, reply code, sending IP) or a
        DeliveryError (whose ``source_ip`` says the IP once one was chosen)."""
        message = await self.composer.compose(batch, job)
        recipient = job.email
        domain = domain_of(recipient)
        sender_domain = self.delivery.bounce_domain or domain_of(batch.sender.email)
        sender = self.composer.verp.return_path(job.message_id, sender_domain)
        destinations = await self.router.destinations(domain)
        source_ip, provider = await self._source_ip(
            batch.ip_pool, domain, destinations, job.message_id
        )
        failure: DeliveryError = TransientDeliveryError(f"no destination to try for {domain}")
        for dest in destinations:
            try:
                reply = await self.pool.send(
                    dest, domain, sender, recipient, message, source_ip=source_ip
                )
            except TransientDeliveryError as exc:
                exc.source_ip = source_ip
                if exc.smtp_code is not None or exc.throttle:
                    await self._warmup_signal(source_ip, provider, "deferred")
                    raise  # the host answered (or asked us to wait): not the next MX's business
                failure = exc  # could not talk to this host: try the next one
            except PermanentDeliveryError as exc:
                exc.source_ip = source_ip
                await self._warmup_signal(source_ip, provider, "bounced")
                raise
            else:
                await self._warmup_signal(source_ip, provider, "sent", job.message_id)
                return str(dest), reply.code, source_ip
        raise failure

    async def _warmup_signal(
        self, ip: str | None, provider: str | None, outcome: str, message_id: str | None = None
    ) -> None:
        """Feed a warming IP's outcome to its adaptive hold (nothing for warm IPs); a sent
        message remembers its IP and provider, for a complaint about it later."""
        if ip is None or provider is None:
            return
        configs = await self.warmup.configs()
        config = configs.get(ip)
        if config is None or self.warmup.budget_of(config, provider, self.clock()).warm:
            return
        if message_id is not None:
            await self.store.remember_sender(message_id, ip, provider)
        changed = await self.warmup.record(ip, provider, outcome, self.clock())
        if changed:
            log.warning("warmup of %s for %s %s", ip, provider, changed)

    async def _source_ip(
        self, pool: str | None, domain: str, destinations: list[Destination], message_id: str
    ) -> tuple[str | None, str | None]:
        """(sending IP, provider group): from the message's pool, within its warmup budget,
        taken once per message and day (a job sent again after a crash is not counted
        twice, and a retry goes out from the IP it took)."""
        name = pool if pool in self.pools else "default"
        members = self.pools.get(name)
        if not members:
            return None, None  # no --ips: the system picks the source address
        mx = destinations[0].host if destinations and destinations[0].via == "mx" else None
        provider = provider_of(domain, mx)
        paused = await self.paused_senders.get()
        if paused:
            # statistics (and so alerts) name the provider by the recipient's domain alone;
            # routing may know it by its MX: a pause under either name holds
            by_domain = provider_of(domain)
            members = [
                ip
                for ip in members
                if f"{ip}:{provider}" not in paused and f"{ip}:{by_domain}" not in paused
            ]
            if not members:
                raise SenderPaused(
                    f"every IP of pool {name} is paused at {provider}",
                    retry_after=SENDER_PAUSED_RETRY_SECONDS,
                )
        choice = await self.warmup.choose(members, provider, self.clock(), message_id)
        if choice.ip is None:
            raise WarmupDeferral(
                f"warmup: every IP of pool {name} has used its {provider} budget for now; "
                f"room again in {choice.wait:.0f}s",
                retry_after=choice.wait,
            )
        return choice.ip, provider

    def _attempted(
        self,
        message_id: str,
        provider: str,
        dest: str,
        code: int | None,
        started: float,
        outcome: str,
    ) -> None:
        """An attempt's summary line and its latency."""
        seconds = time.monotonic() - started
        self.metrics.attempt(provider, seconds)
        log.info(
            "message=%s dest=%s code=%s outcome=%s duration_ms=%.1f",
            message_id,
            dest,
            code or "-",
            outcome,
            seconds * 1000,
        )

    async def _defer(
        self, queued: QueuedJob, batch: BatchContent, exc: TransientDeliveryError
    ) -> None:
        job = queued.job.next_attempt()
        now = self.clock()
        deadline = job.accepted_at + self.delivery.max_deferral
        fields: dict[str, Any] = {
            "smtp_code": exc.smtp_code,
            "reason": exc.detail,
            "attempt": job.attempts,
            **self._sent_from(exc.source_ip, batch, provider_of(domain_of(job.email))),
        }
        if isinstance(exc, WarmupDeferral):
            fields["held_by"] = "warmup"
        elif isinstance(exc, SenderPaused):
            fields["held_by"] = "paused_sender"
        if now >= deadline:
            await self._finish(
                queued, batch, EventType.EXPIRED, soft_bounced=expiry_is_soft(exc), **fields
            )
            return
        delay = retry_delay(self.delivery.retry_schedule, job.attempts) * random.uniform(0.9, 1.1)
        if isinstance(exc, WarmupDeferral):
            # the next window, spread over its first minutes: budgets open on the hour
            delay = (exc.retry_after or 0.0) + random.uniform(0.0, 120.0)
        retry_at = min(now + max(delay, exc.retry_after or 0.0), deadline)
        after_quiet = await self._after_quiet_hours(batch, job, retry_at)
        if after_quiet > retry_at:  # even past the deadline: the last try, in the morning
            retry_at = after_quiet
            fields["next_attempt_held_by"] = "quiet_hours"
        await self._finish(
            queued,
            batch,
            EventType.DEFERRED,
            retry_job=job,
            retry_at=retry_at,
            next_attempt_at=round(retry_at, 3),
            **fields,
        )

    async def _after_quiet_hours(self, batch: BatchContent, job: Job, at: float) -> float:
        """``at``, or, for marketing mail due inside the recipient's quiet hours, the window's
        end plus the message's place in the ramp: a retry waits for the morning as the first
        attempt did (``suppression.quiet_hours``, the rule ``accept.lua`` applies)."""
        quiet = (await self.policy.get()).quiet_hours
        if quiet is None or batch.transactional:
            return at
        zone = job.timezone or quiet.default_timezone
        offset = ramp_offset(quiet, job.message_id)
        return after_quiet_hours(intervals_from(quiet, zone, at), at, offset)

    async def _read_policy(self) -> Policy:
        return load_policy(await self.store.policy())

    async def _finish(
        self,
        queued: QueuedJob,
        batch: BatchContent | None,
        kind: EventType,
        *,
        retry_job: Job | None = None,
        retry_at: float = 0.0,
        soft_bounced: bool = False,
        hard_bounced: bool = False,
        **fields: Any,
    ) -> None:
        """Record an outcome (``batch`` None: its content expired). ``soft_bounced``: the
        message ended soft-bounced (``mta.soft_bounces``): it counts toward its address's
        soft-bounce limit. ``hard_bounced``: its address is suppressed with the outcome."""
        job = queued.job
        if kind in (EventType.EXPIRED, EventType.BOUNCED):
            fields["soft_bounce"] = soft_bounced
        event = self._event(kind, job, batch, **fields)
        suppressed = b""
        if soft_bounced and self.delivery.soft_bounce_limit.enabled:
            suppressed = self._event(EventType.SUPPRESSED, job, batch, **LIMIT_EVENT)
        await self.outcomes.record(
            Outcome(
                queued.entry_id,
                job.message_id,
                kind.value,
                event,
                retry_job,
                retry_at,
                "" if retry_job is not None else domain_of(job.email),
                recipient=job.email,
                soft_bounced=suppressed,
                hard_bounced=hard_bounced,
            )
        )
        provider = fields.get("provider") or provider_of(domain_of(job.email))
        self.metrics.outcome(kind.value, provider, fields.get("ip") or "", fields.get("pool") or "")

    def _event(self, kind: EventType, job: Job, batch: BatchContent | None, **fields: Any) -> bytes:
        return pack_event(
            kind,
            timestamp=self.clock(),
            message_id=job.message_id,
            email=job.email,
            contact_id=job.contact_id,
            category=batch.category if batch else None,
            campaign=batch.campaign if batch else None,
            metadata={**(batch.metadata if batch else {}), **job.metadata},
            **fields,
        )


async def _worker_main(settings: Settings, redis_url: str, name: str, verp_key: Secret) -> None:
    async with open_store(redis_url) as store:
        worker = Worker(settings, store, name, verp_key)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, worker.stopping.set)
        await worker.run()


def run_worker_process(
    settings: Settings,
    redis_url: str,
    name: str,
    verp_key: Secret,
    log_level: int,
    parent: int,
    metrics_dir: Path,
) -> None:
    """Entry point of a worker process (multiprocessing, spawn); ``parent``: serve's pid;
    ``metrics_dir``: where the worker's metrics go (``core.metrics``), set before any exists."""
    from core.embedded_redis import die_with_parent
    from core.logs import setup_logging

    use_directory(metrics_dir)
    die_with_parent(parent)
    setup_logging(log_level, addresses=settings.log_addresses)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    import uvloop

    uvloop.run(_worker_main(settings, redis_url, name, verp_key))
