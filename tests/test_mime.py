"""The hand-written MIME builder against the stdlib parser, for any text a recipient can have."""

from __future__ import annotations

import email
import email.policy
import re
from email.header import decode_header, make_header

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.mime import Mailbox, MimeError, build_message, header_line

_printable = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\n\0"),
    max_size=300,
)
_body = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=800
)


def _parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def _raw_header(raw: bytes, name: bytes) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ")
    line = next(h for h in head.split(b"\r\n") if h.startswith(name + b":"))
    return line[len(name) + 1 :].decode("ascii").strip()


def _words(text: str) -> list[str]:
    """Header text compared as words: folding may change white space, never the words."""
    return text.split()


def _lines(text: str) -> list[str]:
    """Content as lines: the wire form is CRLF and ends with a line break."""
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")


def _assert_wire_safe(raw: bytes) -> None:
    assert raw.isascii(), "8-bit data on the wire without SMTPUTF8/8BITMIME"
    lines = raw.split(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in raw.replace(b"\r\n", b""), "bare CR"
    assert max(len(line) for line in lines) <= 998


@settings(max_examples=80, deadline=None)
@given(subject=_printable.filter(lambda s: s.strip()), name=_printable, text=_body, html=_body)
def test_any_text_round_trips(subject: str, name: str, text: str, html: str) -> None:
    raw = build_message(
        sender=Mailbox("news@shop.example.com", name or None),
        to=Mailbox("aryan@inbox.example.org", name or None),
        subject=subject,
        html=html,
        text=text,
        message_id="abc-1@shop.example.com",
    )
    _assert_wire_safe(raw)
    msg = _parse(raw)
    assert msg.defects == []
    assert _words(str(msg["Subject"])) == _words(subject)
    assert msg["To"].addresses[0].addr_spec == "aryan@inbox.example.org"
    if name.strip():
        # RFC 2047 decoding (the headerregistry parser adds a space between adjacent encoded words)
        decoded = str(make_header(decode_header(_raw_header(raw, b"From"))))
        display = decoded.rsplit("<", 1)[0].strip()
        if display.startswith('"') and display.endswith('"'):  # formataddr quoted an ASCII name
            display = re.sub(r"\\(.)", r"\1", display[1:-1])
        assert _words(display) == _words(name)
    assert _lines(msg.get_body(("plain",)).get_content()) == _lines(text)
    assert _lines(msg.get_body(("html",)).get_content()) == _lines(html)


def test_long_lines_are_folded_and_single_part_works() -> None:
    raw = build_message(
        sender=Mailbox("a@example.com"),
        to=Mailbox("b@example.com"),
        subject="Ünïcödé " * 40,
        html=None,
        text="x" * 5000 + "\n" + "y" * 10,
        message_id="m-1@example.com",
    )
    _assert_wire_safe(raw)
    msg = _parse(raw)
    assert msg.get_content_type() == "text/plain"
    assert _lines(msg.get_content()) == ["x" * 5000, "y" * 10]
    assert str(msg["Subject"]) == "Ünïcödé " * 40


@pytest.mark.parametrize(
    "value", ["a\r\nBcc: x@evil.example", "a\nb", "a\0b", "\r\n.\r\nMAIL FROM:<x@y.z>"]
)
def test_header_injection_is_refused(value: str) -> None:
    with pytest.raises(MimeError):
        header_line("Subject", value)
    with pytest.raises(MimeError):
        build_message(
            sender=Mailbox("a@example.com", value),
            to=Mailbox("b@example.com"),
            subject="hi",
            html="x",
            text=None,
            message_id="m@example.com",
        )


@settings(max_examples=300, deadline=None)
@given(
    value=st.lists(
        st.sampled_from(["a", "word", "", "x" * 77, "y" * 120, "<https://x.example/t/u/T>,"]),
        min_size=1,
        max_size=30,
    ).map(" ".join)
)
def test_ascii_headers_fold_only_at_their_spaces(value: str) -> None:
    """Unfolding (RFC 5322 2.2.3: remove each CRLF before white space) gives back the value
    exactly; no line is over 78 columns unless a word alone is."""
    line = header_line("List-Unsubscribe", value)
    assert line.endswith(b"\r\n") and b"\r\n" not in line[:-2].replace(b"\r\n ", b"")
    assert line[:-2].replace(b"\r\n ", b" ").decode() == "List-Unsubscribe: " + value
    for physical in line[:-2].split(b"\r\n"):
        assert len(physical) <= 78 or b" " not in physical.strip()
        assert physical.strip(), "no line of white space alone (RFC 5322 4)"
