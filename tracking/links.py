"""Rewriting the HTML part for tracking: every followed link through ``/t/c/``, and a pixel.

Only ``<a href>`` with an http(s) URL is rewritten; ``mailto:``, ``tel:``, ``#``
anchors, other schemes and links marked ``data-sluice-notrack`` stay as they
are. The URL is the attribute value with HTML character references decoded
(``&amp;`` -> ``&``), as a browser would follow it, so the redirect restores it
byte for byte.

``MessageLinks`` makes the tracked URLs of one message: one sealed message token
(the pixel's), a link token naming it per URL of the batch's link table, and a
sealed click token for a URL the table does not hold (``tracking.tokens``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable

from tracking.tokens import Tokens

_ANCHOR = re.compile(r"""<a\b(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
_HREF = re.compile(r"""(\shref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""", re.IGNORECASE)
_NOTRACK = re.compile(r"\sdata-sluice-notrack\b", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_SPACE = " \t\n\r\f"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_URL = re.compile(r"https?://[^\s<>\"'\x00-\x1f\x7f]+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}"
MAX_TABLE_URLS = 1000  # a batch's link table; more links than that are sealed one by one


def link_of(tag: str) -> tuple[str, re.Match[str]] | None:
    """The URL an ``<a>`` tag's href would have tracked, and the href's match in the tag; None
    for a tag marked ``data-sluice-notrack``, without an href, or not to an http(s) URL."""
    if "notrack" in tag.lower() and _NOTRACK.search(tag):
        return None
    href = _HREF.search(tag)
    if href is None:
        return None
    quoted, single, bare = href.group(2, 3, 4)
    raw = quoted if quoted is not None else single if single is not None else bare
    url = (html.unescape(raw) if "&" in raw else raw).strip(_SPACE)
    if not url.lower().startswith(("http://", "https://")) or _CONTROL.search(url):
        return None
    return url, href


def rewrite_links(markup: str, tracked: Callable[[str], str]) -> tuple[str, list[str]]:
    """``markup`` with each trackable link's URL replaced by ``tracked(url)``; and the URLs."""
    urls: list[str] = []

    def anchor(match: re.Match[str]) -> str:
        tag = match.group(0)
        found = link_of(tag)
        if found is None:
            return tag
        url, href = found
        urls.append(url)
        replaced = f'{href.group(1)}"{html.escape(tracked(url), quote=True)}"'
        return tag[: href.start()] + replaced + tag[href.end() :]

    return _ANCHOR.sub(anchor, markup), urls


def rewrite_text_links(text: str, tracked: Callable[[str], str]) -> str:
    """Bare http(s) URLs of a text part through ``tracked``; trailing punctuation stays out."""

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        kept = url.rstrip(_TRAILING)
        return tracked(kept) + url[len(kept) :] if kept else url

    return _TEXT_URL.sub(one, text)


def pixel(url: str) -> str:
    """The open pixel's tag."""
    return (
        f'<img src="{html.escape(url, quote=True)}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">'
    )


def add_pixel(markup: str, url: str) -> str:
    """The open pixel, just before ``</body>`` (or at the end)."""
    ends = list(_BODY_END.finditer(markup))
    if not ends:
        return markup + pixel(url)
    cut = ends[-1].start()
    return markup[:cut] + pixel(url) + markup[cut:]


class MessageLinks:
    """The tracked URLs of one message. ``table`` maps each URL of the batch's link table to
    its index; the message token is sealed once, on first use, for the pixel and every
    link in the table."""

    def __init__(
        self, tokens: Tokens, public_url: str, message_id: str, table: dict[str, int]
    ) -> None:
        self._tokens = tokens
        self._base = public_url.rstrip("/")
        self._message_id = message_id
        self._table = table
        self._token: str | None = None

    def _message_token(self) -> str:
        if self._token is None:
            self._token = self._tokens.seal_message(self._message_id)
        return self._token

    def open_url(self) -> str:
        """The open pixel's URL."""
        return f"{self._base}/t/o/{self._message_token()}"

    def click_url(self, url: str) -> str:
        """The tracked URL of ``url``: a link token if the batch's table holds it, else a
        sealed click token with the URL inside (a link made from recipient data)."""
        index = self._table.get(url)
        if index is None:
            return f"{self._base}/t/c/{self._tokens.seal('click', self._message_id, url)}"
        return f"{self._base}/t/c/{self._tokens.link(self._message_token(), index)}"

    def click_urls(self, urls: tuple[str, ...]) -> list[str]:
        """``click_url`` of each of ``urls``: the table's links of a message, made together."""
        indexes = [self._table.get(url) for url in urls]
        if None in indexes:
            return [self.click_url(url) for url in urls]
        segments = self._tokens.links(self._message_token(), indexes)  # type: ignore[arg-type]
        prefix = f"{self._base}/t/c/"
        return [prefix + segment for segment in segments]


def static_links(markup: str, template: str) -> list[str]:
    """The tracked URLs of a rendered HTML part that are links written out in its template
    source (not made from recipient data), each once, in order, at most ``MAX_TABLE_URLS``:
    a link table's candidates."""
    _, written = rewrite_links(template, str)
    _, urls = rewrite_links(markup, str)
    static = set(written)
    return [url for url in dict.fromkeys(urls) if url in static][:MAX_TABLE_URLS]


def url_indexes(urls: Iterable[str]) -> dict[str, int]:
    """A stored link table as ``MessageLinks`` takes it: each URL to its first index."""
    table: dict[str, int] = {}
    for index, url in enumerate(urls):
        table.setdefault(url, index)
    return table
