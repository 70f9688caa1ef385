"""Building the RFC 5322 / MIME message, byte for byte.

Written directly rather than through ``email.generator`` (which dominates the
per-message cost): CRLF line endings, UTF-8 bodies in quoted-printable (no line
over 76 octets), RFC 2047 encoded words for non-ASCII header text, folded
headers. Inputs were validated upstream; this module still refuses CR/LF/NUL in
anything that becomes a header, so nothing can be smuggled onto the wire.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Callable
from email.header import Header
from email.utils import formataddr, formatdate

from core.jobs import Mailbox

__all__ = ["Mailbox", "MimeError", "build_message", "header_line", "mailbox_line"]

_CRLF = b"\r\n"


class MimeError(ValueError):
    """A value cannot be put in a header safely."""


def _check(value: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise MimeError("header value contains CR, LF or NUL")
    return value


def header_line(name: str, value: str) -> bytes:
    """``Name: value`` folded to 78 columns, encoded-words where the value is not ASCII."""
    _check(value)
    if value.isascii():
        if len(name) + len(value) + 2 <= 78:
            return f"{name}: {value}".encode("ascii") + _CRLF
        folded = _fold(name, value)
        if folded is not None:
            return folded.encode("ascii") + _CRLF
    # Not ASCII, or a word too long for a line: encoded words can be split anywhere.
    encoded = Header(value, "utf-8", header_name=name, maxlinelen=78).encode(linesep="\r\n")
    return f"{name}: {encoded}".encode("ascii") + _CRLF


def _fold(name: str, value: str) -> str | None:
    """``Name: value`` with a line break before as few of its spaces as keep lines within 78
    columns (a word longer than that has a line of its own); unfolding gives back the value
    exactly. A break comes only before a space that the next word follows, with any further
    spaces of a run kept on the new line, so no line is white space alone (RFC 5322 4:
    obsolete syntax). None if a word does not fit in 998 octets."""
    words = value.split(" ")
    units: list[str] = []  # each word with the extra spaces before it; joined by one space
    extra = ""
    for word in words[:-1] if words[-1] == "" else words:
        if word:
            units.append(extra + word)
            extra = ""
        else:
            extra += " "
    if not units:
        return f"{name}: {value}"
    units[-1] += extra + (" " if words[-1] == "" and len(words) > 1 else "")
    lines: list[str] = []
    line = f"{name}:"
    for unit in units:
        if len(line) + 1 + len(unit) > 78 and line.strip():
            lines.append(line)
            line = ""
        line += " " + unit
    lines.append(line)
    if max(map(len, lines)) > 998:
        return None
    return "\r\n".join(lines)


def mailbox_line(name: str, box: Mailbox) -> bytes:
    _check(box.email)
    if not box.name:
        return f"{name}: {box.email}".encode("ascii") + _CRLF
    _check(box.name)
    if box.name.isascii():
        value = formataddr((box.name, box.email))
        if len(name) + len(value) + 2 <= 998:
            return f"{name}: {value}".encode("ascii") + _CRLF
    display = Header(box.name, "utf-8", header_name=name, maxlinelen=78).encode(linesep="\r\n")
    return f"{name}: {display}\r\n <{box.email}>".encode("ascii") + _CRLF


def quoted_printable(text: str) -> bytes:
    normalized = text.replace("\r\n", "\n").replace("\r", "\n")
    encoded = binascii.b2a_qp(normalized.encode("utf-8"), quotetabs=False, istext=True)
    return encoded.replace(b"\n", _CRLF)


def part_header(content_type: str) -> bytes:
    """A part's header fields and the empty line after them."""
    return (
        f"Content-Type: {content_type}; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii")
    )


def multipart_header(boundary: str) -> bytes:
    """The multipart/alternative message's Content-Type field and the empty line after it."""
    return f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode("ascii")


def date_line(date: float | None) -> bytes:
    return f"Date: {formatdate(date, usegmt=True)}\r\n".encode("ascii")


def message_id_line(message_id: str) -> bytes:
    return f"Message-ID: <{_check(message_id)}>\r\n".encode("ascii")


def _part(content_type: str, body: str, encode: Callable[[str], bytes]) -> bytes:
    return part_header(content_type) + encode(body)


def new_boundary() -> str:
    """``=_`` never occurs in quoted-printable output, so no part can contain it."""
    return "=_sluice_" + os.urandom(12).hex()


def build_message(
    *,
    sender: Mailbox,
    to: Mailbox,
    subject: str,
    html: str | None,
    text: str | None,
    message_id: str,
    reply_to: Mailbox | None = None,
    headers: dict[str, str] | None = None,
    date: float | None = None,
    boundary: str | None = None,
    encode: Callable[[str], bytes] = quoted_printable,
) -> bytes:
    """The whole message as it goes on the wire (before SMTP dot-stuffing). ``boundary``:
    of the multipart/alternative body (default: a new random one); ``encode``: a part's
    text to quoted-printable bytes (``mta.compose`` passes one that remembers lines)."""
    if html is None and text is None:
        raise MimeError("a message needs an html or a text part")
    out = [mailbox_line("From", sender)]
    if reply_to is not None:
        out.append(mailbox_line("Reply-To", reply_to))
    out += [
        mailbox_line("To", to),
        header_line("Subject", subject),
        date_line(date),
        message_id_line(message_id),
    ]
    for name, value in (headers or {}).items():
        out.append(header_line(_check(name), value))
    out.append(b"MIME-Version: 1.0\r\n")
    if html is not None and text is not None:
        boundary = boundary or new_boundary()
        out.append(multipart_header(boundary))
        delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
        out += [
            f"--{boundary}\r\n".encode("ascii"),
            _part("text/plain", text, encode),
            delimiter,
            _part("text/html", html, encode),
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        ]
    else:
        kind, body = ("text/html", html) if html is not None else ("text/plain", text)
        assert body is not None
        out.append(_part(kind, body, encode))
        if not out[-1].endswith(_CRLF):
            out.append(_CRLF)
    return b"".join(out)
