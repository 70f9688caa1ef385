"""Tracking: link rewriting, sealed tokens, the /t/ endpoints, one-click unsubscribe."""

from __future__ import annotations

import asyncio
import html
import random
import re
import string
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from core.settings import Settings
from core.store import Store
from loadtests.harness import cart_reminder
from mta.dkimkeys import KeyStore
from mta.worker import Worker
from tests.conftest import Sink
from tests.inprocess import send
from tracking.endpoints import PIXEL
from tracking.links import (
    MessageLinks,
    add_pixel,
    rewrite_links,
    rewrite_text_links,
    static_links,
)
from tracking.tokens import (
    EPOCH,
    TokenError,
    Tokens,
    load_keys,
    rotate_key,
    unsubscribe_payload,
)

Client = TestClient[Any, Any]


def tokens_of(tmp_path: Path) -> Tokens:
    """The keys of the data dir the ``api`` fixture's app uses."""
    return Tokens(load_keys(tmp_path / "data"))


# --- rewriting ---------------------------------------------------------------------------


def test_only_followable_links_are_rewritten_and_entities_decode() -> None:
    markup = (
        '<a href="https://shop.example.com/p?a=1&amp;b=2">one</a>'
        "<a class='x' href='http://shop.example.com/q?x=%20y#top'>two</a>"
        "<A HREF=https://shop.example.com/plain>three</A>"
        '<a href=" https://shop.example.com/space ">four</a>'
        '<a href="mailto:help@example.com">mail</a><a href="tel:+90212">tel</a>'
        '<a href="#section">anchor</a><a href="javascript:alert(1)">js</a>'
        '<a data-sluice-notrack href="https://shop.example.com/keep">keep</a>'
        '<a title="a > b" href="https://shop.example.com/gt">gt</a>'
        '<a name="no-href">none</a>'
    )
    seen: list[str] = []

    def tracked(url: str) -> str:
        seen.append(url)
        return f"https://t.example/{len(seen)}?k=1&z=2"

    rewritten, urls = rewrite_links(markup, tracked)
    assert (
        urls
        == seen
        == [
            "https://shop.example.com/p?a=1&b=2",
            "http://shop.example.com/q?x=%20y#top",
            "https://shop.example.com/plain",
            "https://shop.example.com/space",
            "https://shop.example.com/gt",
        ]
    )
    assert 'href="https://t.example/1?k=1&amp;z=2"' in rewritten
    for kept in (
        "mailto:help@example.com",
        "tel:+90212",
        "#section",
        "javascript:alert(1)",
        "https://shop.example.com/keep",
    ):
        assert f'href="{kept}"' in rewritten
    assert rewritten.count("t.example") == 5


def test_fixture_links_and_pixel() -> None:
    source = cart_reminder()["html"].replace("{{ cart_url }}", "https://shop.example.com/cart/7")
    originals = [html.unescape(u) for u in re.findall(r'<a [^>]*href="([^"]+)"', source)]
    rewritten, urls = rewrite_links(source, lambda url: "https://t.example/c")
    assert urls == originals and len(urls) == 17
    pixeled = add_pixel(rewritten, "https://t.example/o")
    assert pixeled.index('<img src="https://t.example/o"') < pixeled.rindex("</body>")
    text = rewrite_text_links(
        "See https://shop.example.com/cart/7. Or (https://x.example/a).", lambda u: "T"
    )
    assert text == "See T. Or (T)."


def test_static_links_are_the_template_s_own_once_each() -> None:
    template = (
        '<a href="https://shop.example.com/p?a=1&amp;b=2">x</a>'
        '<a href="{{ cart_url }}">cart</a><a href="https://shop.example.com/u/{{ id }}">me</a>'
        '<a href="https://shop.example.com/p?a=1&amp;b=2">again</a>'
        '<a href="https://shop.example.com/help">help</a>'
    )
    rendered = (
        '<a href="https://shop.example.com/p?a=1&amp;b=2">x</a>'
        '<a href="https://shop.example.com/help">cart</a><a href="https://shop.example.com/u/7">me</a>'
        '<a href="https://shop.example.com/p?a=1&amp;b=2">again</a>'
        '<a href="https://shop.example.com/help">help</a>'
    )
    assert static_links(rendered, template) == [
        "https://shop.example.com/p?a=1&b=2",
        "https://shop.example.com/help",  # also what cart_url happened to be: the same URL
    ]


