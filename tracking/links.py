"""Rewriting the HTML part for tracking: every followed link through ``/t/c/``, and a pixel.

Only ``<a href>`` with an http(s) URL is rewritten; ``mailto:``, ``tel:``, ``#``
anchors, other schemes and links marked ``data-sluice-notrack`` stay as they
are. The URL is the attribute value with HTML character references decoded
(``&amp;`` -> ``&``), as a browser would follow it, so the redirect restores it
byte for byte.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

_ANCHOR = re.compile(r"""<a\b(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
_HREF = re.compile(r"""(\shref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""", re.IGNORECASE)
_NOTRACK = re.compile(r"\sdata-sluice-notrack\b", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_SPACE = " \t\n\r\f"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_URL = re.compile(r"https?://[^\s<>\"'\x00-\x1f\x7f]+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}"


def rewrite_links(markup: str, tracked: Callable[[str], str]) -> tuple[str, list[str]]:
    """``markup`` with each trackable link's URL replaced by ``tracked(url)``; and the URLs."""
    urls: list[str] = []

    def anchor(match: re.Match[str]) -> str:
        tag = match.group(0)
        if "notrack" in tag.lower() and _NOTRACK.search(tag):
            return tag
        href = _HREF.search(tag)
        if href is None:
            return tag
        quoted, single, bare = href.group(2, 3, 4)
        raw = quoted if quoted is not None else single if single is not None else bare
        url = (html.unescape(raw) if "&" in raw else raw).strip(_SPACE)
        if not url.lower().startswith(("http://", "https://")) or _CONTROL.search(url):
            return tag
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


def add_pixel(markup: str, url: str) -> str:
    """The open pixel, just before ``</body>`` (or at the end)."""
    pixel = (
        f'<img src="{html.escape(url, quote=True)}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">'
    )
    ends = list(_BODY_END.finditer(markup))
    if not ends:
        return markup + pixel
    cut = ends[-1].start()
    return markup[:cut] + pixel + markup[cut:]
