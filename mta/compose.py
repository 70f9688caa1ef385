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
  line, and so do SMTP dot-stuffing and DKIM's relaxed body canonicalization, so the
  complete lines of each static piece are kept in both forms (``_Lines``) and per
  recipient only the lines that hold a value are encoded, all of a part's in one pass
  (``_Part.lines``). The lines that hold only links are not encoded per recipient either:
  a tracked URL is inert to all three, so a part's whole body is a template per set of URL
  lengths (``_Template``: statics with holes the URLs' characters fill; ~45 us less a
  message on the fixture's 16 links). The signature then needs only the header fields and the
  body hash (``mta.dkim.signature_headers``), and the result is ready for the wire
  (``mta.smtp.WireMessage``): the SMTP client does not rescan it.
* **Headers** that every message of the batch shares (From, Reply-To, the batch's own
  fields, MIME-Version and the content type) are written and split into DKIM fields once
  (``_Head``); per recipient only To, Subject, Date, Message-ID and List-Unsubscribe are.
* **Layouts** (all of the above that comes from the templates) are shared by the batches
  whose templates and tracking settings are the same (``layout``): a batch of one
  recipient, the common triggered message, is planned in microseconds.

Anything else (a template with loops, conditions or filters, a rendering that fails) takes
the careful way, ``build_reference``, which is also what the fast way is held to: byte
for byte the same message, on the fixture and on generated templates
(``tests/test_compose.py``).
"""

from __future__ import annotations

import binascii
import hashlib
import html as html_escaping
import operator
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jinja2
from dkim.canonicalization import correct_empty_body, strip_trailing_lines
from jinja2 import nodes

from core.jobs import BatchContent, Job, Mailbox
from mta.dkim import SigningKey, relaxed_field, sign, signature_headers
from mta.mime import (
    MimeError,
    _check,
    build_message,
    date_line,
    header_line,
    mailbox_line,
    message_id_line,
    multipart_header,
    new_boundary,
    part_header,
)
from mta.render import Printer, Rendered, Templates, printer
from mta.smtp import WireMessage
from tracking.links import (
    _ANCHOR,
    _BODY_END,
    add_pixel,
    link_of,
    pixel,
    rewrite_links,
    rewrite_text_links,
)

FENCE = "\x00"  # around each printed value: refused in templates, data and output
_SLOT = "\x00{}\x00"  # a dynamic piece's place in a compiled part
_PIXEL = "\x00p\x00"  # the open pixel's place in the compiled HTML
_SEPARATOR = "\x00\n"  # between the slot lines of a part, encoded together
_ENCODED_SEPARATOR = b"=00\r\n"
_INDENT = re.compile(rb"\n  +")
_OPEN_TAG = re.compile(r"</?[A-Za-z]*$")  # a static that ends inside a tag's name
_HTML_SPECIAL = re.compile("[&<>\"']")  # what html.escape(..., quote=True) changes


class Links(Protocol):
    """A message's tracking URLs (``tracking.links.MessageLinks``)."""

    def open_url(self) -> str: ...

    def click_url(self, url: str) -> str: ...

    def click_urls(self, urls: tuple[str, ...]) -> list[str]: ...


@dataclass(frozen=True)
class _Fenced:
    """A plain part, compiled to print each value between fences; ``statics``: the text
    around the values (``values + 1`` strings), read from the template itself."""

    template: jinja2.Template
    values: int
    statics: list[str]
    printer: Printer | None  # the part's values without Jinja, most of the time

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
        if any(_OPEN_TAG.search(text) or text.endswith("\r") for text in statics[:-1]):
            # a value right after ``<`` or ``</bo`` could complete a tag the careful way would
            # see; one after CR could make a CRLF of it: such parts take the careful way
            return None
        marked = nodes.Template([nodes.Output(fenced)])
        marked.set_environment(env)
        code = env.compile(marked)
        template = env.template_class.from_code(env, code, dict(env.make_globals(None)), None)
        return cls(template, len(statics) - 1, statics, printer(part))

    def split(self, data: dict[str, Any]) -> list[str] | None:
        """The values, in order; None if the output is not the statics around them (a value
        held a fence; the careful way then says what is wrong)."""
        if self.printer is not None:
            values = self.printer.values(data)
            if values is not None:
                return values
        pieces = "".join(self.template.root_render_func(self.template.new_context(data)))
        split = pieces.split(FENCE)
        if len(split) != 2 * self.values + 1 or split[0::2] != self.statics:
            return None
        return split[1::2]

    def skeleton(self) -> str:
        """The statics with a slot where each value goes."""
        last = len(self.statics) - 1
        return "".join(
            text + (_SLOT.format(i) if i < last else "") for i, text in enumerate(self.statics)
        )


# what fills a slot: ("value", i), ("link", index in the table), ("anchor", parts), ("pixel", 0)
Slot = tuple[str, int | list[str | int]]


class _Html:
    """An HTML part as a layout (static text and numbered slots) and what fills each slot:
    a value, a static link (by its index in the table), a tag holding a value (rewritten per
    recipient as the careful way rewrites a whole page), the open pixel."""

    def __init__(self, fenced: _Fenced, table: dict[str, int], skeleton: str, clicks: bool) -> None:
        self.fenced = fenced
        self.layout: list[str | int] = []
        self.slots: list[Slot] = []
        at = 0
        for match in _ANCHOR.finditer(skeleton) if clicks else ():
            self._text(skeleton[at : match.start()])
            self._anchor(match.group(0), table)
            at = match.end()
        self._text(skeleton[at:])
        # the slots that hold a static link's tracked URL
        self.links = frozenset(i for i, (kind, _) in enumerate(self.slots) if kind == "link")
        self._picks: dict[tuple[int, int], Callable[[list[str]], tuple[str, ...]]] = {}

    @classmethod
    def of(
        cls, fenced: _Fenced, table: dict[str, int], *, clicks: bool, opens: bool
    ) -> _Html | None:
        """None when the pixel's place is not static (inside a link's tag)."""
        skeleton = fenced.skeleton()
        if opens:
            ends = list(_BODY_END.finditer(skeleton))
            cut = ends[-1].start() if ends else len(skeleton)
            skeleton = skeleton[:cut] + _PIXEL + skeleton[cut:]
            if clicks and any(_PIXEL in tag.group(0) for tag in _ANCHOR.finditer(skeleton)):
                return None
        return cls(fenced, table, skeleton, clicks)

    def _static(self, text: str) -> None:
        if text and self.layout and isinstance(self.layout[-1], str):
            self.layout[-1] += text
        elif text:
            self.layout.append(text)

    def _slot(self, slot: Slot) -> None:
        self.layout.append(len(self.slots))
        self.slots.append(slot)

    def _text(self, text: str) -> None:
        for i, chunk in enumerate(text.split(FENCE)):
            if not i % 2:
                self._static(chunk)
            elif chunk == "p":
                self._slot(("pixel", 0))
            else:
                self._slot(("value", int(chunk)))

    def _anchor(self, tag: str, table: dict[str, int]) -> None:
        if FENCE in tag:  # holds a value: rewritten per recipient, exactly as a whole page
            parts: list[str | int] = []
            for i, chunk in enumerate(tag.split(FENCE)):
                parts.append(int(chunk) if i % 2 else chunk)
            self._slot(("anchor", parts))
            return
        found = link_of(tag)
        if found is None:
            self._static(tag)
            return
        url, href = found
        index = table.setdefault(url, len(table))
        self._static(tag[: href.start()] + href.group(1) + '"')
        self._slot(("link", index))
        self._static('"' + tag[href.end() :])

    def fill(self, values: list[str], links: Links, table: tuple[str, ...]) -> list[str]:
        """What each slot holds for one recipient."""
        tracked: list[str] = []
        if self.links:
            tracked = links.click_urls(table)
            if _HTML_SPECIAL.search("".join(tracked)):  # a link token needs no escaping
                tracked = [html_escaping.escape(url) for url in tracked]
        made: list[str] = []  # the pixel and the tags holding a value, in order
        for kind, what in self.slots:
            if kind == "pixel":
                made.append(pixel(links.open_url()))
            elif kind == "anchor":
                assert isinstance(what, list)
                tag = "".join(values[p] if isinstance(p, int) else p for p in what)
                made.append(rewrite_links(tag, links.click_url)[0])
        key = (len(values), len(tracked))
        pick = self._picks.get(key)
        if pick is None:
            pick = self._picks[key] = self._pick(*key)
        return list(pick([*values, *tracked, *made]))

    def _pick(self, values: int, tracked: int) -> Callable[[list[str]], tuple[str, ...]]:
        """Each slot's place in ``values + tracked + made``."""
        places, made = [], values + tracked
        for kind, what in self.slots:
            if kind == "value":
                assert isinstance(what, int)
                places.append(what)
            elif kind == "link":
                assert isinstance(what, int)
                places.append(values + what)
            else:
                places.append(made)
                made += 1
        return _picker(places)


def _picker(places: list[Any]) -> Callable[[Any], tuple[Any, ...]]:
    """The items at ``places`` (indexes or slices) of a sequence, as a tuple, in one C call."""
    if len(places) == 1:
        only = places[0]
        return lambda items: (items[only],)
    if not places:
        return lambda items: ()
    return operator.itemgetter(*places)


# --- lines ---------------------------------------------------------------------------------
#
# Quoted-printable encodes a text line by line (``b2a_qp`` of a whole text is the
# concatenation of ``b2a_qp`` of each line with its newline), SMTP stuffs a dot line by line
# and DKIM's relaxed canonicalization works line by line. So the complete lines of a static
# piece are encoded, stuffed and canonicalized once per batch; per recipient, only the lines
# that hold a slot are.


def _encoded_lines(text: str) -> bytes:
    """Quoted-printable of ``text`` (whose lines each end in LF) with CRLF line ends."""
    return binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True).replace(
        b"\n", b"\r\n"
    )