def test_message_links_seal_what_the_table_does_not_hold(tmp_path: Path) -> None:
    tokens = Tokens(load_keys(tmp_path))
    table = {"https://shop.example.com/a": 0, "https://shop.example.com/b": 1}
    for links_table in (table, {}):
        links = MessageLinks(
            tokens, "https://t.example/", "agrareeadmi5kof6mrqhemz3z4-3", links_table
        )
        pixel = links.open_url()
        assert pixel.startswith("https://t.example/t/o/")
        message_token = pixel.removeprefix("https://t.example/t/o/")
        assert tokens.open(message_token).kind == "message"
        for url in (
            "https://shop.example.com/a",
            "https://shop.example.com/b",
            "https://x.example/me",
        ):
            token = links.click_url(url).removeprefix("https://t.example/t/c/")
            if url in links_table:
                assert token.startswith(f"{message_token}.")
                assert tokens.open_link(token)[1] == links_table[url]
            else:  # a URL from recipient data, or no table: sealed inside, as before
                assert "." not in token and tokens.open(token, expect="click").url == url
        # the links of a message made together are the links made one by one
        # (a sealed token differs each time: its nonce)
        urls = ("https://shop.example.com/b", "https://x.example/me", "https://shop.example.com/a")
        for url, made in zip(urls, links.click_urls(urls), strict=True):
            token = made.removeprefix("https://t.example/t/c/")
            if url in links_table:
                assert made == links.click_url(url)
            else:
                assert tokens.open(token, expect="click").url == url


# --- tokens ------------------------------------------------------------------------------


def test_tokens_round_trip_and_refuse_anything_altered(tmp_path: Path) -> None:
    tokens = Tokens(load_keys(tmp_path))
    url = "https://shop.example.com/p/100?utm_source=email&utm_campaign=cart#top"
    token = tokens.seal("click", "agrareeadmi5kof6mrqhemz3z4-17", url)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert "shop" not in token and "example" not in token, "the destination is not readable"
    opened = tokens.open(token, expect="click")
    assert (opened.kind, opened.message_id, opened.url) == (
        "click",
        "agrareeadmi5kof6mrqhemz3z4-17",
        url,
    )
    with pytest.raises(TokenError):
        tokens.open(token, expect="open")
    for i in range(len(token)):
        flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        with pytest.raises(TokenError):
            tokens.open(flipped)
    for cut in (1, 5, 20, len(token) - 1):
        with pytest.raises(TokenError):
            tokens.open(token[:cut])
    with pytest.raises(TokenError):
        tokens.open(tokens.seal("open", "m-1", now=0), now=1577836800 + 500 * 86400)  # expired


def test_key_rotation_keeps_old_links_working(tmp_path: Path) -> None:
    old = Tokens(load_keys(tmp_path))
    token = old.seal("open", "m-1")
    rotate_key(tmp_path)
    new = Tokens(load_keys(tmp_path))
    assert new.sealing_id != old.sealing_id
    assert new.open(token).message_id == "m-1"
    assert Tokens(load_keys(tmp_path)).open(new.seal("open", "m-2")).message_id == "m-2"
    stranger = Tokens(load_keys(tmp_path / "elsewhere"))
    with pytest.raises(TokenError):
        stranger.open(token)


@given(st.text(max_size=300))
def test_any_text_is_refused_cleanly(text: str) -> None:
    tokens = Tokens([(1, b"k" * 32)])
    with pytest.raises(TokenError):
        tokens.open(text)


