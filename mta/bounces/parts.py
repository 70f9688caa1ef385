"""MIME and text helpers shared by the layout parsers. Nothing here raises on bad input."""

from __future__ import annotations

import email
import email.header
import email.policy
import re
from collections.abc import Iterator
from email.message import Message

from mta.replies import Command

__all__ = [
    "MAX_RECIPIENTS",
    "MAX_TEXT",
    "ORIGINAL_HEADERS",
    "address_from_field",
    "addresses_in",
    "body_text",
    "field_groups",
    "header",
    "load",
    "message_id",
    "original_headers",
    "part_text",
    "parts",
    "smtp_code_in",
    "smtp_command",
    "split_original",
    "transcript_context",
    "unfold",
]

ORIGINAL_HEADERS = ("Message-ID", "From", "To", "Subject", "X-Sluice-Message-ID")
MAX_RECIPIENTS = 1000  # a report about more recipients is cut there
MAX_TEXT = 256 * 1024  # a notification's text is short; more is an attachment or an attack
RFC822_TYPES = frozenset({"message/rfc822", "message/global"})
HEADER_TYPES = frozenset(
    {
        "text/rfc822-headers",
        "text/rfc822-header",
        "message/rfc822-headers",
        "text/rfc822",
        "message/global-headers",
    }
)

_ADDRESS = re.compile(
    r"(?<![\w.+=/-])([\w.!#$%&'*+/=?^`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}"
    r"(?:\.[A-Za-z0-9-]{1,63})*)?)(?![\w@-])"
)
# A reply code: "550 ...", "550-...", "(550)", Yahoo's "550: ...", Zoho's "ERROR_CODE :550,"
_SMTP_CODE = re.compile(r"(?:^|[\s:;(\[<\"'=])([245][0-5]\d)(?:[ \t\-:,]|$|\]|\))", re.MULTILINE)
_MBOX_FROM = re.compile(rb"\AFrom [^\r\n]*\r?\n")
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$")

# Lines after which a plain-text bounce quotes the original message (or its headers).
_ORIGINAL_MARKERS = re.compile(
    r"^[ \t>]*(?:-+|=+|\*+)?[ \t]*(?:"
    r"below this line is a copy of the message"
    r"|this is a copy of the message"
    r"|(?:the )?original message(?! was received)(?: headers?)?(?: (?:is|follows?|below|attached|header))?"
    r"|(?:below|enclosed|attached)(?: this line)? is a copy of"
    r"|(?:the )?header(?:s)? of (?:the |your )?original message"
    r"|message headers follow"
    r"|(?:un(?:sent|delivered)|returned|original|rejected) message (?:below|follows|headers?)"
    r"|(?:undelivered|returned) message(?: follows| headers)?"
    r"|(?:the )?original mail(?: message)? (?:follows|headers?|is)"
    r"|copy of (?:the |your )?(?:original )?message"
    r"|content-type: message/rfc822"
    r").{0,60}$",
    re.IGNORECASE | re.MULTILINE,
)


def load(raw: bytes) -> Message | None:
    """Parse ``raw`` leniently (compat32), dropping a leading mbox ``From`` line."""
    try:
        if not isinstance(raw, bytes | bytearray):
            return None
        data = _MBOX_FROM.sub(b"", bytes(raw).lstrip(b"\r\n"), count=1)
        if not data.strip():
            return None
        return email.message_from_bytes(data, policy=email.policy.compat32)
    except Exception:
        return None


def _clean(value: str) -> str:
    """Drop surrogate escapes left by compat32 for raw 8-bit bytes; decode raw ISO-2022-JP."""
    try:
        if "\x1b$B" in value or "\x1b$@" in value:
            return value.encode("ascii", "replace").decode("iso-2022-jp", "replace")
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        return value.encode("utf-8", "replace").decode("utf-8", "replace")


def header(msg: Message, name: str) -> str:
    """A header as unfolded text with RFC 2047 words decoded; ``""`` when absent."""
    try:
        value = msg.get(name)
        if value is None:
            return ""
        if isinstance(value, email.header.Header):
            text = str(value)
        else:
            text = _clean(str(value))
            if "=?" in text:
                text = str(email.header.make_header(email.header.decode_header(text)))
        return unfold(text)
    except Exception:
        return ""


def unfold(text: str) -> str:
    """Collapse all runs of whitespace (line folds included) to one space."""
    return " ".join(text.split())