def _stuffed(wire: bytes) -> int:
    """How many dots SMTP stuffing added to ``wire`` (whole CRLF-terminated lines)."""
    return wire.count(b"\r\n..") + (wire[:2] == b"..")


def _forms(lines: bytes) -> tuple[bytes, bytes]:
    """CRLF-terminated lines, dot-stuffed for SMTP and relaxed-canonical for DKIM (runs of
    spaces and tabs to one space, none at a line's end)."""
    wire = lines.replace(b"\r\n.", b"\r\n..")
    if wire[:1] == b".":
        wire = b"." + wire
    canonical = _INDENT.sub(b"\n ", lines)  # most runs of spaces indent a line: one pass
    if canonical[:2] == b"  ":
        canonical = b" " + canonical.lstrip(b" ")
    if b"\t" in canonical:
        canonical = canonical.replace(b"\t", b" ")
    while b"  " in canonical:  # each pass halves every other run
        canonical = canonical.replace(b"  ", b" ")
    return wire, canonical.replace(b" \r\n", b"\r\n")


@dataclass(frozen=True)
class _Lines:
    """A static piece with at least one line end: the text before its first line end
    (``head``), its complete lines in their two forms and the dots stuffing added to them,
    the text after its last (``tail``)."""

    head: str
    wire: bytes
    canonical: bytes
    dots: int
    tail: str

    @classmethod
    def of(cls, text: str) -> _Lines:
        first, last = text.index("\n"), text.rindex("\n")
        wire, canonical = _forms(_encoded_lines(text[first + 1 : last + 1]))
        return cls(text[:first], wire, canonical, _stuffed(wire), text[last + 1 :])


