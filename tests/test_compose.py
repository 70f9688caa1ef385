"""The compiled builder writes, byte for byte, what the careful builder writes.

``MessageBuilder.build`` (compiled once per batch, lines remembered) against
``MessageBuilder.build_reference`` (render, rewrite, encode, sign and stuff the whole
message): on the fixture, with and without DKIM keys and tracking, and on generated
templates and data that aim at the edges (lines starting with a dot, long lines, trailing
spaces and tabs, non-ASCII text, links whose tags hold values, ``</body>``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import dkim
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.jobs import BatchContent, Job, Mailbox
from loadtests.harness import fixture_batch
from mta.compose import Extras, MessageBuilder
from mta.dkim import SigningKey
from mta.dkimkeys import KeyStore
from mta.render import TemplateError, Templates


class FixedLinks:
    """Deterministic tracking URLs (the builders take any ``Links``)."""

    def open_url(self) -> str:
        return "https://t.example/t/o/OPEN"

    def click_url(self, url: str) -> str:
        return "https://t.example/t/c/" + hashlib.sha256(url.encode()).hexdigest()[:20]

    def click_urls(self, urls: tuple[str, ...]) -> list[str]:
        return [self.click_url(url) for url in urls]


EXTRAS = Extras(
    message_id="agrcbwkro6ikatlngffnjid5mi-7.signature@shop.example.com",
    headers={
        "List-Unsubscribe": "<https://t.example/t/u/UNSUB>, <mailto:unsubscribe+x@shop.example.com>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    },
    date=1_790_000_000.0,
    timestamp=1_790_000_000,
)


@pytest.fixture(scope="module")
def key_pairs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, Any]]:
    store = KeyStore(tmp_path_factory.mktemp("keys"))
    store.generate("shop.example.com", "s1", "rsa", 2048)
    store.generate("shop.example.com", "e1", "ed25519", 0)
    return list(store.active_keys()["shop.example.com"])


@pytest.fixture(scope="module")
def signing_keys(key_pairs: list[tuple[Any, Any]]) -> list[SigningKey]:
    return [SigningKey.of(key, private) for key, private in key_pairs]


def content_of(body: dict[str, Any], **changes: Any) -> BatchContent:
    sender = body["from"]
    return BatchContent(
        sender=Mailbox(sender["email"], sender.get("name")),
        reply_to=Mailbox(body["reply_to"]["email"]) if body.get("reply_to") else None,
        subject=body["subject"],
        html=body.get("html"),
        text=body.get("text"),
        category=body.get("category"),
        stream=body["stream"],
        headers=body.get("headers") or {},
        **changes,
    )


def job_of(recipient: dict[str, Any], index: int = 7) -> Job:
    return Job(
        message_id=f"agrcbwkro6ikatlngffnjid5mi-{index}",
        batch_id="agrcbwkro6ikatlngffnjid5mi",
        position=index,
        email=recipient["email"],
        accepted_at=1.0,
        name=recipient.get("name"),
        data=recipient.get("data") or {},
    )


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("tracking", [(True, True), (False, False), (True, False)])
def test_the_fixture_is_built_the_same_both_ways(
    signing_keys: list[SigningKey], signed: bool, tracking: tuple[bool, bool]
) -> None:
    body = fixture_batch(3)
    content = content_of(body, track_opens=tracking[0], track_clicks=tracking[1])
    templates = Templates(content.subject, content.html, content.text)
    builder = MessageBuilder(content, templates, text_links=False, boundary="=_sluice_fixed")
    assert builder.fast, "the fixture prints data only: it takes the compiled way"
    assert (len(builder.link_table) >= 10) is tracking[1], "its static links: in the table"
    keys = signing_keys if signed else []
    for i, recipient in enumerate(body["recipients"]):
        job = job_of(recipient, i)
        fast = builder.build(job, FixedLinks(), keys, EXTRAS)
        careful = builder.build_reference(job, FixedLinks(), keys, EXTRAS)
        assert fast.data == careful.data
        assert fast.size == careful.size
        assert fast.data.endswith(b"\r\n.\r\n")


def test_batches_that_share_templates_share_their_layout_not_their_header(
    signing_keys: list[SigningKey],
) -> None:
    """A batch of one (a triggered message) costs no compilation when an earlier batch had
    the same templates: the layout is shared, per tracking setting; each batch still writes
    its own sender, headers and boundary, byte for byte as the careful way."""
    body = fixture_batch(1)
    templates = Templates(body["subject"], body["html"], body["text"])
    first = MessageBuilder(content_of(body), templates, text_links=False)
    other = dict(body, headers={"X-Campaign": "spring"}, reply_to={"email": "help@shop.test"})
    other["from"] = {"email": "news@shop.example.com", "name": "Other Sender"}
    second = MessageBuilder(content_of(other), templates, text_links=False)
    untracked = MessageBuilder(
        content_of(body, track_opens=False, track_clicks=False), templates, text_links=False
    )
    assert second._parts[0] is first._parts[0] and second._html is first._html
    assert untracked._html is not first._html and not untracked.link_table
    job = job_of(body["recipients"][0])
    for builder, sender in ((first, body["from"]["email"]), (second, "news@shop.example.com")):
        fast = builder.build(job, FixedLinks(), signing_keys, EXTRAS)
        assert fast.data == builder.build_reference(job, FixedLinks(), signing_keys, EXTRAS).data
        assert f"<{sender}>".encode() in fast.data.split(b"\r\n\r\n", 1)[0]
    assert b"X-Campaign: spring" in second.build(job, FixedLinks(), [], EXTRAS).data
    assert first.boundary != second.boundary


def test_the_compiled_message_verifies(
    signing_keys: list[SigningKey], key_pairs: list[tuple[Any, Any]]
) -> None:
    body = fixture_batch(1)
    content = content_of(body)
    templates = Templates(content.subject, content.html, content.text)
    builder = MessageBuilder(content, templates, text_links=True)
    wire = builder.build(job_of(body["recipients"][0]), FixedLinks(), signing_keys, EXTRAS)
    message = wire.data[:-3].replace(b"\r\n..", b"\r\n.")  # undo SMTP's stuffing
    records = {f"{key.record_name}.".encode(): key.txt_value().encode() for key, _ in key_pairs}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return records[name]

    # the RSA signature (on top) and the Ed25519 one, by dkimpy, with the published keys
    assert dkim.DKIM(message).verify(dnsfunc=dnsfunc, idx=0)
    assert dkim.DKIM(message).verify(dnsfunc=dnsfunc, idx=1)


# --- generated templates -------------------------------------------------------------------

_WORDS = st.sampled_from(
    [
        "Hi",
        "  two  spaces",
        "\ttab",
        "trailing ",
        "é ü ß",
        "a=b",
        "=3D",
        "--",
        "..",
        "x" * 90,
        "café " * 20,
        "<b>bold</b>",
        "&amp;",
        "</body>",
        "</BODY >",
        ".lead",
    ]
)
_LINE = st.lists(_WORDS, min_size=0, max_size=4).map(" ".join)
_URL = st.sampled_from(
    [
        "https://shop.example.com/a",
        "https://shop.example.com/b?x=1&amp;y=2",
        "http://x.example/",
        "mailto:a@b.example",
        "#top",
        "https://shop.example.com/a",
    ]
)
_VAR = st.sampled_from(["first_name", "cart_url", "city"])


@st.composite
def _html(draw: st.DrawFn) -> str:
    pieces = []
    end = draw(st.sampled_from(["\n", "\r\n"]))
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.integers(0, 6))
        if kind == 0:
            pieces.append(draw(_LINE) + end)
        elif kind == 1:
            pieces.append(end + "." + draw(_LINE) + end)  # a line that starts with a dot
        elif kind == 2:
            pieces.append(f'<a href="{draw(_URL)}">{draw(_LINE)}</a>')
        elif kind == 3:
            pieces.append(f'<a href="{{{{ {draw(_VAR)} }}}}">go</a>')
        elif kind == 4:
            pieces.append(f'<a title="{{{{ {draw(_VAR)} }}}}" href="{draw(_URL)}">x</a>')
        elif kind == 5:
            pieces.append(f"{{{{ {draw(_VAR)} }}}}")
        else:
            pieces.append(f'{{{{ {draw(_VAR)} | default("{draw(_LINE)}") }}}}')
    if draw(st.booleans()):
        pieces.append("</body></html>" + end)
    return "".join(pieces)


_VALUE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=120,
) | st.sampled_from(
    [
        "\n.dot line",
        "https://shop.example.com/a",
        " data-sluice-notrack",
        "x" * 200,
        "  spaced  \t",
        "line\r",
        "\r\nafter",
        "</body>",
    ]
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    html=st.none() | _html(),
    text=st.none() | _html(),
    data=st.dictionaries(_VAR, _VALUE, max_size=3),
    text_links=st.booleans(),
    tracking=st.tuples(st.booleans(), st.booleans()),
    headers=st.sampled_from([{}, {"X-Campaign": "spring sale " * 9}, {"List-Unsubscribe": "<x>"}]),
)
def test_generated_templates_are_built_the_same_both_ways(
    signing_keys: list[SigningKey],
    html: str | None,
    text: str | None,
    data: dict[str, str],
    text_links: bool,
    tracking: tuple[bool, bool],
    headers: dict[str, str],
) -> None:
    assume(html is not None or text is not None)
    content = BatchContent(
        sender=Mailbox("news@shop.example.com", "Shop"),
        subject="Hello {{ first_name | default('there') }}",
        html=html,
        text=text,
        stream="marketing",
        headers=headers,
        track_opens=tracking[0],
        track_clicks=tracking[1],
    )
    try:
        templates = Templates(content.subject, content.html, content.text)
    except TemplateError:
        assume(False)
        raise
    builder = MessageBuilder(content, templates, text_links=text_links, boundary="=_sluice_b")
    if "\r" not in (html or "") + (text or ""):
        assert builder.fast, "these templates print data only"
    job = Job(
        "agrcbwkro6ikatlngffnjid5mi-3",
        "agrcbwkro6ikatlngffnjid5mi",
        3,
        "ann@example.org",
        1.0,
        data=data,
    )
    try:
        careful = builder.build_reference(job, FixedLinks(), signing_keys[:1], EXTRAS)
    except Exception:  # an undefined variable: both ways refuse it
        with pytest.raises(Exception):  # noqa: B017
            builder.build(job, FixedLinks(), signing_keys[:1], EXTRAS)
        return
    fast = builder.build(job, FixedLinks(), signing_keys[:1], EXTRAS)
    assert fast.data == careful.data
    assert fast.size == careful.size


@pytest.mark.parametrize(
    "value",
    [
        "x" * 998,  # one word too long to fold: encoded words
        "spring sale " * 60,  # folded at spaces
        "Grüße aus Köln, " * 20,  # not ASCII
        "\u00e9" * 300,
    ],
    ids=["word-998", "folded", "non-ascii", "non-ascii-word"],
)
def test_long_and_encoded_headers_are_built_the_same_both_ways(
    signing_keys: list[SigningKey], value: str
) -> None:
    """The compiled way writes the header block as it is built (nothing rescans it): every
    line of it must already end in CRLF and fit in 998 octets."""
    body = {**fixture_batch(1), "headers": {"X-Campaign": value}}
    content = content_of(body)
    builder = MessageBuilder(
        content, Templates(content.subject, content.html, content.text), text_links=False
    )
    job = job_of(body["recipients"][0])
    fast = builder.build(job, FixedLinks(), signing_keys, EXTRAS)
    assert fast.data == builder.build_reference(job, FixedLinks(), signing_keys, EXTRAS).data
    lines = fast.data.split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines)
    assert max(map(len, lines)) <= 998


# --- lines that hold only tracked URLs -----------------------------------------------------


class TokenLinks:
    """Tracking URLs of a given token, as long as the token makes them (message ids of
    different lengths give link tokens of different lengths)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def open_url(self) -> str:
        return f"https://t.example/t/o/{self.token}"

    def click_url(self, url: str) -> str:
        return f"https://t.example/t/c/{self.token}." + hashlib.sha256(url.encode()).hexdigest()[:6]

    def click_urls(self, urls: tuple[str, ...]) -> list[str]:
        return [self.click_url(url) for url in urls]


