"""Composing each recipient's message: what a batch shares is prepared once, per worker.

A batch of a thousand recipients is a thousand copies of one 13 KB message with a few
dozen bytes changed: the name in the greeting, the cart's URL, the tracking tokens. The
careful way of building one (render every part, rewrite its links with a regular
expression, quoted-printable encode it, canonicalize it for DKIM, dot-stuff it for SMTP)
redoes all of that work on every copy. ``MessageBuilder`` does it once per batch:

* **Templates** that only print recipient data (``mta.render._plain``, most of them) are
  rendered through a copy whose printed values are fenced with NUL (which no template,
  value or output may contain), so one render gives the static text and each value apart.
* **Links** are found once, in the HTML with the values left out; a link whose URL is
  static gets its index in the batch's link table, and per recipient only its token is
  written (``tracking.links.MessageLinks``: one seal per message); a link whose tag
  holds recipient data is rewritten per recipient, tag by tag, exactly as the careful way.
* **Lines** are encoded, stuffed and canonicalized once: quoted-printable works line by
  line, and so do SMTP dot-stuffing and DKIM's relaxed body canonicalization, so each
  distinct line's forms are remembered (``_LineForms``) and a recipient's message is
  mostly lookups and joins. The signature then needs only the header fields and the body
  hash (``mta.dkim.signature_headers``), and the result is ready for the wire
  (``mta.smtp.WireMessage``): the SMTP client does not rescan it.

Anything else (a template with loops, conditions or filters, a rendering that fails) takes
the careful way, ``build_reference``, which is also what the fast way is held to: byte
for byte the same message, on the fixture and on generated templates
(``tests/test_compose.py``).
"""

from __future__ import annotations

import binascii
import hashlib
import html as html_escaping
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jinja2
from dkim import rfc822_parse
from dkim.canonicalization import correct_empty_body, strip_trailing_lines
from jinja2 import nodes

from core.jobs import BatchContent, Job, Mailbox
from mta.dkim import SigningKey, sign, signature_headers
from mta.mime import build_message, new_boundary, quoted_printable
from mta.render import Rendered, Templates
from mta.smtp import WireMessage
from tracking.links import (
    _ANCHOR,
    _CONTROL,
    _HREF,
    _NOTRACK,
    _SPACE,
    add_pixel,
    rewrite_links,
    rewrite_text_links,
)

FENCE = "\x00"  # around each printed value: refused in templates, data and output
_SLOT = "\x00{}\x00"  # a value's place in the compiled HTML
MAX_REMEMBERED_LINES = 20_000  # per batch: a 13 KB message has ~300; data-made lines vary


class Links(Protocol):
    """A message's tracking URLs (``tracking.links.MessageLinks``)."""

    def open_url(self) -> str: ...

    def click_url(self, url: str) -> str: ...


Piece = str | tuple[str, int] | tuple[str, list[str | int]]


@dataclass(frozen=True)
class _Fenced:
    """A plain part, compiled to print each value between fences; ``statics``: the text
    around the values (``values + 1`` strings), read from the template itself."""

    template: jinja2.Template
    values: int
    statics: list[str]

    @classmethod
    def of(cls, part: jinja2.Template, source: str) -> _Fenced | None:
        env = part.environment
        tree = env.parse(source)
        if not all(isinstance(node, nodes.Output) for node in tree.body):
            return None
        fenced: list[nodes.Node] = []
        statics = [""]
        for output in tree.body:
            assert isinstance(output, nodes.Output)
            for child in output.nodes:
                if isinstance(child, nodes.TemplateData):
                    fenced.append(child)
                    statics[-1] += child.data
                else:
                    fenced += [nodes.TemplateData(FENCE), child, nodes.TemplateData(FENCE)]
                    statics.append("")
        marked = nodes.Template([nodes.Output(fenced)])
        marked.set_environment(env)
        code = env.compile(marked)
        template = env.template_class.from_code(env, code, dict(env.make_globals(None)), None)
        return cls(template, len(statics) - 1, statics)

    def split(self, data: dict[str, Any]) -> list[str] | None:
        """The values, in order; None if the output is not the statics around them (a value
        held a fence; the careful way then says what is wrong)."""
        pieces = "".join(self.template.root_render_func(self.template.new_context(data)))
        split = pieces.split(FENCE)
        if len(split) != 2 * self.values + 1 or split[0::2] != self.statics:
            return None
        return split[1::2]