class _Part:
    """A text or HTML part's layout, static lines worked out: per recipient, ``lines``
    gives its body's CRLF-terminated lines in both forms from what its slots hold.

    ``links``: the slots that hold a link's tracked URL. The lines that hold only such
    slots are not encoded per recipient at all: a tracked URL is inert to quoted-printable
    (printable ASCII, no ``=``, no space), so where each of its characters lands, and what
    surrounds it, depends only on its length (``_Template``)."""

    def __init__(self, layout: list[str | int], links: frozenset[int] = frozenset()) -> None:
        plan: list[str | int | _Lines] = []
        for item in layout:
            if isinstance(item, str):
                item = item.replace("\r\n", "\n").replace("\r", "\n")
                plan.append(_Lines.of(item) if "\n" in item else item)
            else:
                plan.append(item)
        self.plan_lines = [item for item in plan if isinstance(item, _Lines)]
        # the text between static lines: each group but the last ends a line
        self.groups: list[list[str | int]] = [[]]
        for planned in plan:
            if isinstance(planned, _Lines):
                self.groups[-1] += (planned.head, "\n")
                self.groups.append([planned.tail])
            else:
                self.groups[-1].append(planned)
        self.linked = [
            any(isinstance(x, int) for x in group)
            and all(x in links for x in group if isinstance(x, int))
            for group in self.groups[:-1]
        ] + [False]
        self.link_slots = [
            x
            for group, linked in zip(self.groups, self.linked, strict=True)
            if linked
            for x in group
            if isinstance(x, int)
        ]
        self._templates: dict[tuple[int, ...], _Template | None] = {}
        self._statics = list(
            dict.fromkeys(
                [_SEPARATOR, *(x for group in self.groups for x in group if isinstance(x, str))]
            )
        )
        self._picks: dict[tuple[int, bool], Callable[[list[str]], tuple[str, ...]]] = {}

    def lines(
        self, slots: list[str], wire: list[bytes], canonical: list[bytes], *, alone: bool
    ) -> int:
        """Append the part's lines to ``wire`` and ``canonical``; the number of dots
        stuffing added to them (the message's size leaves them out). In a multipart message its
        last line ends with the CRLF before the next boundary; the part of a message that has
        only one ends its body, with a CRLF added only if its text did not end with one
        (``alone``: as ``mta.mime.build_message`` ends it).

        The lines that hold a value are encoded, stuffed and canonicalized together, in one
        pass of each: joined by a line holding only NUL (encoded ``=00``, which nothing else
        can encode to: NUL is refused in templates and data), then split apart again. The
        lines that hold only tracked URLs come from the part's template for their lengths,
        when every URL is inert."""
        if self.link_slots:
            urls = [slots[x] for x in self.link_slots]
            template = self._template(tuple(map(len, urls)))
            joined = "".join(urls)
            if template is not None and template.fits(joined):
                pieces = self._encoded(slots, alone, skip=self.linked)
                return template.fill(joined.encode("ascii"), pieces, wire, canonical)
        wire_pieces, canonical_pieces, dots = self._encoded(slots, alone)
        for item, wire_piece, canonical_piece in zip(
            self.plan_lines, wire_pieces, canonical_pieces, strict=False
        ):
            wire += (wire_piece, item.wire)
            canonical += (canonical_piece, item.canonical)
            dots += item.dots
        wire.append(wire_pieces[-1])
        canonical.append(canonical_pieces[-1])
        return dots

    def _encoded(
        self, slots: list[str], alone: bool, skip: list[bool] | None = None
    ) -> tuple[list[bytes], list[bytes], int]:
        """The groups' lines (but those ``skip`` says), in both forms, and the dots stuffing
        added to them."""
        key = (len(slots), skip is not None)
        pick = self._picks.get(key)
        if pick is None:
            pick = self._picks[key] = self._pick(len(slots), skip)
        text = "".join(pick([*slots, *self._statics]))
        encoded = _encoded_lines(text)
        last = text.rpartition(_SEPARATOR)[2]
        if not alone or (last and not last.endswith("\n")):
            encoded += b"\r\n"
        stuffed, canonical_lines = _forms(encoded)
        return (
            stuffed.split(_ENCODED_SEPARATOR),
            canonical_lines.split(_ENCODED_SEPARATOR),
            _stuffed(stuffed),
        )

    def _pick(self, slots: int, skip: list[bool] | None) -> Callable[[list[str]], tuple[str, ...]]:
        """The groups' pieces, separated, as places in ``slots + self._statics``."""
        places: list[int] = []
        for k, group in enumerate(self.groups):
            if skip is not None and skip[k]:
                continue
            if places:
                places.append(slots + self._statics.index(_SEPARATOR))
            for item in group:
                places.append(item if isinstance(item, int) else slots + self._statics.index(item))
        return _picker(places)

    def _template(self, lengths: tuple[int, ...]) -> _Template | None:
        if lengths in self._templates:
            return self._templates[lengths]
        if len(self._templates) >= MAX_TEMPLATES:  # URLs of ever new lengths: encode them
            return None
        template = self._templates[lengths] = _Template.of(self, lengths)
        return template


