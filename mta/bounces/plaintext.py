"""Bounces written for people, not programs: qmail, Exim, old Gmail, and everything else.

Each layout finds the notification text (before the quoted original message), the failed
addresses in it and the lines explaining each failure, and hands them to ``make_recipient``,
which finds the SMTP code and enhanced status and classifies them.

* qmail: "Hi. This is the qmail-send program at ..." then ``<user@host>:`` blocks.
* Exim (and the many MTAs that copy it): "This message was created automatically by mail
  delivery software ... The following address(es) failed:" then an indented address per block.
* Gmail before 2014: "Delivery to the following recipient failed permanently:" / "has been
  delayed:" then "Technical details of permanent failure:".
* anything else from a mailer-daemon: every address of the notification that is not the
  sender's, with the lines around it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from email.message import Message

from mta.bounces.autoreply import is_daemon
from mta.bounces.model import Recipient, Report, make_recipient, report_kind
from mta.bounces.parts import (
    MAX_RECIPIENTS,
    address_from_field,
    addresses_in,
    body_text,
    header,
    original_headers,
    smtp_code_in,
    smtp_command,
    split_original,
    transcript_context,
    unfold,
)
from mta.replies import Command, find_enhanced

__all__ = ["parse_exim", "parse_gmail_text", "parse_qmail", "parse_text"]

_DELAYED = re.compile(
    r"delayed|has not yet been delivered|not been delivered yet|will (?:be retried|continue"
    r"|keep trying|retry)|warning message only|still (?:trying|being retried)"
    r"|temporar(?:y|ily) (?:failure|error|deferred|unable)|delivery attempts will continue",
    re.IGNORECASE,
)
_QUOTED_HEADERS = re.compile(
    r"^(?:Received: from|Return-Path:|DKIM-Signature:|X-Received:|Received-SPF:)", re.M | re.I
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (?:status|fail|notif|problem|error|report|delayed)|returned mail"
    r"|failure notice|mail delivery failed|non-?delivery|not delivered|could not be delivered"
    r"|mail system error|returning message|delivery error|rejected|bounce|failed delivery"
    r"|delivery has failed|nondeliverable|warning: (?:could not|message)|mail failure"
    r"|error sending|unable to deliver|permanent error|delay|mail could not",
    re.IGNORECASE,
)


_MAX_NOTICE = 64 * 1024
# The reason is another server's, relayed: "host mx.example.com said:", "Remote host said:"...
_REMOTE = re.compile(
    r"\b(?:host|server|mailer|mta|system)\b[^\n]{0,80}\b(?:said|says|replied|answered|returned"
    r"|responded)\b|\bremote (?:host|server|mta|system|mail)",
    re.IGNORECASE,
)


def _notice(msg: Message) -> str:
    """The notification text, without the quoted original message."""
    text, _ = split_original(body_text(msg))
    quoted = _QUOTED_HEADERS.search(text)
    if quoted is not None:
        text = text[: quoted.start()]
    return text[:_MAX_NOTICE]


_DELIVERED = re.compile(
    r"(?:successfully|has been|was) delivered|delivery (?:to [^\n]{0,80})?(?:is |was )?"
    r"(?:complete|successful)|(?:has been|was) relayed",
    re.IGNORECASE,
)
_FAILED = re.compile(
    r"could not|couldn't|not (?:be )?delivered|undeliverable|fail|error|reject|unable|refused",
    re.IGNORECASE,
)


def _action(text: str) -> str:
    if _DELAYED.search(text):
        return "delayed"
    if _DELIVERED.search(text) and not _FAILED.search(text):
        return "delivered"  # a success notice: "Your message has been delivered to ..."
    return "failed"


def _own_addresses(msg: Message) -> set[str]:
    """Addresses that are not failed recipients: the bounce's own and the original sender's."""
    own: set[str] = set()
    for name in ("From", "To", "Reply-To", "Sender", "Return-Path"):
        own.update(a.lower() for a in addresses_in(header(msg, name)))
    original_from = original_headers(msg).get("From", "")
    own.update(a.lower() for a in addresses_in(original_from))
    return own


def failed_recipients(msg: Message) -> list[str]:
    """The addresses of Exim's (and others') ``X-Failed-Recipients`` header, lowercased."""
    return [a.lower() for a in addresses_in(header(msg, "X-Failed-Recipients"))]


def _make(
    email: str,
    diagnostic: str,
    action: str,
    fallback: str = "",
    *,
    command: Command | None = None,
    status: str | None = None,
) -> Recipient:
    """A recipient from its lines; ``fallback`` (the whole notice) fills in a missing reason."""
    command = command or smtp_command(diagnostic)
    diagnostic = unfold(diagnostic)
    if smtp_code_in(diagnostic) is None and fallback:
        code_line = re.search(r"^\W{0,4}[45]\d\d[ -].*$", fallback, re.MULTILINE)
        if code_line is not None:
            diagnostic = unfold(f"{diagnostic} {code_line.group(0)}")
        elif find_enhanced(diagnostic) is None:
            diagnostic = unfold(f"{diagnostic} {fallback}")[:1000]
        command = command or smtp_command(fallback)
    code = smtp_code_in(diagnostic)
    if code is not None and 200 <= code <= 299 and action == "failed":
        action = "delivered"  # the recipient's own reply says so, whatever the notice's words
    return make_recipient(
        email,
        action=action,
        status=status,
        smtp_code=code,
        diagnostic=diagnostic,
        command=command,
        quoted=True if _REMOTE.search(diagnostic) else None,  # a reply code: quoted too
    )


def _from_blocks(
    blocks: list[tuple[str, list[str]]],
    action: str,
    clean: Callable[[str], str],
    status: re.Pattern[str] | None = None,
) -> list[Recipient]:
    """Recipients from (address, lines) blocks: the SMTP command is read from the lines as they
    were, the reason after ``clean`` took the layout's own wording off (and ``status``, if
    given, finds the enhanced status code in it)."""
    recipients = []
    for address, lines in blocks:
        email = address_from_field(address)
        if email is None:
            continue
        text = " ".join(lines)
        command = smtp_command(text)
        text = clean(text)
        found = status.search(text) if status is not None else None
        code = found.group(1) if found is not None else None
        recipients.append(_make(email, text, action, command=command, status=code))
    return recipients


def _report(layout: str, recipients: Iterable[Recipient]) -> Report | None:
    found = tuple(recipients)
    if not found:
        return None
    return Report(kind=report_kind(found), recipients=found, layout=layout)


# --- qmail ------------------------------------------------------------------------------

_QMAIL = re.compile(r"qmail-send program|I'm afraid I wasn't able to deliver", re.IGNORECASE)
_QMAIL_BLOCK = re.compile(r"^<([^<>\s]+@[^<>\s]+)>:?[ \t]*(.*)$")
_QMAIL_STATUS = re.compile(r"\(#([245]\.\d{1,3}\.\d{1,3})[^)]*\)")


def parse_qmail(msg: Message) -> Report | None:
    """qmail-send's "failure notice"; its ``(#5.1.1)`` is the enhanced status."""
    notice = _notice(msg)
    if not _QMAIL.search(notice):
        return None
    blocks: list[tuple[str, list[str]]] = []
    for line in notice.split("\n"):
        match = _QMAIL_BLOCK.match(line.strip())
        if match:
            blocks.append((match.group(1), [match.group(2)]))
        elif blocks and line.strip():
            blocks[-1][1].append(line.strip())
    action = "delayed" if "not yet" in notice.lower() else "failed"
    return _report("qmail", _from_blocks(blocks, action, _qmail_reason, _QMAIL_STATUS))