def test_link_tokens_name_a_message_and_an_index_and_refuse_anything_altered(
    tmp_path: Path,
) -> None:
    tokens = Tokens(load_keys(tmp_path))
    message_token = tokens.seal_message("agrareeadmi5kof6mrqhemz3z4-17")
    opened = tokens.open(message_token)
    assert (opened.kind, opened.message_id, opened.url) == (
        "message",
        "agrareeadmi5kof6mrqhemz3z4-17",
        None,
    )
    links = [tokens.link(message_token, i) for i in range(20)]
    assert tokens.links(message_token, list(range(20))) == links  # one base64 for all
    assert tokens.links(message_token, [7, 0, 7]) == [links[7], links[0], links[7]]
    for i, link in enumerate(links):
        assert re.fullmatch(rf"{re.escape(message_token)}\.{i}\.[A-Za-z0-9_-]{{12}}", link)
        found, index = tokens.open_link(link)
        assert (found.kind, found.message_id, index) == ("message", opened.message_id, i)

    link = links[3]
    _, _, mac = link.split(".")
    other = tokens.seal_message("agrareeadmi5kof6mrqhemz3z4-18")
    refused = [
        f"{message_token}.4.{mac}",  # another index, this MAC
        f"{message_token}.03.{mac}",  # the same index spelled differently
        f"{message_token}.+3.{mac}",
        f"{message_token}.3.{links[4].split('.')[2]}",  # another index's MAC
        f"{other}.3.{mac}",  # another message's token
        f"{tokens.seal('open', opened.message_id)}.3.{mac}",  # not a message token
        link + ".",
        link + "A",
        link[:-1],
        f"{message_token}.3",
        message_token,
    ]
    for i in range(len(link)):
        if link[i] != ".":
            refused.append(link[:i] + ("A" if link[i] != "A" else "B") + link[i + 1 :])
    for token in refused:
        with pytest.raises(TokenError):
            tokens.open_link(token)
    for kind in ("open", "click", "unsubscribe"):  # a message token is none of the old kinds
        with pytest.raises(TokenError):
            tokens.open(message_token, expect=kind)
    with pytest.raises(TokenError):  # expired with its message token
        tokens.open_link(tokens.link(tokens.seal_message("m-1", now=0), 0), now=EPOCH + 500 * 86400)
    stranger = Tokens(load_keys(tmp_path / "elsewhere"))
    with pytest.raises(TokenError):
        stranger.open_link(link)


def test_key_rotation_keeps_old_link_tokens_working(tmp_path: Path) -> None:
    old = Tokens(load_keys(tmp_path))
    link = old.link(old.seal_message("m-1"), 5)
    rotate_key(tmp_path)
    new = Tokens(load_keys(tmp_path))
    assert new.open_link(link)[0].message_id == "m-1" and new.open_link(link)[1] == 5
    fresh = new.link(new.seal_message("m-2"), 5)
    assert fresh.split(".")[2] != link.split(".")[2]
    assert Tokens(load_keys(tmp_path)).open_link(fresh)[0].message_id == "m-2"


@given(st.text(max_size=300) | st.text(alphabet="AQa-_.0123456789", max_size=200))
def test_any_text_is_refused_as_a_link_cleanly(text: str) -> None:
    tokens = Tokens([(1, b"k" * 32)])
    with pytest.raises(TokenError):
        tokens.open_link(text)


# --- link tables -------------------------------------------------------------------------


async def test_link_table_is_written_once_and_kept_as_long_as_asked(store: Store) -> None:
    urls = ["https://shop.example.com/a", "https://shop.example.com/caf\u00e9?q=1&r=2"]
    assert await store.link_table("agrareeadmi5kof6mrqhemz3z4") is None
    await store.save_link_table("agrareeadmi5kof6mrqhemz3z4", urls, 401 * 86400)
    # another worker saving its own idea of the table changes nothing: links already built
    # index the first one
    await store.save_link_table("agrareeadmi5kof6mrqhemz3z4", ["https://evil.example/"], 60)
    assert await store.link_table("agrareeadmi5kof6mrqhemz3z4") == urls
    batch_id = "agrareeadmi5kof6mrqhemz3z4"
    ttl = await store.redis.ttl(store.shards.home(batch_id).keys.link_table(batch_id))
    assert 400 * 86400 < ttl <= 401 * 86400


# --- endpoints ---------------------------------------------------------------------------