def _decode(data: bytes, charset: str | None) -> str:
    if b"\x1b$B" in data or b"\x1b$@" in data:  # ISO-2022-JP without (or with a wrong) label
        charset = "iso-2022-jp"
    candidates = [charset, "utf-8"]
    if charset and "jp" in charset.lower():  # Japanese carriers mislabel EUC-JP, Shift_JIS
        candidates += ["euc-jp", "shift_jis"]
    for candidate in candidates:
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeError):
            continue
    try:
        return data.decode(charset or "utf-8", "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def part_text(part: Message) -> str:
    """The decoded text of a leaf part; an attached message or header block as text."""
    try:
        payload = part.get_payload()
        if isinstance(payload, list):  # message/*: a list of parsed messages or header blocks
            blocks = []
            for item in payload:
                if isinstance(item, Message):
                    lines = [f"{k}: {_clean(str(v))}" for k, v in item.items()]
                    body = item.get_payload()
                    if isinstance(body, str) and body.strip():
                        lines += ["", body]
                    blocks.append("\n".join(lines))
            return "\n\n".join(blocks)
        data = part.get_payload(decode=True)
        if isinstance(data, bytes):
            return _decode(data, part.get_content_charset())
        return _clean(str(payload))
    except Exception:
        return ""


def _walk(msg: Message, *, into_attached: bool) -> Iterator[Message]:
    """Depth-first parts; the insides of attached messages only with ``into_attached``."""
    yield msg
    try:
        payload = msg.get_payload()
    except Exception:
        return
    if not isinstance(payload, list):
        return
    ctype = msg.get_content_type()
    if ctype in RFC822_TYPES and not into_attached:
        return
    if not (msg.get_content_maintype() == "multipart" or ctype in RFC822_TYPES):
        return  # message/delivery-status and the like: header blocks, not parts
    for item in payload:
        if isinstance(item, Message):
            yield from _walk(item, into_attached=into_attached)


def parts(msg: Message, *, into_attached: bool = False) -> list[Message]:
    """All parts of ``msg`` (not the inside of attached messages, unless asked)."""
    return list(_walk(msg, into_attached=into_attached))


_TAG = re.compile(r"<(?:br|p|div|tr|li)\b[^>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^>]{0,500}>")


def body_text(msg: Message) -> str:
    """The human-readable text of a notification: its text/plain parts, else its HTML as text.

    Attached messages (message/rfc822) and delivery-status parts are not included.
    """
    plain: list[str] = []
    html: list[str] = []
    for part in parts(msg):
        if part.is_multipart() or part.get_content_type() in RFC822_TYPES:
            continue
        ctype = part.get_content_type()
        if part is not msg and part.get_filename():
            continue
        broken_multipart = part.get_content_maintype() == "multipart"  # no usable boundary
        if (
            ctype == "text/plain"
            or broken_multipart
            or (part is msg and part.get_content_maintype() != "text")
        ):
            plain.append(part_text(part))
        elif ctype == "text/html":
            text = _TAG.sub("\n", part_text(part))
            html.append(_ANY_TAG.sub("", text).replace("&nbsp;", " ").replace("&lt;", "<"))
    chosen = plain if any(p.strip() for p in plain) else html
    text = "\n".join(chosen)[:MAX_TEXT]
    return text.replace("\r\n", "\n").replace("\r", "\n")


_QUOTED_HEADER_BLOCK = re.compile(
    r"^(?:Received: ?from|Return-Path:|DKIM-Signature:|X-Received:|Received-SPF:)", re.M | re.I
)


def split_original(text: str) -> tuple[str, str]:
    """Split a plain-text bounce at the line that introduces the quoted original message
    (or, without such a line, where the original's headers start)."""
    match = _ORIGINAL_MARKERS.search(text)
    if match is not None:
        return text[: match.start()], text[match.end() :]
    block = _QUOTED_HEADER_BLOCK.search(text)
    if block is not None:
        return text[: block.start()], text[block.start() :]
    return text, ""


def field_groups(text: str) -> list[list[tuple[str, str]]]:
    """RFC 822-style field groups (``Name: value`` lines, folded, blank-line separated)."""
    groups: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            if current:
                groups.append(current)
                current = []
            continue
        if line[:1] in (" ", "\t") and current:
            name, value = current[-1]
            current[-1] = (name, f"{value} {line.strip()}")
            continue
        match = _FIELD.match(line)
        if match:
            current.append((match.group(1).lower(), match.group(2).strip()))
    if current:
        groups.append(current)
    return groups


def address_from_field(value: str | None) -> str | None:
    """``"rfc822; <Kiji@Example.JP>"`` -> ``"Kiji@example.jp"``; ``None`` if no address."""
    if not value:
        return None
    value = value.strip()
    if ";" in value:
        kind, _, rest = value.partition(";")
        if "@" not in kind:
            value = rest
    value = value.strip().strip("<>\"' ").rstrip(".,;:")
    match = _ADDRESS.search(value)
    if match is None:
        return None
    address = match.group(1).strip(".")
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        return None
    return f"{local}@{domain.lower().rstrip('.')}"


def addresses_in(text: str, limit: int = MAX_RECIPIENTS) -> list[str]:
    """Every address in ``text`` (``limit`` at most), normalized, in order, without repeats
    or URL parts."""
    found: dict[str, str] = {}
    for match in _ADDRESS.finditer(text):
        start = match.start()
        if text[max(0, start - 8) : start].lower().endswith(("mailto:", "://", "=")):
            continue
        address = address_from_field(match.group(1))
        if address is not None:
            found.setdefault(address.lower(), address)
            if len(found) >= limit:
                break
    return list(found.values())


def smtp_code_in(text: str) -> int | None:
    """The first SMTP reply code in a diagnostic (``"smtp; 550 5.1.1 ..."`` -> 550)."""
    match = _SMTP_CODE.search(text)
    return int(match.group(1)) if match else None


def _headers_of(msg: Message) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ORIGINAL_HEADERS:
        value = header(msg, name)
        if value:
            found[name] = value
    return found


_WANTED = {name.lower(): name for name in ORIGINAL_HEADERS}
_HEADER_START = re.compile(
    r"^(?:Received|Return-Path|From|Date|Message-ID|To|Subject|MIME-Version):", re.M | re.I
)


def _scan_headers(text: str) -> dict[str, str]:
    """The wanted headers of a header block whose folding is broken (unindented lines)."""
    found: dict[str, str] = {}
    last: str | None = None
    for line in text.split("\n"):
        if not line.strip():
            if found:
                break
            continue
        match = _FIELD.match(line)
        if match and match.group(1).lower() in _WANTED:
            last = _WANTED[match.group(1).lower()]
            found.setdefault(last, unfold(_clean(match.group(2))))
        elif line[:1] in (" ", "\t") and last is not None and last in found:
            found[last] = unfold(f"{found[last]} {line}")
        else:
            last = None
    return found


def _parse_headers(text: str) -> dict[str, str]:
    """The wanted headers of quoted original headers (text), leniently."""
    text = text.lstrip("\r\n ")
    start = _HEADER_START.search(text)
    if start is None:
        return {}
    text = text[start.start() :]  # headers quoted after a few lines of prose
    try:
        found = _headers_of(email.message_from_string(text, policy=email.policy.compat32))
    except Exception:
        found = {}
    for name, value in _scan_headers(text).items():
        found.setdefault(name, value)
    return found


_ATTACHED = re.compile(
    r"^Content-Type:\s*(?:message/(?:rfc822|global)|text/rfc822-headers?|message/rfc822-headers)\b",
    re.M | re.I,
)


def original_headers(msg: Message, raw: bytes | None = None) -> dict[str, str]:
    """A few headers of the returned original: from an attached message or header part,
    else from the text after a "copy of the message follows" line, else (broken MIME) from
    the part announced in the ``raw`` message."""
    for part in parts(msg):
        ctype = part.get_content_type()
        if ctype in RFC822_TYPES:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                found = _headers_of(payload[0])
                if found:
                    return found
            found = _parse_headers(part_text(part))
            if found:
                return found
        elif ctype in HEADER_TYPES:
            found = _parse_headers(part_text(part))
            if found:
                return found
    _, quoted = split_original(body_text(msg))
    found = _parse_headers(quoted) if quoted else {}
    if found:
        return found
    if raw is None:
        return {}
    text = raw[: MAX_TEXT * 4].decode("utf-8", "replace")  # a broken MIME structure
    attached = _ATTACHED.search(text)
    if attached is None:
        return {}
    blank = re.search(r"\n[ \t]*\n", text[attached.end() :])
    return _parse_headers(text[attached.end() + blank.end() :]) if blank else {}


def message_id(headers: dict[str, str]) -> str | None:
    """The Message-ID of the original, angle brackets kept, or ``None``."""
    value = headers.get("Message-ID", "").strip()
    match = re.search(r"<[^<>\s]+>", value)
    if match:
        return match.group(0)
    return f"<{value.strip('<>')}>" if value and " " not in value else None


_COMMANDS: dict[str, Command] = {
    "DATA": "DATA",
    "END OF DATA": "DOT",
    "FINAL DATA": "DOT",
    "TEXT": "DATA",
    "BDAT": "DOT",
    ".": "DOT",
    "RCPT TO": "RCPT",
    "RCPT": "RCPT",
    "MAIL FROM": "MAIL",
    "MAIL": "MAIL",
    "HELO": "HELO",
    "EHLO": "HELO",
    "STARTTLS": "HELO",
    "INITIAL CONNECTION": "CONN",
    "GREETING": "CONN",
}
_COMMAND = re.compile(
    r"in reply to (?:the )?(end of data|data|rcpt to|mail from|helo|ehlo|starttls|bdat)\b"
    r"|after (end of data|data|rcpt to|mail from|initial connection|helo|ehlo)\b"
    r"|after (rcpt|mail|data) command"
    r"|did not like our (final data|data|rcpt to|mail from)\b"
    r"|smtp command:?\s*(data|rcpt|mail|helo|ehlo)\b"
    r"|(?:following|for) (rcpt|data|mail|text) command"
    r"|most progress was (rcpt to|mail from|data|helo|ehlo) response"  # qmail
    r"|\bsmtp:(rcpt|data|mail)\b"
    r"|\[(rcpt_to|mail_from|data)\]",  # Yahoo
    re.IGNORECASE,
)
_PHASES: tuple[tuple[str, Command], ...] = (  # wordings that say which step failed
    ("failed after i sent the message", "DOT"),  # qmail
    ("does not like recipient", "RCPT"),  # qmail
    ("sender was rejected", "MAIL"),  # qmail
    ("my name was rejected", "HELO"),  # qmail
    ("but greeting failed", "CONN"),  # qmail
    ("refused to talk to me", "CONN"),  # Postfix: the greeting was a refusal
    ("remote smtp server has rejected address", "RCPT"),  # Oracle Messaging Server
)
_PIPELINED = re.compile(
    r"no valid recipients|need rcpt|^\d{3} [45]\.1\.\d+ .{0,200}user unknown", re.I | re.M
)
_TRANSCRIPT = re.compile(
    r"(?:^|\s)>>>\s*(DATA|RCPT TO|MAIL FROM|HELO|EHLO|\.(?=\s|$))|(?:^|\s)<<<\s*[45]\d\d",
    re.I | re.M,
)


_TRANSCRIPT_START = re.compile(r"^[ \t]*-+ ?Transcript of session follows ?-+[ \t]*$", re.I | re.M)
# Sendmail's summary of one failure: "554 <user@host>... reason", "550 host (smtp)... reason"
_SUMMARY = re.compile(
    r"^\s*[245]\d\d(?: [245]\.\d{1,3}\.\d{1,3})? (?:<[^<>\s]+>|\S+ \([\w-]+\))\.\.\."
)
_SECTION = re.compile(r"^\s*-{3,}")


def transcript_context(text: str, email: str) -> str:
    """Sendmail's "Transcript of session follows" lines about ``email``: the dialogue since
    the previous summary line, the summary line about it, and the replies read right after
    it (a pipelined "no valid recipients"), or ``""``. Line breaks are kept."""
    start = _TRANSCRIPT_START.search(text)
    if start is None:
        return ""
    wanted = email.lower()
    lines = text[start.end() :].split("\n")[:400]
    begin = 0
    for index, line in enumerate(lines):
        if _SECTION.match(line):
            break
        if _SUMMARY.match(line):
            if wanted in line.lower():
                end = index + 1
                while end < len(lines) and lines[end].lstrip().startswith(("<<<", ">>>")):
                    end += 1
                return "\n".join(kept for kept in lines[begin:end] if kept.strip())
            begin = index + 1
    return ""


def smtp_command(text: str) -> Command | None:
    """The SMTP command a failure replied to: ``CONN``, ``HELO``, ``MAIL``, ``RCPT``, ``DATA``
    or ``DOT`` (the message: end of data)."""
    match = _COMMAND.search(text)
    if match is not None:
        phrase = next(g for g in match.groups() if g)
        return _COMMANDS.get(" ".join(phrase.upper().replace("_", " ").split()))
    last: str | None = None
    for step in _TRANSCRIPT.finditer(text):  # Sendmail: ">>> DATA" then "<<< 550 ..."
        if step.group(1) is None:
            if last is None:
                break
            if last.upper() == "DATA" and _PIPELINED.search(text[step.end() : step.end() + 400]):
                return "RCPT"  # a pipelined RCPT TO's reply, read after DATA was sent
            return _COMMANDS.get(" ".join(last.upper().split()))
        last = step.group(1)
    lowered = text.lower()
    for phrase, command in _PHASES:
        if phrase in lowered:
            return command
    return None
