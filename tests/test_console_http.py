"""The console and the sandbox over plain HTTP (the browser tests are ``test_console.py``):
hostile cookies and tokens, pages right after a change, forms that must not lose what they
do not show, and the sandbox inbox's paging. The real app on the real Redis."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.store import Store
from loadtests.harness import API_KEY, cart_reminder
from tests.conftest import gateway_settings
from tests.inprocess import Client, running_api, send

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@pytest.fixture
async def api(tmp_path: Path, redis_url: str, store: Store) -> AsyncIterator[Client]:
    async with running_api(gateway_settings(tmp_path), redis_url) as client:
        yield client


async def signed_in(api: Client) -> tuple[aiohttp.ClientSession, str, str]:
    """A browser-like session signed in to the console: (session, base URL, CSRF token)."""
    base = str(api.make_url("")).rstrip("/")
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.post(base + "/ui/login", data={"key": API_KEY, "next": "/ui/policy"}) as r:
        assert r.status == 200 and str(r.url).endswith("/ui/policy")
        token = CSRF.search(await r.text())
    assert token is not None
    return session, base, token.group(1)


async def test_hostile_cookies_and_tokens_are_refused_not_failed(api: Client) -> None:
    base = str(api.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as anonymous:
        for cookie in ("1.a.\u00e9", "9" * 300, "..", "1795920895.x.y", "1.\u00e9\u00e9.zz"):
            headers = {"Cookie": f"sluice_console={cookie}"}
            async with anonymous.get(base + "/ui/", headers=headers, allow_redirects=False) as r:
                assert r.status == 303, cookie
                assert r.headers["Location"].startswith("/ui/login")
    session, base, _ = await signed_in(api)
    async with session:
        for token in ("\u00e9", "", "0" * 40, "x" * 5000):
            async with session.post(
                base + "/ui/suppressions/add", data={"email": "x@y.example", "csrf": token}
            ) as r:
                assert r.status == 403, token
    assert (await api.get("/v1/suppressions/x@y.example")).status == 404


async def test_the_warmup_page_of_an_ip_that_has_sent_nothing(api: Client) -> None:
    assert (await api.put("/v1/warmup/ips/192.0.2.10", json={"schedule": [50, 100]})).status == 200
    session, base, _ = await signed_in(api)
    async with session, session.get(base + "/ui/warmup") as r:
        assert r.status == 200
        assert "No mail sent from this IP yet" in await r.text()


async def test_saving_the_policy_keeps_what_the_form_shows_and_what_it_does_not(
    api: Client,
) -> None:
    policy = {
        "frequency_caps": [
            {"category": "*", "limit": 5, "window_seconds": 86400, "action": "drop"}
        ],
        "quiet_hours": {"start": "21:00", "end": "08:00", "ramp_seconds": 900},
    }
    assert (await api.put("/v1/policy", json=policy)).status == 200
    session, base, token = await signed_in(api)
    async with session:
        async with session.get(base + "/ui/policy") as r:
            page = await r.text()
        fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page))
        fields.update(cap0_limit="4", cap0_action="drop", cap1_action="drop", csrf=token)
        async with session.post(base + "/ui/policy", data=fields) as r:
            assert r.status == 200 and "Policy saved" in await r.text()
    saved = await (await api.get("/v1/policy")).json()
    assert saved["frequency_caps"][0]["limit"] == 4
    assert saved["quiet_hours"]["ramp_seconds"] == 900  # not reset by a form that edits a cap


async def test_a_malformed_domain_on_the_checklist_is_a_400(api: Client) -> None:
    session, base, _ = await signed_in(api)
    async with session:
        for domain in ("a..b", "x" * 64 + ".example", "[192.0.2.1]"):
            async with session.get(base + "/ui/checklist", params={"domain": domain}) as r:
                assert r.status == 400, domain
                assert "not a domain" in await r.text()


async def test_a_custom_header_the_parser_dislikes_is_shown_as_written(api: Client) -> None:
    body = cart_reminder()
    body["sandbox"] = True
    body["headers"] = {"Resent-To": '"', "Resent-From": "a@[", "X-Note": "=?utf-8?q?caf=C3=A9?="}
    [sent] = await send(api, body)
    message_id = sent["message_id"]
    detail = await api.get(f"/v1/sandbox/messages/{message_id}")
    assert detail.status == 200
    shown = {h["name"]: h["value"] for h in (await detail.json())["headers"]}
    assert (shown["Resent-To"], shown["Resent-From"], shown["X-Note"]) == ('"', "a@[", "café")
    session, base, _ = await signed_in(api)
    async with session, session.get(base + f"/ui/sandbox/{message_id}") as r:
        assert r.status == 200
        page = await r.text()  # each as written, escaped
    for value in ("&#34;", "a@[", "café"):
        assert f"<code>{value}</code>" in page, value


async def test_the_inbox_pages_through_captures_of_one_moment(api: Client) -> None:
    body = cart_reminder()
    body["sandbox"] = True
    template = body["recipients"][0]
    body["recipients"] = [{**template, "email": f"p{n}@inbox.example.org"} for n in range(7)]
    await send(api, body)
    seen: list[str] = []
    cursor: Any = None
    while True:
        path = "/v1/sandbox/messages?limit=2" + (f"&before={cursor}" if cursor else "")
        page = await (await api.get(path)).json()
        seen += [m["email"] for m in page["messages"]]
        cursor = page["next"]
        if not page["messages"]:
            break
    assert sorted(seen) == sorted(f"p{n}@inbox.example.org" for n in range(7))