async def test_click_redirects_to_exactly_the_original_url(api: Client, tmp_path: Path) -> None:
    tokens = tokens_of(tmp_path)
    for url in (
        "https://shop.example.com/p/100?utm_source=email&utm_campaign=cart",
        "https://shop.example.com/search?q=a%26b&x=1&x=2#results",
        "http://shop.example.com/",
        "https://shop.example.com/caf%C3%A9?q=%E2%82%AC",
    ):
        answer = await api.get(
            f"/t/c/{tokens.seal('click', 'agraa-1', url)}", allow_redirects=False
        )
        assert answer.status == 302
        assert answer.headers["Location"] == url
        assert "Set-Cookie" not in answer.headers


async def test_ten_thousand_bad_tokens_never_redirect_nor_fail(api: Client, tmp_path: Path) -> None:
    tokens = tokens_of(tmp_path)
    rng = random.Random(7)
    good = [tokens.seal("click", f"m{i}-1", f"https://shop.example.com/{i}") for i in range(20)]
    alphabet = string.ascii_letters + string.digits + "-_"
    bad: list[str] = []
    for i in range(10_000):
        kind = i % 6
        token = rng.choice(good)
        if kind == 0:  # one character changed
            at = rng.randrange(len(token))
            token = token[:at] + rng.choice(alphabet.replace(token[at], "")) + token[at + 1 :]
        elif kind == 1:  # truncated
            token = token[: rng.randrange(1, len(token))]
        elif kind == 2:  # random base64url
            token = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 200)))
        elif kind == 3:  # another kind of token
            token = tokens.seal(rng.choice(["open", "unsubscribe"]), "m-1", "a@b.example\n")
        elif kind == 4:  # junk, percent-encoded
            token = "".join(f"%{rng.randrange(256):02X}" for _ in range(rng.randrange(1, 40)))
        else:  # extended
            token = token + rng.choice(alphabet) * rng.randrange(1, 5)
        bad.append(token)
    statuses = await never_redirected(api, bad)
    assert set(statuses) <= {404}, statuses
    long = await api.get("/t/c/" + "A" * 8000, allow_redirects=False)
    assert long.status in (404, 414, 431) and "Location" not in long.headers


async def accepted_message(api: Client) -> str:
    """The id of a message the API accepted (its record is where events go)."""
    answer = await (await api.post("/v1/messages", json=cart_reminder())).json()
    return answer["results"][0]["message_id"]  # type: ignore[no-any-return]


REDIRECTED = [
    "https://shop.example.com/p/100?utm_source=email&utm_campaign=cart",
    "https://shop.example.com/search?q=a%26b&x=1&x=2#results",
    "http://shop.example.com/",
    "https://shop.example.com/caf%C3%A9?q=%E2%82%AC",
]


async def test_link_tokens_redirect_to_their_urls_and_old_tokens_still_do(
    api: Client, store: Store, tmp_path: Path
) -> None:
    message_id = await accepted_message(api)
    batch_id, _ = message_id.rsplit("-", 1)
    await store.save_link_table(batch_id, REDIRECTED, 86400)  # as the worker does
    tokens = tokens_of(tmp_path)
    message_token = tokens.seal_message(message_id)

    pixel = await api.get(f"/t/o/{message_token}")
    assert pixel.status == 200 and await pixel.read() == PIXEL
    for index, url in enumerate(REDIRECTED):
        answer = await api.get(f"/t/c/{tokens.link(message_token, index)}", allow_redirects=False)
        assert answer.status == 302
        assert answer.headers["Location"] == url
        assert "Set-Cookie" not in answer.headers and "no-store" in answer.headers["Cache-Control"]
    # a burst on a link of a batch this process has not read yet: every one redirects
    other_batch = "agrareeadmi5kof6mrqhemz3z4"
    await store.save_link_table(other_batch, REDIRECTED[::-1], 86400)
    burst_link = tokens.link(tokens.seal_message(f"{other_batch}-3"), 0)
    burst = await asyncio.gather(
        *(api.get(f"/t/c/{burst_link}", allow_redirects=False) for _ in range(50))
    )
    assert {(a.status, a.headers["Location"]) for a in burst} == {(302, REDIRECTED[-1])}

    # tokens sealed the way every message was before link tokens: as they always did
    old_open = tokens.seal("open", message_id)
    old_click = tokens.seal("click", message_id, "https://shop.example.com/old?a=1&b=2")
    assert (await api.get(f"/t/o/{old_open}")).status == 200
    answer = await api.get(f"/t/c/{old_click}", allow_redirects=False)
    assert answer.status == 302
    assert answer.headers["Location"] == "https://shop.example.com/old?a=1&b=2"

    found = await store.message(message_id)
    assert found is not None
    events = found["events"]
    assert [e["type"] for e in events] == [
        "queued",
        "opened",
        *["clicked"] * 4,
        "opened",
        "clicked",
    ]
    assert [e["url"] for e in events if e["type"] == "clicked"] == [
        *REDIRECTED,
        "https://shop.example.com/old?a=1&b=2",
    ]
    assert all(e["message_id"] == message_id for e in events)