class _Html:
    """An HTML part: static text, values, static links (by table index), tags to rewrite."""

    def __init__(self, fenced: _Fenced, table: dict[str, int], *, clicks: bool) -> None:
        """``clicks``: the batch tracks clicks (else its links stay as they are)."""
        self.fenced = fenced
        statics = fenced.statics
        self.plan: list[Piece] = []
        skeleton = "".join(
            text + (_SLOT.format(i) if i < len(statics) - 1 else "")
            for i, text in enumerate(statics)
        )
        at = 0
        for match in _ANCHOR.finditer(skeleton) if clicks else ():
            self._text(skeleton[at : match.start()])
            self._anchor(match.group(0), table)
            at = match.end()
        self._text(skeleton[at:])

    @staticmethod
    def compilable(statics: list[str]) -> bool:
        """A value right after ``<`` could become a tag name (``<{{ t }} href=...>``) that
        the careful way would treat as a link: such parts take the careful way."""
        return not any(text.rstrip(" \t\r\n\f").endswith("<") for text in statics[:-1])

    def _text(self, text: str) -> None:
        for i, chunk in enumerate(text.split(FENCE)):
            if i % 2:
                self.plan.append(("value", int(chunk)))
            elif chunk:
                self.plan.append(chunk)

    def _anchor(self, tag: str, table: dict[str, int]) -> None:
        if FENCE in tag:  # holds a value: rewritten per recipient, exactly as a whole page
            parts: list[str | int] = []
            for i, chunk in enumerate(tag.split(FENCE)):
                parts.append(int(chunk) if i % 2 else chunk)
            self.plan.append(("anchor", parts))
            return
        url = _static_link(tag)
        if url is None:
            self.plan.append(tag)
            return
        href = _HREF.search(tag)
        assert href is not None
        index = table.setdefault(url, len(table))
        self.plan += [tag[: href.start()] + href.group(1) + '"', ("link", index)]
        self.plan.append('"' + tag[href.end() :])

    def fill(self, values: list[str], links: Links, table: tuple[str, ...]) -> str:
        out: list[str] = []
        for piece in self.plan:
            if isinstance(piece, str):
                out.append(piece)
                continue
            kind, what = piece
            if kind == "value":
                assert isinstance(what, int)
                out.append(values[what])
            elif kind == "link":
                assert isinstance(what, int)
                out.append(html_escaping.escape(links.click_url(table[what]), quote=True))
            else:
                assert isinstance(what, list)
                tag = "".join(values[p] if isinstance(p, int) else p for p in what)
                out.append(rewrite_links(tag, links.click_url)[0])
        return "".join(out)


def _static_link(tag: str) -> str | None:
    """The URL ``tracking.links.rewrite_links`` would track in ``tag``, or None."""
    if "notrack" in tag.lower() and _NOTRACK.search(tag):
        return None
    href = _HREF.search(tag)
    if href is None:
        return None
    quoted, single, bare = href.group(2, 3, 4)
    raw = quoted if quoted is not None else single if single is not None else bare
    url = (html_escaping.unescape(raw) if "&" in raw else raw).strip(_SPACE)
    if not url.lower().startswith(("http://", "https://")) or _CONTROL.search(url):
        return None
    return url