# per part: link lengths vary with the message id's, by its position's digits in a batch;
# each template holds the part's body twice at most (~26 KB for the fixture's)
MAX_TEMPLATES = 4
_INERT = re.compile("[!-<>-~]*")  # printable ASCII but ``=``: quoted-printable leaves it be
_DOT = ord(".")


class _Template:
    """A part's whole body for one set of tracked-URL lengths: static bytes (both forms)
    between holes, each hole a run of the URLs' characters (their concatenation, sliced)
    or the encoded lines of a group that holds a value.

    Made by encoding the part twice with the URLs replaced by placeholders of their length,
    once ``A``s, once ``B``s: quoted-printable, dot-stuffing and canonicalization treat
    every inert character alike, so the two differ exactly where the URLs' characters go,
    soft line breaks included, except SMTP's stuffing of a dot that begins a line: the few
    URL runs that begin one are looked at per message."""

    def __init__(
        self,
        wire: list[bytes],
        canonical: list[bytes],
        holes: list[tuple[int, int] | int],
        starting_runs: list[int],
        dots: int,
    ) -> None:
        self.wire = wire  # statics, one more than holes
        self.canonical = canonical
        self.dots = dots  # stuffed in the statics
        cuts = [slice(*hole) for hole in holes if isinstance(hole, tuple)]
        self._cut = _picker(cuts)  # the URL runs, sliced from the URLs' concatenation
        self.starting_runs = starting_runs  # the URL runs (by their order) that begin a line
        self._line_starts = _picker([cuts[run].start for run in starting_runs])  # their bytes
        # where the encoded groups go among the URL runs: (position, group), ascending
        self._groups = [(i, hole) for i, hole in enumerate(holes) if isinstance(hole, int)]

    def fits(self, urls: str) -> bool:
        return _INERT.fullmatch(urls) is not None

    def fill(
        self,
        urls: bytes,
        encoded: tuple[list[bytes], list[bytes], int],
        wire: list[bytes],
        canonical: list[bytes],
    ) -> int:
        """Append the body's pieces to ``wire`` and ``canonical`` from the URLs'
        concatenation and the encoded groups (``_Part._encoded``); the dots stuffed."""
        wire_pieces, canonical_pieces, dots = encoded
        runs = list(self._cut(urls))
        canonical_holes = runs[:]
        dots += self.dots
        if _DOT in self._line_starts(urls):
            for run in self.starting_runs:  # SMTP stuffs a dot that begins a line
                if runs[run][:1] == b".":
                    runs[run] = b"." + runs[run]
                    dots += 1
        for at, group in self._groups:
            runs.insert(at, wire_pieces[group])
            canonical_holes.insert(at, canonical_pieces[group])
        out = self.wire + runs
        out[::2], out[1::2] = self.wire, runs
        wire += out
        out = self.canonical + canonical_holes
        out[::2], out[1::2] = self.canonical, canonical_holes
        canonical += out
        return dots

    @classmethod
    def of(cls, part: _Part, lengths: tuple[int, ...]) -> _Template | None:
        """None if the two placeholder encodings do not line up (not expected: then each
        message is encoded whole, as without a template)."""
        size = dict(zip(part.link_slots, lengths, strict=True))
        forms = []
        for placeholder in "AB":
            texts = [
                "".join(placeholder * size[x] if isinstance(x, int) else x for x in group)
                for group, linked in zip(part.groups, part.linked, strict=True)
                if linked
            ]
            stuffed, canonical_lines = _forms(_encoded_lines(_SEPARATOR.join(texts)))
            forms.append(
                (stuffed.split(_ENCODED_SEPARATOR), canonical_lines.split(_ENCODED_SEPARATOR))
            )
        (wire_a, canonical_a), (wire_b, canonical_b) = forms
        # the body in order: each group's lines (a linked group's statics and URL runs, or
        # the hole of an encoded group), then the static lines after it
        wire: list[bytes] = [b""]
        canonical: list[bytes] = [b""]
        holes: list[tuple[int, int] | int] = []
        starting_runs: list[int] = []
        dots = 0
        offset = 0  # in the URLs' concatenation
        linked_seen = 0
        for k, linked in enumerate(part.linked):
            if linked:
                g = linked_seen
                linked_seen += 1
                wire_runs = _runs(wire_a[g], wire_b[g])
                canonical_runs = _runs(canonical_a[g], canonical_b[g])
                if (
                    wire_runs is None
                    or canonical_runs is None
                    or [b - a for a, b in wire_runs] != [b - a for a, b in canonical_runs]
                ):
                    return None
                wire_statics = _between(wire_a[g], wire_runs)
                canonical_statics = _between(canonical_a[g], canonical_runs)
                wire[-1] += wire_statics[0]
                canonical[-1] += canonical_statics[0]
                for (a, b), wire_static, canonical_static in zip(
                    wire_runs, wire_statics[1:], canonical_statics[1:], strict=True
                ):
                    if a == 0 or wire_a[g][a - 2 : a] == b"\r\n":
                        starting_runs.append(sum(isinstance(hole, tuple) for hole in holes))
                    holes.append((offset, offset + b - a))
                    offset += b - a
                    wire.append(wire_static)
                    canonical.append(canonical_static)
                dots += _stuffed(wire_a[g])
            else:
                holes.append(k - linked_seen)  # its place among the encoded groups
                wire.append(b"")
                canonical.append(b"")
            if k < len(part.plan_lines):
                lines = part.plan_lines[k]
                wire[-1] += lines.wire
                canonical[-1] += lines.canonical
                dots += lines.dots
        if offset != sum(lengths) or not any(isinstance(hole, tuple) for hole in holes):
            return None
        # most statics have no run of spaces: one object for both forms
        canonical = [c if c != w else w for w, c in zip(wire, canonical, strict=True)]
        return cls(wire, canonical, holes, starting_runs, dots)