def _qmail_reason(text: str) -> str:
    return re.sub(r"\b(?:Remote host said|said):\s*", "", text)


# --- Exim -------------------------------------------------------------------------------

_EXIM = re.compile(
    r"created automatically by mail delivery software|could not be delivered to one or more"
    r"|has not yet been delivered to one or more",
    re.IGNORECASE,
)
_EXIM_START = re.compile(
    r"(?:following\s+address(?:\(es\)|es)?\s+failed|not yet been delivered is|address(?:es)? failed"
    r"|addresses? (?:to which|that)[^\n]*(?:is|are)|following recipients?[^\n]*):?[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_EXIM_ADDRESS = re.compile(r"^ {0,4}[\"<]?([^\s\"<>@]+@[^\s\"<>:]+)[\">]?:?(?:\s+(.*))?$")


def _wants_more(lines: list[str]) -> bool:
    """A block with no reason yet, or whose last line announces one ("reason:")."""
    filled = [line for line in lines if line.strip()]
    return not filled or filled[-1].endswith(":")


def parse_exim(msg: Message) -> Report | None:
    """Exim's "Mail delivery failed" and "Warning: message ... delayed" notices."""
    notice = _notice(msg)
    if not _EXIM.search(notice):
        return None
    start = _EXIM_START.search(notice)
    if start is None:
        return None
    body = notice[start.end() :]
    blocks: list[tuple[str, list[str]]] = []
    base = -1
    gap = False  # a blank line since the block's last line
    for line in body.split("\n"):
        match = _EXIM_ADDRESS.match(line.rstrip())
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            gap = True
            continue
        if match and (not blocks or indent <= base):
            base, gap = indent, False
            if all(b[0].lower() != match.group(1).lower() for b in blocks):
                blocks.append((match.group(1), [match.group(2) or ""]))
        elif blocks and (indent > base or not gap or _wants_more(blocks[-1][1])):
            blocks[-1][1].append(line.strip())  # indented, or the reason of gmx and 1&1
            gap = False
    action = _action(notice[: start.start()])
    return _report("exim", _from_blocks(blocks, action, _exim_reason))


def _exim_reason(text: str) -> str:
    text = re.sub(r"SMTP error from remote (?:mail server|mailer|server) after ", "", text)
    return re.sub(
        r"^(?:RCPT TO|RCPT command|end of data|DATA|initial connection)\S*:?", "", text.strip()
    )


# --- Gmail (old plain-text notices) -----------------------------------------------------

_GMAIL = re.compile(
    r"Delivery to the following recipients? (failed permanently|has been delayed|failed)",
    re.IGNORECASE,
)
_GMAIL_DETAILS = re.compile(r"Technical details(?: of (?:permanent|temporary) failure)?:?", re.I)


def parse_gmail_text(msg: Message) -> Report | None:
    """Gmail's notices from before it sent RFC 3464 reports."""
    notice = _notice(msg)
    match = _GMAIL.search(notice)
    if match is None:
        return None
    action = "delayed" if "delayed" in match.group(1).lower() else "failed"
    after = notice[match.end() :]
    details = _GMAIL_DETAILS.search(after)
    listing = after[: details.start()] if details else after.split("\n\n\n")[0]
    reason = after[details.end() :] if details else ""
    reason = re.sub(
        r"(?:Google tried to deliver your message, but it was rejected by the "
        r"(?:recipient domain|server for the recipient domain [^\n]*?)\.|"
        r"We recommend contacting the other email provider for further information about the "
        r"cause of this error\.|The error that the other server returned was:)",
        " ",
        unfold(reason),
    )
    addresses = [a for a in addresses_in(listing) if not a.lower().startswith("mailer-daemon")]
    return _report("gmail", (_make(a, reason, action) for a in addresses))


# --- everything else --------------------------------------------------------------------


_BOUNCE_TEXT = re.compile(
    r"could not be delivered|couldn't be delivered|was not delivered|undeliverable"
    r"|delivery (?:has )?failed|permanent (?:error|failure)|following address(?:es)? (?:had|failed)"
    r"|error message below|invalid (?:user|recipient) address|delivery to the following"
    r"|unable to deliver|did not reach|not be delivered|failed to deliver",
    re.IGNORECASE,
)


def looks_like_bounce(msg: Message) -> bool:
    """From a mail system, with a bounce's subject, or saying so in its first lines."""
    return (
        is_daemon(msg)
        or bool(_BOUNCE_SUBJECT.search(header(msg, "Subject")))
        or bool(_BOUNCE_TEXT.search(_notice(msg)[:2000]))
    )


_QUOTE = re.compile(r"^(?!>>> )(?:> ?)+")  # not a transcript's ">>> RCPT TO:"
_NOT_RECIPIENT_LINE = re.compile(
    r"^\s*(?:From|Sender|Reply-To|Return-Path|Message-I[dD]|Date|To|Cc|In-Reply-To|References)\s*:"
)
_LEAD_CHARS = " \t*-<>\"'"
_LEADING = re.compile(r"^[ \t*<>\"'-]*[^\s@<>]+@")


def parse_text(msg: Message) -> Report | None:
    """Any other notification from a mail system: its addresses and the lines around them."""
    if not looks_like_bounce(msg):
        return None
    notice = _notice(msg)
    failed = failed_recipients(msg)
    own = _own_addresses(msg)
    lines = [_QUOTE.sub("", line) for line in notice.split("\n")]
    seen: dict[str, tuple[str, int]] = {}  # lowercased address -> (address, line index)
    leading: list[tuple[str, int]] = []  # addresses that begin a line: the usual listing
    mentions: dict[str, list[int]] = {}  # lowercased address -> every line naming it
    for index, line in enumerate(lines):
        if _NOT_RECIPIENT_LINE.match(line) or len(seen) >= MAX_RECIPIENTS:
            continue
        for address in addresses_in(line):
            lowered = address.lower()
            if failed and lowered not in failed:
                continue
            if not failed and (lowered in own or lowered.startswith("mailer-daemon@")):
                continue
            mentions.setdefault(lowered, []).append(index)
            if lowered not in seen:
                seen[lowered] = (address, index)
                if _LEADING.match(line) and line.lstrip(_LEAD_CHARS).lower().startswith(lowered):
                    leading.append((address, index))
    found = leading if leading and not failed else list(seen.values())
    for address in failed:  # named in X-Failed-Recipients but not in the text
        if address not in seen:
            found.append((address, -1))
    if not found:  # nothing in the text: the recipients of the returned original
        original_to = original_headers(msg).get("To", "")
        found = [(a, -1) for a in addresses_in(original_to) if a.lower() not in own][:5]
    if not found:
        return None
    named = {a.lower() for a, _ in found}
    named_in = [{a for a in named if a in line.lower()} for line in lines]  # once per line
    action = _action(notice)
    recipients = []
    for address, index in found:
        # what is said about the others is not about this one: a summary listing two
        # recipients then "a: 550 5.1.1 ..." and "b: 552 5.2.2 ..." gives each its own reply
        me = {address.lower()}
        others = named - me
        starts = {i for other in others for i in mentions.get(other, [])}  # others' lines
        own_notice = "\n".join(
            line for line, names in zip(lines, named_in, strict=True) if names <= me
        )
        if index < 0:
            recipients.append(_make(address, "", action, fallback=own_notice))
            continue
        transcript = transcript_context(notice, address)
        if transcript:
            recipients.append(_make(address, transcript, action, fallback=own_notice))
            continue
        chunks = (_lines_from(lines, at, address, starts) for at in mentions[address.lower()])
        first = next(chunks)
        chunk = first if _has_reason(first) else next((c for c in chunks if _has_reason(c)), first)
        recipients.append(_make(address, chunk, action, fallback=own_notice))
    return _report("text", recipients)


def _lines_from(lines: list[str], index: int, address: str, starts: set[int]) -> str:
    """The line at ``index`` without ``address``, and the lines after it up to one about
    another recipient (``starts``)."""
    chunk = [re.sub(re.escape(address), " ", lines[index], flags=re.IGNORECASE)]
    for offset in range(index + 1, min(len(lines), index + 12)):
        if offset in starts or len(chunk) > 6:
            break
        if lines[offset].strip():
            chunk.append(lines[offset])
    return " ".join(chunk)


def _has_reason(chunk: str) -> bool:
    """A reply code, an enhanced status code or a few words, not just the address."""
    return (
        smtp_code_in(chunk) is not None
        or find_enhanced(chunk) is not None
        or len(re.findall(r"[^\W\d_]{3,}", chunk)) >= 2
    )