class _LineForms:
    """Each distinct line's forms, worked out once: a text line's quoted-printable bytes
    (``b2a_qp`` encodes line by line, so encoding each line with its newline gives the bytes
    of encoding the whole: without the newline, it folds a trailing space differently);
    a message line's dot-stuffed and relaxed-canonical forms (both line by line)."""

    def __init__(self) -> None:
        self.encoded: dict[str, bytes] = {}
        self.wire: dict[bytes, tuple[bytes, bytes]] = {}

    def quoted_printable(self, text: str) -> bytes:
        """``mta.mime.quoted_printable``, from remembered lines."""
        if len(self.encoded) > MAX_REMEMBERED_LINES:
            self.encoded.clear()
        normalized = text.replace("\r\n", "\n").replace("\r", "\n")
        *lines, last = normalized.split("\n")
        out = []
        known = self.encoded
        for line in lines:
            encoded = known.get(line)
            if encoded is None:  # encoded with its newline: b2a_qp folds a line's end apart
                raw = binascii.b2a_qp(line.encode("utf-8") + b"\n", quotetabs=False, istext=True)
                encoded = known[line] = raw[:-1].replace(b"\n", b"\r\n")
            out.append(encoded)
        raw = binascii.b2a_qp(last.encode("utf-8"), quotetabs=False, istext=True)
        out.append(raw.replace(b"\n", b"\r\n"))
        return b"\r\n".join(out)

    def body(self, lines: bytes) -> tuple[bytes, bytes]:
        """(dot-stuffed, relaxed canonical) forms of CRLF-separated ``lines``."""
        if len(self.wire) > MAX_REMEMBERED_LINES:
            self.wire.clear()
        wire, canonical = [], []
        known = self.wire
        for line in lines.split(b"\r\n"):
            forms = known.get(line)
            if forms is None:
                forms = known[line] = _line_forms(line)
            wire.append(forms[0])
            canonical.append(forms[1])
        return b"\r\n".join(wire), b"\r\n".join(canonical)


def _line_forms(line: bytes) -> tuple[bytes, bytes]:
    """One line dot-stuffed, and relaxed-canonical (``mta.dkim.relaxed_body`` on one line:
    tabs to spaces, runs of spaces to one, no space at its end)."""
    canonical = line.replace(b"\t", b" ") if b"\t" in line else line
    while b"  " in canonical:
        canonical = canonical.replace(b"  ", b" ")
    canonical = canonical[:-1] if canonical.endswith(b" ") else canonical
    return (b"." + line if line.startswith(b".") else line), canonical


@dataclass(frozen=True)
class Extras:
    """What the worker decides per message, besides the job: the Message-ID header value,
    headers of its own (List-Unsubscribe), and, for tests, a fixed Date and DKIM time."""

    message_id: str
    headers: dict[str, str]
    date: float | None = None
    timestamp: int | None = None


