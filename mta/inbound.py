"""The inbound SMTP server (``--inbound``): bounces and complaints coming back.

It accepts mail only for Sluice's own VERP return paths and List-Unsubscribe
mailto addresses (signed, see ``mta.verp``) and for ``fbl@`` feedback-loop
addresses; anything else is
refused at RCPT time. A delivery status notification (RFC 3464, or a common
non-standard layout) becomes a ``bounced`` event for the original message, with
the verdict of ``mta.replies`` (``bounce_class``, ``hard``, ``status``: the
RFC 3463 code, ``smtp_code``, ``reason``: the diagnostic, ``source: "dsn"``);
only a hard bounce (the address is dead) puts the address on the suppression
list. An ARF report (RFC 5965) becomes a ``complained`` event and a
``complaint`` suppression. Auto-replies, delay and success notices are
accepted and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from core import keys
from core.events import EventType, pack_event
from core.ids import split_message_id
from core.settings import HostPort, WarmupSettings
from core.store import Store
from mta.bounces import Report, parse_report
from mta.verp import Verp
from warmup.gate import WarmupGate

log = logging.getLogger(__name__)

FEEDBACK_LOCAL_PARTS = frozenset({"fbl", "arf", "abuse-reports"})
MAX_REPORT_BYTES = 10 * 1024 * 1024


class InboundHandler:
    def __init__(
        self, store: Store, verp: Verp, unsubscribe: Verp | None = None,
        warmup: WarmupGate | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.verp = verp
        self.unsubscribe = unsubscribe
        self.warmup = warmup  # complaints about mail from a warming IP count against it

    def _unsubscribes(self, address: str) -> str | None:
        return self.unsubscribe.message_id(address) if self.unsubscribe is not None else None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local = address.rpartition("@")[0].lower()
        known = self.verp.message_id(address) or self._unsubscribes(address)
        if known is None and local not in FEEDBACK_LOCAL_PARTS:
            return "550 5.1.1 No such recipient here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

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
        await self._event(message_id, context, "", EventType.UNSUBSCRIBED,
                          scope=category or "global", method="mailto")  # fmt: skip
        log.info("message=%s %s unsubscribed by mail", message_id, email)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        leaving = [m for m in map(self._unsubscribes, envelope.rcpt_tos) if m is not None]
        if leaving:
            for leaver in leaving:
                await self._mailto_unsubscribe(leaver)
            return "250 2.0.0 OK: unsubscribed"
        try:
            # CPU-bound (a hostile multi-megabyte report takes seconds): off the event loop
            report = await asyncio.to_thread(parse_report, bytes(raw))
            for rcpt in envelope.rcpt_tos:
                message_id = self.verp.message_id(rcpt) or _ours(report.original_message_id)
                if message_id is None:
                    log.info("inbound report for no known message (kind %s) dropped", report.kind)
                    continue
                await self._record(message_id, report)
        except Exception:  # a report we cannot read must not bounce back: log it and accept
            log.exception("inbound report could not be processed")
        return "250 2.0.0 OK: report received"

    async def _record(self, message_id: str, report: Report) -> None:
        context = await self.store.message_context(message_id)
        if context is None:
            log.info("inbound %s for unknown or expired message %s", report.kind, message_id)
            return
        email = context["email"]
        if report.kind == "arf":
            await self.store.suppressions.add(email, reason="complaint", source=f"arf:{message_id}")
            sent_by: list[Any] = await self.store.redis.hmget(
                keys.message(message_id), ["ip", "pv"]
            )
            if self.warmup is not None and sent_by[0] and sent_by[1]:
                await self.warmup.record(
                    sent_by[0].decode(), sent_by[1].decode(), "complained", time.time()
                )
            await self._event(message_id, context, "", EventType.COMPLAINED,
                              feedback_type=report.feedback_type)  # fmt: skip
            log.info("message=%s complaint (%s) from %s", message_id, report.feedback_type, email)
            return
        if report.kind != "dsn":
            log.info("message=%s inbound %s dropped", message_id, report.kind)
            return
        failed = [
            r for r in report.recipients
            if r.action in ("failed", None) and r.verdict.outcome == "permanent"
        ]  # fmt: skip
        if not failed:
            log.info("message=%s delay or success notice dropped", message_id)
            return
        # a VERP message has one recipient: the report's line about it, else its only failure
        rcpt = next((r for r in failed if r.email.lower() == email.lower()), failed[0])
        if rcpt.verdict.hard:
            await self.store.suppressions.add(
                email, reason="hard_bounce", source=f"dsn:{message_id}"
            )
        await self._event(
            message_id, context, "bounced", EventType.BOUNCED,
            smtp_code=rcpt.smtp_code, status=rcpt.status,
            bounce_class=rcpt.verdict.bounce_class or "other", hard=rcpt.verdict.hard,
            reason=rcpt.diagnostic[:500], source="dsn",
        )  # fmt: skip
        log.info(
            "message=%s bounced later (%s %s, %s%s)", message_id, rcpt.status, email,
            rcpt.verdict.bounce_class, ", hard: suppressed" if rcpt.verdict.hard else "",
        )  # fmt: skip

    async def _event(
        self,
        message_id: str,
        context: dict[str, Any],
        message_status: str,
        kind: EventType,
        **fields: Any,
    ) -> None:
        """Record an event; ``message_status`` (``bounced``, or ``""`` to keep it) is the
        message's new status, ``fields`` the event's own (``status`` there is an RFC 3463 code)."""
        event = pack_event(
            kind, timestamp=time.time(), message_id=message_id, email=context["email"],
            contact_id=context["contact_id"], category=context["category"],
            metadata=context["metadata"], **fields,
        )  # fmt: skip
        await self.store.complete(
            entry_id="", message_id=message_id, status=message_status, event=event
        )


def _ours(header_message_id: str | None) -> str | None:
    """Sluice's message id from a Message-ID header ``<batch-index@domain>``, if it is one."""
    if not header_message_id:
        return None
    local = header_message_id.strip().strip("<>").partition("@")[0]
    return local if split_message_id(local) is not None else None


async def start_inbound(
    store: Store,
    verp: Verp,
    listen: HostPort,
    hostname: str,
    unsubscribe: Verp | None = None,
    warmup: WarmupSettings | None = None,
) -> asyncio.Server:
    gate = WarmupGate(store, warmup) if warmup is not None else None
    handler = InboundHandler(store, verp, unsubscribe, gate)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname=hostname,
            data_size_limit=MAX_REPORT_BYTES,
            decode_data=False,
            timeout=60,
        ),
        listen.host,
        listen.port,
    )
    log.info("inbound SMTP (bounces, complaints) on %s", listen)
    return server