async def test_a_link_whose_table_is_missing_is_a_plain_404(
    api: Client, store: Store, tmp_path: Path
) -> None:
    message_id = await accepted_message(api)
    batch_id, _ = message_id.rsplit("-", 1)
    tokens = tokens_of(tmp_path)
    message_token = tokens.seal_message(message_id)
    link = tokens.link(message_token, 0)

    missing = await api.get(f"/t/c/{link}", allow_redirects=False)
    assert missing.status == 404 and "Location" not in missing.headers
    assert missing.content_type == "text/plain" and await missing.text() == "Not found\n"
    await store.save_link_table(batch_id, ["https://shop.example.com/only"], 60)
    for index in (1, 17, 999_999):  # beyond the table
        beyond = await api.get(f"/t/c/{tokens.link(message_token, index)}", allow_redirects=False)
        assert beyond.status == 404 and "Location" not in beyond.headers
    not_of_a_batch = tokens.link(tokens.seal_message("m-1"), 0)
    assert (await api.get(f"/t/c/{not_of_a_batch}", allow_redirects=False)).status == 404
    found = await store.message(message_id)
    assert found is not None and [e["type"] for e in found["events"]] == ["queued"]

    # a missing table is not remembered: once saved, the link works
    answer = await api.get(f"/t/c/{link}", allow_redirects=False)
    assert (answer.status, answer.headers["Location"]) == (302, "https://shop.example.com/only")


