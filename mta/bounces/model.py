"""The facts a bounce, complaint or auto-reply carries: ``Report`` and its ``Recipient`` list."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from mta.replies import BounceClass, Command, Verdict, classify, find_enhanced

Kind = Literal["dsn", "arf", "autoreply", "delivered", "unknown"]
Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
ACTIONS: frozenset[str] = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})

_STATUS = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
_DELIVERED = Verdict("delivered", None, None, throttle=False, hard=False)


@dataclass(frozen=True)
class Recipient:
    """One recipient of the original message and what happened to it.

    ``email``: the recipient the report is about (DSN Final-Recipient, else Original-Recipient;
    ARF Original-Rcpt-To; the author of an auto-reply), domain lowercased.
    ``original_recipient``: the DSN Original-Recipient, when it differs from ``email``.
    ``action``: the DSN action (``failed``, ``delayed``, ``delivered``, ``relayed``,
    ``expanded``) or ``None`` (complaints, auto-replies).
    ``status``: the RFC 3463 code (``"5.1.1"``) or ``None``; ``smtp_code``: the reply code.
    ``diagnostic``: the reply text or the MTA's explanation, unfolded.
    ``remote_mta``: the host that gave the reply, when known.
    ``command``: the SMTP command the reply answered (``CONN``, ``HELO``, ``MAIL``, ``RCPT``,
    ``DATA``, or ``DOT`` for the message itself), when the report says.
    ``verdict``: ``mta.replies.classify`` of the code and diagnostic; ``delivered`` for
    complaints and auto-replies (the message did arrive).
    """

    email: str
    action: Action | None
    status: str | None
    smtp_code: int | None
    diagnostic: str
    verdict: Verdict
    original_recipient: str | None = None
    remote_mta: str | None = None
    command: Command | None = None


@dataclass(frozen=True)
class Report:
    """What one inbound report says.

    ``kind``: ``dsn`` (a bounce or delay notice: RFC 3464 or a known plain-text layout),
    ``arf`` (an RFC 5965 complaint or a provider's equivalent), ``autoreply`` (RFC 3834),
    ``delivered`` (a DSN whose recipients were all delivered/relayed/expanded) or ``unknown``.
    ``layout``: the name of the parser that understood the message (``rfc3464``, ``qmail``...).
    ``original_message_id`` and ``original_headers`` (``Message-ID``, ``From``, ``To``,
    ``Subject``, ``X-Sluice-Message-ID`` when present) come from the returned message or headers.
    ARF fields: ``feedback_type`` (lowercased), ``arf_user_agent``, ``arf_version``,
    ``source_ip``, ``original_mail_from``, ``arrival_date``. ``reporting_mta`` for DSNs.
    """

    kind: Kind
    recipients: tuple[Recipient, ...] = ()
    layout: str | None = None
    feedback_type: str | None = None
    original_message_id: str | None = None
    original_headers: dict[str, str] = field(default_factory=dict)
    arf_user_agent: str | None = None
    arf_version: str | None = None
    source_ip: str | None = None
    original_mail_from: str | None = None
    arrival_date: str | None = None
    reporting_mta: str | None = None

    @property
    def failed(self) -> tuple[Recipient, ...]:
        """The recipients whose delivery failed for good."""
        return tuple(r for r in self.recipients if r.verdict.outcome == "permanent")


UNKNOWN = Report(kind="unknown")


def clean_status(value: str | None) -> str | None:
    """``"5.1.1 (user unknown)"`` -> ``"5.1.1"``; anything without a code -> ``None``."""
    if not value:
        return None
    match = _STATUS.match(value)
    return match.group(1) if match else None


def _basic_code(action: str | None, status: str | None, smtp_code: int | None) -> int:
    if smtp_code is not None:
        return smtp_code
    if status is not None:
        return {"2": 250, "4": 450, "5": 550}[status[0]]
    return {"failed": 550, "delayed": 450}.get(action or "", 0)


def make_recipient(
    email: str,
    *,
    action: str | None = None,
    status: str | None = None,
    smtp_code: int | None = None,
    diagnostic: str = "",
    original_recipient: str | None = None,
    remote_mta: str | None = None,
    command: Command | None = None,
    reported: tuple[BounceClass, bool] | None = None,
    quoted: bool | None = None,
) -> Recipient:
    """Build a recipient, choosing the best status and classifying its reply.

    An enhanced code inside the diagnostic beats the ``Status`` field (MTAs often put a generic
    ``5.0.0`` or ``4.4.7`` there and the receiver's real code in the diagnostic). The verdict's
    outcome follows the action: a ``failed`` recipient is permanent even after 4xx replies (the
    message was given up on; not hard: the last reply was only temporary), a
    ``delivered``/``relayed``/``expanded`` one is delivered. A ``failed`` recipient's last reply
    is read knowing the sender gave up (``classify(..., gave_up=True)``): after days of "450
    4.1.1 user unknown" at RCPT TO the address is dead.

    ``quoted``: the reply is another system's, relayed by the reporting MTA (``classify``'s
    ``quoted``: a "no such user" is then hard only with proof: answered to ``RCPT TO``, an
    x.1.x code, a directory's wording). By default a reply is quoted when it names a remote MTA
    or is in an SMTP reply's terms (a reply code or an enhanced status code in the diagnostic);
    a reason in plain words is the reporting MTA's own about its own mailboxes (IMail's
    "Unknown user: ...", a carrier's own notice): first-hand, as a directory would say it.
    ``reported``: the reporting MTA's own reading (class, address dead), such as PowerMTA's
    bounce category; it decides the class of a permanent failure, and proves a dead address
    when it agrees with the text's class.
    """
    act: Action | None = action if action in ACTIONS else None  # type: ignore[assignment]
    status = clean_status(status)
    in_text = find_enhanced(diagnostic, smtp_code)
    if in_text is not None and (status is None or in_text[0] == status[0] or act == "failed"):
        status = in_text
    if quoted is None:
        quoted = smtp_code is not None or remote_mta is not None or in_text is not None
    if act in ("delivered", "relayed", "expanded"):
        verdict = classify(250, f"{status or ''} {diagnostic}".strip())
    else:
        code = _basic_code(act, status, smtp_code)
        text = diagnostic if status is None or status in diagnostic else f"{status} {diagnostic}"
        verdict = classify(
            code,
            text,
            command=command,
            quoted=quoted,
            gave_up=act == "failed",
            recipient=email if remote_mta else None,
        )
        if act == "failed" and verdict.outcome != "permanent":  # a 2xx reply, or no code
            verdict = dataclasses.replace(
                verdict,
                outcome="permanent",
                hard=False,
                bounce_class=verdict.bounce_class or "other",
            )
        elif act == "delayed" and verdict.outcome == "permanent":
            verdict = dataclasses.replace(verdict, outcome="transient", hard=False)
        if reported is not None and verdict.outcome == "permanent":
            reported_class, dead = reported
            agrees = verdict.bounce_class == reported_class
            verdict = dataclasses.replace(
                verdict, bounce_class=reported_class, hard=dead and (agrees or verdict.hard)
            )
    if verdict.enhanced is not None and status is None:
        status = verdict.enhanced
    return Recipient(
        email=email,
        action=act,
        status=status,
        smtp_code=smtp_code,
        diagnostic=diagnostic,
        verdict=verdict,
        original_recipient=original_recipient if original_recipient != email else None,
        remote_mta=remote_mta,
        command=command,
    )


def report_kind(recipients: Sequence[Recipient]) -> Kind:
    """``delivered`` when every recipient was delivered, relayed or expanded (by its action,
    or, without one, by a 2.x.x status or a 2xx reply); else ``dsn``."""
    if recipients and all(
        r.action in ("delivered", "relayed", "expanded")
        or (r.action is None and r.verdict.outcome == "delivered")
        for r in recipients
    ):
        return "delivered"
    return "dsn"


def reached(email: str) -> Recipient:
    """A recipient of a complaint or an auto-reply: the message reached them."""
    return Recipient(
        email=email, action=None, status=None, smtp_code=None, diagnostic="", verdict=_DELIVERED
    )
