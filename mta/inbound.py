"""The inbound SMTP server (``--inbound``): bounces and complaints coming back.

**What it acts on.** Anyone can connect to this port and write anything, so a report changes
something only when it names a message by a token Sluice signed (HMAC with the data dir's
``verp-key``), which only someone who received that message can know:

- the VERP return path ``bounce+<message id>.<signature>@`` (``mta.verp``) the report was
  sent to: a delivery status notification (RFC 3464, or a common non-standard layout) becomes
  a ``bounced`` event for that message, whatever other message its body names;
- the List-Unsubscribe ``mailto:`` address ``unsubscribe+<message id>.<signature>@``: whatever
  the mail says, the recipient leaves;
- for mail to the ``fbl@``, ``arf@`` and ``abuse-reports@`` feedback-loop addresses, which
  providers send ARF reports (RFC 5965) to, the Message-ID the report quotes from the original
  message: Sluice writes it as ``<message id>.<signature>@<from domain>`` (``mta.message_ids``).

A report that names a message any other way (an unsigned ``<batch-index@domain>`` id from
before signing, a forged or wrong signature, a message whose record expired, no Message-ID at
all) changes nothing: no suppression, no warmup signal, no event. It is kept in a capped list
of unverified reports and counted (``Store.record_unverified``), and logged without addresses.

A bounce becomes a ``bounced`` event with the verdict of ``mta.replies`` (``bounce_class``,
``hard``, ``status``: the RFC 3463 code, ``smtp_code``, ``reason``: the diagnostic,
``source: "dsn"``); only a hard bounce (the address is dead) suppresses it. A complaint becomes
a ``complained`` event, a ``complaint`` suppression and, for mail from a warming IP, a
complaint signal for its warmup. Each counts once per message (``Store.record_report``,
atomic): the same report sent again, or to twenty ``fbl@`` recipients in one transaction,
changes nothing more. Auto-replies, delay and success notices are accepted and dropped.

**Limits before work.** Recipients per transaction (452 after ``MAX_RECIPIENTS``), open
connections (421 beyond ``MAX_CONNECTIONS``) and the message size (552 over
``MAX_REPORT_BYTES``; DATA is read in blocks, ``mta.inbound_server``). Then a pre-scan of the
raw bytes refuses, with a 552 naming the limit, more MIME parts, header fields or reported
recipients than any real report has (``over_limits``: byte counts and sliced regular
expressions; a report of 200,000 tiny parts, which took 20 s to parse, is refused in
milliseconds). The pre-scan and the parse run in a thread, one at a time (``MAX_PARSES``):
they hold the GIL the gateway's event loop needs, so a parse slows HTTP requests a little.
The slowest shape measured within the limits (10 MB of folded header lines) parses in about
1.5 s, while ``/healthz`` on the same process answered within about 120 ms (worst of three
runs).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from core.clock import Clock
from core.events import EventType, pack_event
from core.logs import address
from core.settings import HostPort, WarmupSettings
from core.store import Outcome, Store, UnverifiedReport
from core.suppressions import SoftBounceLimit
from mta.bounces import Report, parse_report
from mta.inbound_server import protocol_factory
from mta.message_ids import MessageIds
from mta.soft_bounces import LIMIT_EVENT, bounce_is_soft
from mta.verp import Verp
from warmup.gate import WarmupGate

log = logging.getLogger(__name__)

FEEDBACK_LOCAL_PARTS = frozenset({"fbl", "arf", "abuse-reports"})
# RFC 5965 feedback types that say nothing against the recipient: a DMARC failure report
# about our own message, a "this is not spam" vote.
NOT_COMPLAINTS = frozenset({"auth-failure", "not-spam"})
MAX_REPORT_BYTES = 10 * 1024 * 1024  # real reports attach the original message; ours are smaller
MAX_RECIPIENTS = 100  # RFC 5321 4.5.3.1.8: a server must take 100; a report needs one
MAX_CONNECTIONS = 32  # a report a connection is the norm; each may hold ~25 MB while read
MAX_PARSES = 1  # the GIL runs one parse at a time anyway; two take more turns from the loop
PARSE_WAIT = 30.0  # seconds a report waits for a parse slot before a 451 (the sender retries)
MAX_MIME_PARTS = 1000  # lines starting "--": real reports have under 15; a part costs ~0.1 ms
MAX_HEADER_FIELDS = 10_000  # field-like lines: real reports < 400, quoting 2 MB of HTML ~5,500
MAX_REPORTED_RECIPIENTS = 100  # reports about our mail name one; parsing costs ~1.5 ms each

# What the email package takes for a MIME delimiter (a line starting "--") and for a header
# field; what the report parsers take for a recipient's field group (quoted with "> " or not).
_DELIMITERS = (b"\n--", b"\r--")
_FIELD_LINE = re.compile(rb"[\r\n][!-9;-~]*:")
_RECIPIENT_FIELD = re.compile(
    rb"[\r\n](?:> ?)*(?:final-recipient|original-recipient|x-actual-recipient|original-rcpt-to"
    rb"|removal-recipient)[ \t]*:",
    re.IGNORECASE,
)
_SCAN_SLICE = 64 * 1024  # a regular expression scans this much at once (under 10 ms)


def _at_most(pattern: re.Pattern[bytes], raw: bytes, limit: int) -> int:
    """Matches of ``pattern`` in ``raw``, counted up to ``limit + 1`` (a flood stops early),
    a slice at a time: one scan holds the GIL, and the event loop waits for it."""
    count = 0
    for start in range(0, len(raw), _SCAN_SLICE):
        for _ in pattern.finditer(raw, start, start + _SCAN_SLICE):
            count += 1
            if count > limit:
                return count
    return count


def over_limits(raw: bytes) -> str | None:
    """The SMTP reply refusing a report too complex for any real one, or None to parse it.
    CPU-bound on line-heavy input (0.5 s for 10 MB of two-byte lines): call it in a thread."""
    if sum(raw.count(delimiter) for delimiter in _DELIMITERS) > MAX_MIME_PARTS:
        return f"552 5.3.4 Too many MIME parts for a report (limit {MAX_MIME_PARTS})"
    if _at_most(_FIELD_LINE, raw, MAX_HEADER_FIELDS) > MAX_HEADER_FIELDS:
        return f"552 5.3.4 Too many header fields for a report (limit {MAX_HEADER_FIELDS})"
    if _at_most(_RECIPIENT_FIELD, raw, MAX_REPORTED_RECIPIENTS) > MAX_REPORTED_RECIPIENTS:
        return f"552 5.3.4 Too many recipients in a report (limit {MAX_REPORTED_RECIPIENTS})"
    return None


def read_report(raw: bytes) -> Report | str:
    """The report, or the SMTP reply refusing it unparsed (``over_limits``)."""
    return over_limits(raw) or parse_report(raw)


class InboundHandler:
    def __init__(
        self,
        store: Store,
        verp: Verp,
        unsubscribe: Verp,
        message_ids: MessageIds,
        warmup: WarmupGate | None = None,
        soft_bounce: SoftBounceLimit | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.verp = verp
        self.unsubscribe = unsubscribe
        self.message_ids = message_ids
        self.warmup = warmup  # complaints about mail from a warming IP count against it
        self.soft_bounce = soft_bounce  # soft bounces reported count toward it (None: not)
        self.parses = asyncio.Semaphore(MAX_PARSES)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return f"452 4.5.3 Too many recipients (limit {MAX_RECIPIENTS})"
        local = address.rpartition("@")[0].lower()
        known = self.verp.message_id(address) or self.unsubscribe.message_id(address)
        if known is None and local not in FEEDBACK_LOCAL_PARTS:
            return "550 5.1.1 No such recipient here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = bytes(envelope.original_content or b"")
        leaving = _unique(map(self.unsubscribe.message_id, envelope.rcpt_tos))
        if leaving:
            for leaver in leaving:
                await self._mailto_unsubscribe(leaver)
            return "250 2.0.0 OK: unsubscribed"
        try:
            await asyncio.wait_for(self.parses.acquire(), PARSE_WAIT)
        except TimeoutError:
            return "451 4.3.2 Too many reports at once, try again later"
        report = await self._read(raw)
        if isinstance(report, str):
            log.info(
                "inbound report of %d bytes from %s refused: %s", len(raw), _peer(session), report
            )
            return report
        try:
            await self._act(report, envelope, _peer(session))
        except Exception:  # a report we cannot record must not bounce back: log it and accept
            log.exception("inbound report could not be processed")
        return "250 2.0.0 OK: report received"

    async def _read(self, raw: bytes) -> Report | str:
        """``read_report`` in a thread (CPU-bound: milliseconds for a real report, up to about
        1.5 s within the limits), holding a parse slot until the thread ends, even if the
        sender hangs up first: a thread cannot be cancelled."""
        reading = asyncio.ensure_future(asyncio.to_thread(read_report, raw))
        reading.add_done_callback(lambda _: self.parses.release())
        return await asyncio.shield(reading)

    async def _act(self, report: Report, envelope: Envelope, peer: str) -> None:
        """Record the report for the messages it was sent about, or as unverified."""
        returned = _unique(map(self.verp.message_id, envelope.rcpt_tos))
        if returned:  # sent to signed return paths: about those messages, whatever it quotes
            for message_id in returned:
                if not await self._record(message_id, report):
                    await self._unverified(report, peer, "unknown message", message_id)
            return
        claim = self.message_ids.check(report.original_message_id)
        if claim.message_id is None:
            await self._unverified(report, peer, claim.problem or "unsigned")
        elif not await self._record(claim.message_id, report):
            await self._unverified(report, peer, "unknown message")

    async def _unverified(
        self, report: Report, peer: str, reason: str, claimed: str | None = None
    ) -> None:
        claimed = claimed or report.original_message_id or ""
        await self.store.record_unverified(
            UnverifiedReport(report.kind, claimed, peer, self.clock(), reason)
        )
        log.info(
            "unverified %s report from %s (%s: %r) changed nothing",
            report.kind,
            peer,
            reason,
            claimed[:100],
        )

    async def _mailto_unsubscribe(self, message_id: str) -> None:
        """Mail to the List-Unsubscribe mailto: whatever it says, the recipient leaves."""
        context = await self.store.message_context(message_id)
        if context is None:
            log.info("unsubscribe mail for unknown or expired message %s", message_id)
            return
        email, category = context["email"], context["category"]
        existing = await self.store.suppressions.check(email, category)
        if existing is not None and existing.reason == "unsubscribe":
            return
        await self.store.suppressions.add(
            email, reason="unsubscribe", source=f"mailto:{message_id}", category=category
        )
        event = self._event(
            message_id, context, EventType.UNSUBSCRIBED, scope=category or "global", method="mailto"
        )
        await self.store.complete(Outcome("", message_id, "", event), now=self.clock())
        log.info("message=%s %s unsubscribed by mail", message_id, address(email))

    def _event(
        self, message_id: str, context: dict[str, Any], kind: EventType, **fields: Any
    ) -> bytes:
        """An event about a message; ``fields`` are the event's own (``status`` there is an
        RFC 3463 code)."""
        return pack_event(
            kind,
            timestamp=self.clock(),
            message_id=message_id,
            email=context["email"],
            contact_id=context["contact_id"],
            category=context["category"],
            metadata=context["metadata"],
            campaign=context.get("campaign"),
            **fields,
        )

    async def _record(self, message_id: str, report: Report) -> bool:
        """Act on a report about one of our messages; False if that message is unknown."""
        context = await self.store.message_context(message_id)
        if context is None:
            return False
        if report.kind == "arf" and report.feedback_type in NOT_COMPLAINTS:
            log.info(
                "message=%s %s report: not a complaint, dropped", message_id, report.feedback_type
            )
        elif report.kind == "arf":
            await self._complaint(message_id, context, report)
        elif report.kind == "dsn":
            await self._bounce(message_id, context, report)
        else:
            log.info("message=%s inbound %s dropped", message_id, report.kind)
        return True

    async def _complaint(self, message_id: str, context: dict[str, Any], report: Report) -> None:
        email = context["email"]
        event = self._event(
            message_id, context, EventType.COMPLAINED, feedback_type=report.feedback_type
        )
        suppress = (email, "complaint", f"arf:{message_id}")
        first = await self.store.record_report(
            message_id, "complained", event, suppress=suppress, now=self.clock()
        )
        if first is None:
            log.info(
                "message=%s complaint (%s) again: counted once", message_id, report.feedback_type
            )
            return
        if self.warmup is not None and first.ip is not None and first.provider is not None:
            await self.warmup.record(first.ip, first.provider, "complained", self.clock())
        log.info(
            "message=%s complaint (%s) from %s", message_id, report.feedback_type, address(email)
        )

    async def _bounce(self, message_id: str, context: dict[str, Any], report: Report) -> None:
        email = context["email"]
        failed = [
            r
            for r in report.recipients
            if r.action in ("failed", None) and r.verdict.outcome == "permanent"
        ]
        if not failed:
            log.info("message=%s delay or success notice dropped", message_id)
            return
        # a VERP message has one recipient: the report's line about it, else its only failure
        rcpt = next((r for r in failed if r.email.lower() == email.lower()), failed[0])
        hard = rcpt.verdict.hard
        bounce_class = rcpt.verdict.bounce_class or "other"
        soft = bounce_is_soft(bounce_class, hard)
        event = self._event(
            message_id,
            context,
            EventType.BOUNCED,
            smtp_code=rcpt.smtp_code,
            status=rcpt.status,
            bounce_class=bounce_class,
            hard=hard,
            soft_bounce=soft,
            reason=rcpt.diagnostic[:500],
            source="dsn",
        )
        suppress = (email, "hard_bounce", f"dsn:{message_id}") if hard else None
        suppressed = b""  # recorded only if this message takes its address to the limit
        if soft and self.soft_bounce is not None and self.soft_bounce.enabled:
            suppressed = self._event(message_id, context, EventType.SUPPRESSED, **LIMIT_EVENT)
        first = await self.store.record_report(
            message_id,
            "bounced",
            event,
            status="bounced",
            suppress=suppress,
            recipient=email,
            soft_bounced=suppressed,
            soft_bounce=self.soft_bounce,
            now=self.clock(),
        )
        if first is None:
            log.info("message=%s bounce report again: counted once", message_id)
            return
        log.info(
            "message=%s bounced later (%s %s, %s%s)",
            message_id,
            rcpt.status,
            address(email),
            rcpt.verdict.bounce_class,
            ", hard: suppressed" if hard else "",
        )


def _unique(message_ids: Iterable[str | None]) -> list[str]:
    """The message ids named, each once, in order (twenty RCPTs for one message are one)."""
    return list(dict.fromkeys(m for m in message_ids if m is not None))


def _peer(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")


async def start_inbound(
    store: Store,
    verp: Verp,
    listen: HostPort,
    hostname: str,
    unsubscribe: Verp,
    message_ids: MessageIds,
    warmup: WarmupSettings | None = None,
    soft_bounce: SoftBounceLimit | None = None,
    clock: Clock = time.time,
) -> asyncio.Server:
    """``soft_bounce``: reported soft bounces count toward it (``mta.soft_bounces``);
    ``clock``: the time of day reports are recorded at (``core.clock``)."""
    gate = WarmupGate(store, warmup) if warmup is not None else None
    handler = InboundHandler(store, verp, unsubscribe, message_ids, gate, soft_bounce, clock)
    protocol = protocol_factory(
        handler,
        max_connections=MAX_CONNECTIONS,
        hostname=hostname,
        data_size_limit=MAX_REPORT_BYTES,
        decode_data=False,
        timeout=60,
    )
    server = await asyncio.get_running_loop().create_server(protocol, listen.host, listen.port)
    log.info("inbound SMTP (bounces, complaints) on %s", listen)
    return server