async def test_ten_thousand_forged_link_tokens_never_redirect_nor_fail(
    api: Client, store: Store, tmp_path: Path
) -> None:
    tokens = tokens_of(tmp_path)
    genuine_id = await accepted_message(api)
    batch_id, _ = genuine_id.split("-", 1)
    table = [f"https://shop.example.com/{i}" for i in range(20)]
    await store.save_link_table(batch_id, table, 86400)
    message_tokens = [tokens.seal_message(genuine_id)]
    message_tokens += [tokens.seal_message(f"{batch_id}-{m}") for m in range(1, 5)]
    genuine = await api.get(f"/t/c/{tokens.link(message_tokens[0], 7)}", allow_redirects=False)
    assert genuine.headers["Location"] == table[7], "the table is there: a forgery could redirect"

    rng = random.Random(11)
    alphabet = string.ascii_letters + string.digits + "-_"
    garbage = [
        "-1",
        "-0",
        "+1",
        "1e3",
        "0x1",
        " 1",
        "1 ",
        "01",
        "00",
        "",
        "\u0661",
        "\u00b2",
        "1_0",
    ]
    bad: list[str] = []
    for i in range(10_000):
        kind = i % 10
        message_token = rng.choice(message_tokens)
        index = rng.randrange(20)
        link = tokens.link(message_token, index)
        _, _, mac = link.split(".")
        if kind == 0:  # another index, this MAC
            token = f"{message_token}.{(index + rng.randrange(1, 20)) % 20}.{mac}"
        elif kind == 1:  # one character of the MAC changed
            at = rng.randrange(len(mac))
            changed = mac[:at] + rng.choice(alphabet.replace(mac[at], "")) + mac[at + 1 :]
            token = f"{message_token}.{index}.{changed}"
        elif kind == 2:  # the MAC of another index
            other = tokens.link(message_token, (index + rng.randrange(1, 20)) % 20)
            token = f"{message_token}.{index}.{other.split('.')[2]}"
        elif kind == 3:  # another message's token with this MAC
            other_token = rng.choice([t for t in message_tokens if t != message_token])
            token = f"{other_token}.{index}.{mac}"
        elif kind == 4:  # truncated
            token = link[: rng.randrange(1, len(link))]
        elif kind == 5:  # random junk with dots
            token = ".".join(
                "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 90)))
                for _ in range(rng.randrange(2, 5))
            )
        elif kind == 6:  # huge indexes, forged or with their own MAC (beyond the table)
            huge = rng.choice([20, 21, 999_999, 10**6, 10**9, 10**30])
            own = f"{message_token}.{huge}"
            token = rng.choice([f"{own}.{mac}", tokens.link(message_token, huge)])
        elif kind == 7:  # negative and garbage indexes
            token = f"{message_token}.{rng.choice(garbage)}.{mac}"
        elif kind == 8:  # one character of the message token changed
            at = rng.randrange(len(message_token))
            swapped = rng.choice(alphabet.replace(message_token[at], ""))
            token = f"{message_token[:at]}{swapped}{message_token[at + 1 :]}.{index}.{mac}"
        else:  # extended
            token = link + rng.choice([".", "A", ".0", "." + mac, "%2E1"])
        bad.append(token)
    statuses = await never_redirected(api, bad)
    assert set(statuses) <= {404}, statuses
    assert statuses[404] == len(bad)
    found = await store.message(genuine_id)
    assert found is not None
    assert [e["type"] for e in found["events"]] == ["queued", "clicked"], "the genuine one only"


async def test_open_pixel_and_machine_flags(api: Client, store: Store, tmp_path: Path) -> None:
    body = cart_reminder()
    answer = await (await api.post("/v1/messages", json=body)).json()
    message_id = answer["results"][0]["message_id"]
    tokens = tokens_of(tmp_path)
    human = {"User-Agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15"}
    pixel = await api.get(f"/t/o/{tokens.seal('open', message_id)}", headers=human)
    assert pixel.status == 200 and await pixel.read() == PIXEL
    assert pixel.headers["Content-Type"] == "image/gif"
    assert "no-store" in pixel.headers["Cache-Control"]
    apple = await api.get(
        f"/t/o/{tokens.seal('open', message_id)}",
        headers={"User-Agent": "Mozilla/5.0", "X-Forwarded-For": "17.58.101.7"},
    )
    assert apple.status == 200
    click = tokens.seal("click", message_id, "https://shop.example.com/p/100")
    assert (await api.head(f"/t/c/{click}", allow_redirects=False)).status == 302
    scanner = {"User-Agent": "Mozilla/5.0 (compatible; Proofpoint URL Defense)"}
    await api.get(f"/t/c/{click}", headers=scanner, allow_redirects=False)
    await api.get(f"/t/c/{click}", headers=human, allow_redirects=False)

    found = await store.message(message_id)
    assert found is not None
    events = [(e["type"], e.get("machine"), e.get("machine_reason")) for e in found["events"]]
    assert events == [
        ("queued", None, None),
        ("opened", False, None),
        ("opened", True, "apple-privacy-proxy"),
        ("clicked", True, "head-request"),
        ("clicked", True, "link-scanner"),
        ("clicked", False, None),
    ]
    last = found["events"][-1]
    assert last["url"] == "https://shop.example.com/p/100"
    assert last["email"] == "aryan@inbox.example.org", (
        "engagement events carry the message's context"
    )
    assert last["category"] == body["category"]