class MessageBuilder:
    """Per batch and worker: the templates, the batch's link table and what every message
    shares; ``build`` makes one recipient's message, ready for the wire."""

    def __init__(
        self,
        batch: BatchContent,
        templates: Templates,
        *,
        text_links: bool,
        boundary: str | None = None,
    ) -> None:
        self.batch = batch
        self.templates = templates
        self.text_links = text_links
        self.boundary = boundary or new_boundary()
        self.lines = _LineForms()
        index: dict[str, int] = {}
        self._html: _Html | None = None
        self._text: _Fenced | None = None
        self.fast = templates.plain
        if self.fast and templates.html is not None:
            fenced = _Fenced.of(templates.html, templates.sources["html"] or "")
            if fenced is None or not _Html.compilable(fenced.statics):
                self.fast = False
            else:
                self._html = _Html(fenced, index, clicks=batch.track_clicks)
        if self.fast and templates.text is not None:
            self._text = _Fenced.of(templates.text, templates.sources["text"] or "")
            self.fast = self._text is not None
        self.table_index = index  # static link URL -> its index in the table
        self.link_table = tuple(sorted(index, key=index.__getitem__))

    # --- the fast way ------------------------------------------------------------------------

    def build(self, job: Job, links: Links, keys: list[SigningKey], extras: Extras) -> WireMessage:
        if not self.fast:
            return self.build_reference(job, links, keys, extras)
        data = job.data
        html = text = None
        if self._html is not None:
            values = self._html.fenced.split(data)
            if values is None:
                return self.build_reference(job, links, keys, extras)
            html = self._html.fill(values, links, self.link_table)
            if self.batch.track_opens:
                html = add_pixel(html, links.open_url())
        if self._text is not None:
            split = self._text.split(data)
            if split is None:
                return self.build_reference(job, links, keys, extras)
            text = _interleave(self._text.statics, split)
            if self.clicks and self.text_links:
                text = rewrite_text_links(text, links.click_url)
        subject = self.templates.render_subject(data)
        message = self._message(job, subject, html, text, extras, self.lines.quoted_printable)
        end = message.index(b"\r\n\r\n") + 4
        head, body = message[:end], message[end:]
        lines = head.count(b"\r\n")
        if head.count(b"\n") != lines or head.count(b"\r") != lines:  # never: mta.mime's duty
            return self.build_reference(job, links, keys, extras)
        wire_body, canonical = self.lines.body(body[:-2])  # its last CRLF: below
        if not keys:
            data_out = head + wire_body + b"\r\n.\r\n"
            return WireMessage(data_out, len(message))
        fields = rfc822_parse(head)[0]
        body_hash = hashlib.sha256(_relaxed_end(canonical + b"\r\n")).digest()
        signature = signature_headers(fields, body_hash, keys, timestamp=extras.timestamp)
        data_out = signature + head + wire_body + b"\r\n.\r\n"
        return WireMessage(data_out, len(signature) + len(message))

    @property
    def clicks(self) -> bool:
        return self.batch.track_clicks

    # --- the careful way ---------------------------------------------------------------------

    def build_reference(
        self,
        job: Job,
        links: Links,
        keys: list[SigningKey],
        extras: Extras,
        rendered: Rendered | None = None,
    ) -> WireMessage:
        """Render (unless ``rendered`` already is: a worker renders a template that is not
        plain on a render thread, within its budgets), rewrite links, build, sign, stuff:
        every step on the whole message."""
        if rendered is None:
            rendered = self.templates.render(job.data)
        html, text = rendered.html, rendered.text
        if self.clicks:
            if html is not None:
                html, _ = rewrite_links(html, links.click_url)
            if text is not None and self.text_links:
                text = rewrite_text_links(text, links.click_url)
        if html is not None and self.batch.track_opens:
            html = add_pixel(html, links.open_url())
        message = self._message(job, rendered.subject, html, text, extras, quoted_printable)
        return WireMessage.of(sign(message, keys, timestamp=extras.timestamp))

    def _message(
        self,
        job: Job,
        subject: str,
        html: str | None,
        text: str | None,
        extras: Extras,
        encode: Callable[[str], bytes],
    ) -> bytes:
        batch = self.batch
        return build_message(
            sender=batch.sender,
            to=Mailbox(job.email, job.name),
            subject=subject,
            html=html,
            text=text,
            message_id=extras.message_id,
            reply_to=batch.reply_to,
            headers={**batch.headers, **extras.headers},
            date=extras.date,
            boundary=self.boundary,
            encode=encode,
        )


def _interleave(statics: list[str], values: list[str]) -> str:
    out = [statics[0]]
    for value, text in zip(values, statics[1:], strict=True):
        out += (value, text)
    return "".join(out)


def _relaxed_end(canonical: bytes) -> bytes:
    """The end of ``mta.dkim.relaxed_body``: trailing empty lines go, an empty body is empty."""
    result: bytes = correct_empty_body(strip_trailing_lines(canonical))
    return result