def _runs(a: bytes, b: bytes) -> list[tuple[int, int]] | None:
    """The maximal runs (start, end) where ``a`` and ``b`` differ; None if their lengths do."""
    if len(a) != len(b):
        return None
    runs: list[tuple[int, int]] = []
    start = None
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y and start is None:
            start = i
        elif x == y and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(a)))
    return runs


def _between(data: bytes, runs: list[tuple[int, int]]) -> list[bytes]:
    """What lies before, between and after ``runs`` in ``data``."""
    ends = [0] + [b for _, b in runs]
    starts = [a for a, _ in runs] + [len(data)]
    return [data[end:start] for end, start in zip(ends, starts, strict=True)]


@dataclass(frozen=True)
class Extras:
    """What the worker decides per message, besides the job: the Message-ID header value,
    headers of its own (List-Unsubscribe), and, for tests, a fixed Date and DKIM time."""

    message_id: str
    headers: dict[str, str]
    date: float | None = None
    timestamp: int | None = None


class _Head:
    """The header fields every message of a batch shares, made once; per recipient the
    fields that are its own (To, Subject when it holds data, Date, Message-ID, the worker's
    extra fields). ``lines`` gives the header block and its fields as DKIM reads them."""

    def __init__(self, batch: BatchContent, last: bytes) -> None:
        """``last``: the fields after the batch's own (MIME-Version, Content-Type...)."""
        self.top = mailbox_line("From", batch.sender)
        if batch.reply_to is not None:
            self.top += mailbox_line("Reply-To", batch.reply_to)
        self.headers = batch.headers
        self.own = b"".join(header_line(_check(n), v) for n, v in batch.headers.items())
        self.last = last
        self.top_fields = _fields(self.top)
        self.own_fields = _fields(self.own)
        self.last_fields = _fields(last)
        self.known = {  # their relaxed forms, for the signature
            field: relaxed_field(field)
            for field in self.top_fields + self.own_fields + self.last_fields
        }
        self._subject: tuple[str, bytes] = ("", b"")
        self._date: tuple[float, bytes] = (-1.0, b"")

    def lines(
        self, job: Job, subject: str, extras: Extras
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        if subject != self._subject[0]:
            self._subject = (subject, header_line("Subject", subject))
        date = float(int(time.time())) if extras.date is None else extras.date
        if date != self._date[0]:
            self._date = (date, date_line(date))
        own = [
            mailbox_line("To", Mailbox(job.email, job.name)),
            self._subject[1],
            self._date[1],
            message_id_line(extras.message_id),
        ]
        if self.headers.keys().isdisjoint(extras.headers):
            extra = [header_line(_check(n), v) for n, v in extras.headers.items()]
            fields = self.top_fields + _fields(b"".join(own)) + self.own_fields
            fields += _fields(b"".join(extra))
            block = b"".join((self.top, *own, self.own, *extra, self.last))
        else:  # the worker's field replaces the batch's, in its place
            merged = {**self.headers, **extras.headers}
            extra = [header_line(_check(n), v) for n, v in merged.items()]
            fields = self.top_fields + _fields(b"".join(own + extra))
            block = b"".join((self.top, *own, *extra, self.last))
        return block, fields + self.last_fields


def _fields(lines: bytes) -> list[tuple[bytes, bytes]]:
    """Header fields as ``dkim.rfc822_parse`` reads them: (name, value from just after the
    colon, folding and line end included)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in lines.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            name, value = fields[-1]
            fields[-1] = (name, value + line + b"\r\n")
        else:
            name, _, value = line.partition(b":")
            fields.append((name, value + b"\r\n"))
    return fields


@dataclass(frozen=True)
class _Layout:
    """What a batch's templates compile to for one setting of tracking: the HTML and text
    parts' layouts, their static lines worked out, the static links' table. It depends on
    nothing else of the batch, so batches that share their templates share it (``layout``):
    a batch of one recipient, the common case of a triggered message, costs a few dozen
    microseconds to plan instead of a template compilation."""

    html: _Html | None
    text: _Fenced | None
    parts: list[tuple[str, _Part]]  # (content type, part), text first
    link_table: tuple[str, ...]  # the static links, by their index in the table

    @classmethod
    def of(
        cls, templates: Templates, *, clicks: bool, opens: bool, text_links: bool
    ) -> _Layout | None:
        """None when the templates must take the careful way."""
        if not templates.plain:
            return None
        index: dict[str, int] = {}
        html: _Html | None = None
        text: _Fenced | None = None
        if templates.html is not None:
            fenced = _Fenced.of(templates.html, templates.sources["html"] or "")
            if fenced is None:
                return None
            html = _Html.of(fenced, index, clicks=clicks, opens=opens)
            if html is None:
                return None
        if templates.text is not None:
            text = _Fenced.of(templates.text, templates.sources["text"] or "")
            if text is None:
                return None
        parts: list[tuple[str, _Part]] = []
        if text is not None:
            if clicks and text_links:  # links found in the whole text, per recipient
                parts.append(("text/plain", _Part([0])))
            else:
                layout: list[str | int] = []
                for i, static in enumerate(text.statics):
                    layout += [static, i] if i < text.values else [static]
                parts.append(("text/plain", _Part([item for item in layout if item != ""])))
        if html is not None:
            parts.append(("text/html", _Part(html.layout, html.links)))
        return cls(html, text, parts, tuple(sorted(index, key=index.__getitem__)))


# Each worker's compiled templates (``mta.render.TemplateCache``) -> their layouts by
# tracking setting; gone with the templates. Builders are made on render threads: a race
# only compiles a layout twice.
_LAYOUTS: weakref.WeakKeyDictionary[Templates, dict[tuple[bool, bool, bool], _Layout | None]]
_LAYOUTS = weakref.WeakKeyDictionary()


def layout(templates: Templates, *, clicks: bool, opens: bool, text_links: bool) -> _Layout | None:
    """``_Layout.of``, made once per templates and tracking setting."""
    key = (clicks, opens, text_links)
    known = _LAYOUTS.get(templates)
    if known is None:
        known = _LAYOUTS.setdefault(templates, {})
    if key not in known:
        known[key] = _Layout.of(templates, clicks=clicks, opens=opens, text_links=text_links)
    return known[key]


class MessageBuilder:
    """Per batch and worker: the templates' layout, the batch's link table and what every
    message shares; ``build`` makes one recipient's message, ready for the wire."""

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
        planned = layout(
            templates, clicks=batch.track_clicks, opens=batch.track_opens, text_links=text_links
        )
        self.fast = planned is not None
        self._html = planned.html if planned else None
        self._text = planned.text if planned else None
        self._parts = [part for _, part in planned.parts] if planned else []
        self.link_table = planned.link_table if planned else ()
        if planned is not None:
            try:
                self._plan([kind for kind, _ in planned.parts])
            except MimeError:  # a batch header that cannot be written: the careful way says so
                self.fast = False

    def _plan(self, kinds: list[str]) -> None:
        """The batch's shared header and the boundary lines between the parts."""
        boundary = self.boundary
        if len(kinds) == 2:
            self.head = _Head(
                self.batch, b"MIME-Version: 1.0\r\n" + multipart_header(boundary)[:-2]
            )
            self.stretches = [
                _forms(f"--{boundary}\r\n".encode() + part_header(kind)) for kind in kinds
            ] + [_forms(f"--{boundary}--\r\n".encode())]
        else:
            self.head = _Head(self.batch, b"MIME-Version: 1.0\r\n" + part_header(kinds[0])[:-2])
            self.stretches = [(b"", b"")]

    # --- the fast way ------------------------------------------------------------------------

    def build(self, job: Job, links: Links, keys: list[SigningKey], extras: Extras) -> WireMessage:
        if not self.fast:
            return self.build_reference(job, links, keys, extras)
        data = job.data
        filled: list[list[str]] = []
        if self._text is not None:
            values = self._text.split(data)
            if values is None:
                return self.build_reference(job, links, keys, extras)
            if self.clicks and self.text_links:
                text = _interleave(self._text.statics, values)
                values = [rewrite_text_links(text, links.click_url)]
            filled.append(values)
        if self._html is not None:
            values = self._html.fenced.split(data)
            if values is None:
                return self.build_reference(job, links, keys, extras)
            filled.append(self._html.fill(values, links, self.link_table))
        if any("\r" in "".join(values) for values in filled):
            return self.build_reference(job, links, keys, extras)  # CR: line ends to normalize
        subject = self.templates.render_subject(data)
        head, fields = self.head.lines(job, subject, extras)
        wire: list[bytes] = []
        canonical: list[bytes] = []
        alone = len(self._parts) == 1
        dots = 0  # stuffed, not counted in the size
        for part, slots, stretch in zip(self._parts, filled, self.stretches, strict=False):
            wire.append(stretch[0])
            canonical.append(stretch[1])
            dots += part.lines(slots, wire, canonical, alone=alone)
        if not alone:
            wire.append(self.stretches[-1][0])
            canonical.append(self.stretches[-1][1])
        size = len(head) + 2 + sum(map(len, wire)) - dots
        # the whole message in one join: concatenating the 13 KB body copies it each time
        if not keys:
            return WireMessage(b"".join([head, b"\r\n", *wire, b".\r\n"]), size)
        body_hash = hashlib.sha256(_relaxed_end(b"".join(canonical))).digest()
        signature = signature_headers(
            fields, body_hash, keys, timestamp=extras.timestamp, known=self.head.known
        )
        message = b"".join([signature, head, b"\r\n", *wire, b".\r\n"])
        return WireMessage(message, len(signature) + size)

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
        batch = self.batch
        message = build_message(
            sender=batch.sender,
            to=Mailbox(job.email, job.name),
            subject=rendered.subject,
            html=html,
            text=text,
            message_id=extras.message_id,
            reply_to=batch.reply_to,
            headers={**batch.headers, **extras.headers},
            date=extras.date,
            boundary=self.boundary,
        )
        return WireMessage.of(sign(message, keys, timestamp=extras.timestamp))


def _interleave(statics: list[str], values: list[str]) -> str:
    out = [statics[0]]
    for value, text in zip(values, statics[1:], strict=True):
        out += (value, text)
    return "".join(out)


def _relaxed_end(canonical: bytes) -> bytes:
    """The end of ``mta.dkim.relaxed_body``: trailing empty lines go, an empty body is empty."""
    result: bytes = correct_empty_body(strip_trailing_lines(canonical))
    return result