def test_links_of_every_length_and_dots_where_lines_begin_are_built_the_same_both_ways() -> None:
    """The lines holding only links come from a template per set of URL lengths: tokens of
    each length from 1 to 120, all dots (so a soft line break puts a dot at the start of a
    line, which SMTP stuffs), all letters, mixed; each length on fresh templates (a part keeps
    a few) and then all on one builder (the rest encoded whole); last, tokens that are not
    inert to quoted-printable (``=``, a space, not ASCII: the lines are encoded whole)."""
    body = fixture_batch(1)
    content = content_of(body)
    job = job_of(body["recipients"][0])

    def builder() -> MessageBuilder:
        templates = Templates(content.subject, content.html, content.text)
        return MessageBuilder(content, templates, text_links=False)

    def same_both_ways(builder: MessageBuilder, token: str) -> bytes:
        fast = builder.build(job, TokenLinks(token), [], EXTRAS)  # the body is the point
        careful = builder.build_reference(job, TokenLinks(token), [], EXTRAS)
        assert fast.data == careful.data, token
        assert fast.size == careful.size
        return fast.data

    built: dict[str, bytes] = {}
    shared = builder()
    for n in range(1, 121):
        fresh = builder()
        for token in ("." * n, "a" * n, "a.b-" * (n // 4) + "_" * (n % 4)):
            built[token] = same_both_ways(fresh, token)
            same_both_ways(shared, token)
    for token in ["a=b", "a b", "=" * 80, "é"]:
        same_both_ways(shared, token)
    stuffed = sum(
        built["." * n].count(b"\r\n..") > built["a" * n].count(b"\r\n..") for n in range(1, 121)
    )
    assert stuffed, "some soft line break put a URL's dot first on a line"


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    html=_html(),
    data=st.dictionaries(_VAR, _VALUE, max_size=3),
    tokens=st.lists(
        st.text(alphabet="a.-_~=%:/é ", min_size=0, max_size=90), min_size=1, max_size=4
    ),
)
def test_generated_links_of_any_length_are_built_the_same_both_ways(
    signing_keys: list[SigningKey], html: str, data: dict[str, str], tokens: list[str]
) -> None:
    content = BatchContent(
        sender=Mailbox("news@shop.example.com", "Shop"),
        subject="Hello",
        html=html,
        text=None,
        stream="marketing",
        track_opens=True,
        track_clicks=True,
    )
    try:
        templates = Templates(content.subject, content.html, content.text)
    except TemplateError:
        assume(False)
        raise
    builder = MessageBuilder(content, templates, text_links=False, boundary="=_sluice_b")
    job = Job(
        "agrcbwkro6ikatlngffnjid5mi-3",
        "agrcbwkro6ikatlngffnjid5mi",
        3,
        "a@example.org",
        1.0,
        data=data,
    )
    for token in tokens:  # one builder, many messages: the templates it keeps are reused
        try:
            careful = builder.build_reference(job, TokenLinks(token), [], EXTRAS)
        except Exception:  # an undefined variable: both ways refuse it
            with pytest.raises(Exception):  # noqa: B017
                builder.build(job, TokenLinks(token), [], EXTRAS)
            return
        fast = builder.build(job, TokenLinks(token), [], EXTRAS)
        assert fast.data == careful.data
        assert fast.size == careful.size