async def test_one_click_unsubscribe(api: Client, store: Store, tmp_path: Path) -> None:
    body = cart_reminder()
    answer = await (await api.post("/v1/messages", json=body)).json()
    message_id, email = answer["results"][0]["message_id"], answer["results"][0]["email"]
    token = tokens_of(tmp_path).seal(
        "unsubscribe", message_id, unsubscribe_payload(email, body["category"])
    )
    page = await api.get(f"/t/u/{token}")
    assert page.status == 200 and '<form method="post">' in await page.text()
    assert await store.suppressions.check(email, body["category"]) is None, "GET never unsubscribes"

    for _ in range(2):  # a repeat changes nothing
        done = await api.post(
            f"/t/u/{token}", data={"List-Unsubscribe": "One-Click"}, allow_redirects=False
        )
        assert done.status == 200 and "Location" not in done.headers
        assert "Set-Cookie" not in done.headers
    entry = await store.suppressions.check(email, body["category"])
    assert (
        entry is not None and entry.reason == "unsubscribe" and entry.category == body["category"]
    )
    found = await store.message(message_id)
    assert found is not None
    assert [e["type"] for e in found["events"]] == ["queued", "unsubscribed"]

    again = await (await api.post("/v1/messages", json=body)).json()
    assert again["results"][0]["status"] == "suppressed"
    other = {**body, "category": "newsletter"}
    assert (await (await api.post("/v1/messages", json=other)).json())["results"][0][
        "status"
    ] == "queued"

    assert (await api.post(f"/t/u/{token}", data={"x": "y"})).status == 400
    assert (
        await api.post(f"/t/u/{token[:-3]}", data={"List-Unsubscribe": "One-Click"})
    ).status == 404


# --- delivered, as a mailbox provider sees it -------------------------------------------


async def test_delivered_fixture_is_tracked_signed_and_unsubscribable(
    relay_api: Client, worker: Worker, sink: Sink, relay_settings: Settings
) -> None:
    KeyStore(relay_settings.data_dir).generate("shop.example.com", "s2026", "rsa")
    public_url = relay_settings.http.public_url
    body = cart_reminder()
    await send(relay_api, body)
    await worker.run_until_idle()
    [got] = sink.snapshot()
    msg = got.message

    # both RFC 8058 headers, under the DKIM signature (listed twice: none can be added)
    one_click, mailto = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])
    assert one_click.startswith(f"{public_url}/t/u/") and mailto.startswith("mailto:unsubscribe+")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    signed = re.sub(r"\s", "", msg["DKIM-Signature"])
    names = dict(t.split("=", 1) for t in signed.split(";") if t)["h"].split(":")
    assert names.count("list-unsubscribe") == 2 and names.count("list-unsubscribe-post") == 2

    # every followable link rewritten, each leading to exactly its original URL
    personal = body["recipients"][0]["data"]
    source = body["html"].replace("{{ cart_url }}", personal["cart_url"])
    originals = [html.unescape(u) for u in re.findall(r'<a [^>]*href="([^"]+)"', source)]
    part = msg.get_body(("html",)).get_content()
    hrefs = [html.unescape(u) for u in re.findall(r'<a [^>]*href="([^"]+)"', part)]
    assert len(hrefs) == len(originals) == 17
    assert all(h.startswith(f"{public_url}/t/c/") for h in hrefs)
    async with aiohttp.ClientSession() as mailbox:  # what a mail client has: no API key
        for href, original in zip(hrefs, originals, strict=True):
            async with mailbox.get(href, allow_redirects=False) as redirect:
                assert redirect.status == 302
                assert redirect.headers["Location"] == original
        pixels = re.findall(r'<img src="([^"]+/t/o/[^"]+)"', part)
        assert len(pixels) == 1

        # one click, as Gmail sends it; the next message to the address is suppressed
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        async with mailbox.post(
            one_click, data=b"List-Unsubscribe=One-Click", headers=form
        ) as done:
            assert done.status == 200
    [again] = await send(relay_api, body)
    assert again["status"] == "suppressed"
    assert again["reason"] == f"unsubscribe ({body['category']})"


async def never_redirected(api: Any, tokens: list[str]) -> dict[int, int]:
    """``GET /t/c/<token>`` for each, none answered with a redirect: how many got each status."""
    statuses: dict[int, int] = {}
    for token in tokens:
        answer = await api.get(f"/t/c/{token}", allow_redirects=False)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        assert "Location" not in answer.headers, token
    return statuses
