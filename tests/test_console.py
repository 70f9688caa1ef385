"""The console in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

One in-process gateway (the real app, a delivery worker, the SMTP sink, a DNS server on
loopback) plays a scenario with hostile data in every field a page shows; the browser signs
in, opens every page, acts (pause and resume a warming IP, a bulk release with its
confirmation, add and remove a suppression, edit a cap), opens a sandbox message, and
checks that nothing of the hostile data ever runs. ``SLUICE_CONSOLE_SCREENSHOTS=DIR``
keeps a screenshot of each page there (``docs/console/`` holds those of a run)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from core.store import Store
from loadtests.harness import API_KEY, cart_reminder
from mta.dkimkeys import KeyStore
from tests.conftest import Sink, gateway_settings, tool_missing
from tests.dnsserver import DNSServer, txt_rdata
from tests.inprocess import Client, running_api, running_worker, send

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.slow

HOSTILE_SUBJECT = "Deal <script>alert('subject')</script> for {{ first_name }}"
HOSTILE_NAME = '"><img src=x onerror=alert("name")>'
HOSTILE_META = "<script>alert('metadata')</script>"
HOSTILE_REPLY = "550 5.1.1 <script>alert('reply')</script> \"><img src=x onerror=alert(1)> unknown"
HOSTILE_LINK = "javascript:alert('link')"
IP = "127.0.0.1"  # warming up
WARM_IP = "127.0.0.2"  # warm: the bulk of the scenario goes out from it (pool "bulk")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        tool_missing("needs Debian's chromium")
    return found


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    zone = """
        @      IN TXT "v=spf1 ip4:127.0.0.1 -all"
        _dmarc IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@shop.example.com"
        @      IN MX 10 mx.shop.example.com.
        mx     IN A 127.0.0.1
    """
    with DNSServer({"shop.example.com": zone}) as server:
        yield server


@pytest.fixture
async def gateway(
    tmp_path: Path, redis_url: str, store: Store, sink: Sink, dns_server: DNSServer
) -> AsyncIterator[tuple[Client, Any]]:
    """A gateway relaying into the sink from a warming IP (and a warm one, pool "bulk"), with
    a DKIM key for shop.example.com published on the DNS server it asks."""
    settings = gateway_settings(
        tmp_path,
        relay=sink.relay,
        nameserver=dns_server.nameserver,
        ips=f"{IP}@default,{WARM_IP}@bulk",
    )
    key = KeyStore(settings.data_dir).generate("shop.example.com", "s1", "rsa", 2048)
    dns_server.add(key.record_name, "TXT", txt_rdata(key.txt_value()))
    async with running_api(settings, redis_url) as api, running_worker(settings, store) as worker:
        assert (
            await api.put(f"/v1/warmup/ips/{IP}", json={"schedule": [5000, 10000, 20000]})
        ).status == 200
        yield api, worker


@pytest.fixture
async def scenario(
    gateway: tuple[Client, Any], sink: Sink
) -> AsyncIterator[tuple[Client, Any, str]]:
    """A contact policy, two campaigns (one hard bounce with a hostile reply, one deferral,
    one held for quiet hours), hostile names, subjects, metadata and links, and a captured
    sandbox message."""
    api, worker = gateway
    now = time.gmtime()
    quiet = {
        "start": f"{(now.tm_hour - 1) % 24:02d}:00",
        "end": f"{(now.tm_hour + 2) % 24:02d}:00",
        "default_timezone": "UTC",
    }
    policy = {
        "frequency_caps": [
            {"category": "*", "limit": 5, "window_seconds": 86400, "action": "drop"}
        ],
        "quiet_hours": quiet,
    }
    assert (await api.put("/v1/policy", json=policy)).status == 200
    sink.refuse["gone@gmail.com"] = HOSTILE_REPLY
    sink.refuse["later@outlook.com"] = "451 4.7.1 Try again later, <b>busy</b>"
    body = cart_reminder()
    body["campaign"] = "black-friday"
    body["subject"] = HOSTILE_SUBJECT
    body["stream"] = "transactional"  # not held by quiet hours
    body["category"] = None
    body["metadata"] = {"note": HOSTILE_META}
    body["html"] = body["html"].replace("</body>", f'<a href="{HOSTILE_LINK}">x</a></body>')
    template = body["recipients"][0]
    body["recipients"] = [
        {**template, "email": email, "name": HOSTILE_NAME, "timezone": None}
        for email in ("ann@gmail.com", "gone@gmail.com", "later@outlook.com", "bo@yahoo.com")
    ]
    await send(api, body)
    # enough gmail volume for its rates to be judged: 4 more unknown users in 120
    bulk = cart_reminder()
    bulk["campaign"] = "black-friday"
    bulk["stream"] = "transactional"
    bulk["category"] = None
    bulk["ip_pool"] = "bulk"  # not through the warming IP, whose adaptive hold would stop it
    bulk["recipients"] = [
        {**template, "email": f"bulk{n}@gmail.com", "timezone": None} for n in range(120)
    ]
    for n in range(4):
        sink.refuse[f"bulk{n}@gmail.com"] = f"550 5.1.1 <bulk{n}@gmail.com>: User unknown"
    await send(api, bulk)
    held = cart_reminder()  # marketing, in quiet hours: held
    held["campaign"] = "welcome"
    held["recipients"] = [
        {**held["recipients"][0], "email": "held@inbox.example.org", "timezone": None}
    ]
    await send(api, held)
    await worker.run_until_idle()
    sandbox = cart_reminder()
    sandbox["sandbox"] = True
    [captured] = await send(api, sandbox)
    yield api, worker, captured["message_id"]


class Browser:
    """A signed-out Chromium page against the gateway, recording every dialog it opens."""

    def __init__(self, page: Any, base: str, shots: Path | None) -> None:
        self.page = page
        self.base = base
        self.shots = shots
        self.alerts: list[str] = []
        page.on("dialog", self._dialog)

    async def _dialog(self, dialog: Any) -> None:
        if dialog.type == "confirm":  # the console's own confirmations
            await dialog.accept()
            return
        self.alerts.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    async def open(self, path: str, shot: str | None = None) -> Any:
        response = await self.page.goto(self.base + path)
        await self.page.wait_for_load_state("networkidle")
        if shot and self.shots is not None:
            await self.page.screenshot(path=str(self.shots / f"{shot}.png"), full_page=True)
        return response

    async def text(self) -> str:
        return str(await self.page.inner_text("main"))


@pytest.fixture
async def browser(gateway: tuple[Client, Any]) -> AsyncIterator[Browser]:
    api, _ = gateway
    shots_dir = os.environ.get("SLUICE_CONSOLE_SCREENSHOTS")
    shots = Path(shots_dir) if shots_dir else None
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
    async with playwright_api.async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        context = await launched.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        yield Browser(page, str(api.make_url("")).rstrip("/"), shots)
        await launched.close()


async def sign_in(browser: Browser) -> None:
    await browser.open("/ui/")
    assert browser.page.url.endswith("/ui/login?next=/ui/")
    await browser.page.fill("#key", API_KEY)
    await browser.page.click("button[type=submit]")
    await browser.page.wait_for_url("**/ui/")


async def test_every_page_with_live_data_and_its_actions(
    browser: Browser, scenario: tuple[Client, Any, str], store: Store
) -> None:
    api, worker, _ = scenario
    page = browser.page
    await browser.open("/ui/login", "login")
    await sign_in(browser)

    await browser.open("/ui/", "overview")
    overview = await browser.text()
    assert "gmail" in overview and "microsoft" in overview and "yahoo" in overview
    assert "4.10% warning" in overview  # gmail: 5 unknown users in 122, over the 2% rule
    await browser.open("/ui/providers?provider=gmail", "providers")
    assert "<script>alert('reply')</script>" in await browser.text()  # shown as text
    await browser.open("/ui/campaigns", "campaigns")
    assert "black-friday" in await browser.text()
    await browser.open("/ui/campaigns/black-friday", "campaign")
    report = await browser.text()
    assert "bad-mailbox" in report and "Funnel" in report
    assert await page.locator("svg.chart").count() == 1
    await browser.open("/ui/messages?q=ann@gmail.com", "messages")
    assert "delivered" in await browser.text()
    await browser.open("/ui/checklist?domain=shop.example.com", "checklist")
    checklist = await browser.text()
    assert "spf." in checklist and "Fix:" in checklist

    # warmup: pause and resume the warming IP, each confirmed
    await browser.open("/ui/warmup", "warmup")
    assert "day 0 of 3" in await browser.text()  # as the API and the CLI count
    await page.get_by_role("button", name=f"Pause {IP}", exact=True).click()
    await page.wait_for_selector("text=paused")
    assert (await (await api.get("/v1/warmup/status")).json())["ips"][0]["paused"] is True
    await page.get_by_role("button", name=f"Resume {IP}", exact=True).click()
    await page.wait_for_selector(f"text=Pause {IP}")
    assert (await (await api.get("/v1/warmup/status")).json())["ips"][0]["paused"] is False

    # queue: the held message, released after a dry run and a confirmation
    await browser.open("/ui/queue", "queue")
    assert "held quiet hours" in await browser.text()
    await page.select_option("#q-action", "release")
    await page.select_option("#q-state", "held_quiet_hours")
    await page.get_by_role("button", name="Show what matches", exact=True).click()
    await page.wait_for_selector("text=Confirm: release")
    assert "1 messages match" in await browser.text()
    if browser.shots is not None:
        await page.screenshot(path=str(browser.shots / "queue-confirm.png"), full_page=True)
    groups = (await (await api.get("/v1/queues")).json())["groups"]
    assert {g["key"]: g["count"] for g in groups}["held_quiet_hours"] == 1
    await page.get_by_role("button", name="Yes, release 1 messages", exact=True).click()
    await page.wait_for_selector("text=1 of 1 messages changed")
    states = {g["key"] for g in (await (await api.get("/v1/queues")).json())["groups"]}
    assert "held_quiet_hours" not in states

    # suppressions: add, find, remove
    await browser.open("/ui/suppressions", "suppressions")
    await page.fill("#s-email", "someone@inbox.example.org")
    await page.get_by_role("button", name="Suppress", exact=True).click()
    await page.wait_for_selector("text=someone@inbox.example.org suppressed")
    assert (await api.get("/v1/suppressions/someone@inbox.example.org")).status == 200
    await page.get_by_role("button", name="Remove", exact=True).click()
    await page.wait_for_selector("text=someone@inbox.example.org removed")
    assert (await api.get("/v1/suppressions/someone@inbox.example.org")).status == 404
    await page.set_input_files(
        "#s-file",
        files=[
            {
                "name": "list.csv",
                "mimeType": "text/csv",
                "buffer": b"email\na@x.example\nnot-an-address\n",
            }
        ],
    )
    await page.get_by_role("button", name="Import", exact=True).click()
    await page.wait_for_selector("text=imported 1 (1 new), skipped 1")
    async with page.expect_download() as download:
        await page.click("text=Export as CSV")
    saved = Path(await (await download.value).path())
    exported = await asyncio.to_thread(saved.read_text)
    assert exported.startswith("email,category,reason,created_at,source\n")
    assert "a@x.example,,manual," in exported

    # policy: a bad cap is refused with the reason, a good one saved
    await browser.open("/ui/policy", "policy")
    await page.fill("input[name=cap0_limit]", "0")
    await page.get_by_role("button", name="Save policy", exact=True).click()
    await page.wait_for_selector("text=Not saved")
    assert (await (await api.get("/v1/policy")).json())["frequency_caps"][0]["limit"] == 5
    await page.fill("input[name=cap0_limit]", "3")
    await page.get_by_role("button", name="Save policy", exact=True).click()
    await page.wait_for_selector("text=Policy saved")
    assert (await (await api.get("/v1/policy")).json())["frequency_caps"][0]["limit"] == 3

    # sandbox: the captured message, its DKIM result and links
    await browser.open("/ui/sandbox", "sandbox")
    await page.click("text=your Noise-cancelling headphones is waiting")
    await page.wait_for_selector("#dkim")
    await page.frame_locator("iframe.preview").locator("table").first.wait_for()
    if browser.shots is not None:
        await page.screenshot(path=str(browser.shots / "sandbox-message.png"), full_page=True)
        # a full-page capture leaves frames blank: the preview on its own
        await page.locator("iframe.preview").screenshot(
            path=str(browser.shots / "sandbox-preview.png")
        )
    assert (await page.inner_text("#dkim")).startswith("pass: d=shop.example.com s=s1")
    links = await page.inner_text("#links")
    assert "https://shop.example.com/cart/8f3a2c" in links

    # live: an event that happens while the page is open appears
    await browser.open("/ui/live")
    await page.wait_for_selector("text=Following every event.")
    again = cart_reminder()
    again["stream"] = "transactional"
    again["recipients"] = [{"email": "live@yahoo.com", "data": again["recipients"][0]["data"]}]
    await send(api, again)
    await worker.run_until_idle()
    await page.wait_for_selector("#events li >> text=live@yahoo.com", timeout=15000)
    if browser.shots is not None:
        await page.screenshot(path=str(browser.shots / "live.png"), full_page=True)

    # a phone: the same page, the navigation wrapped, wide tables scrolling in place
    await page.set_viewport_size({"width": 390, "height": 844})
    await browser.open("/ui/", "overview-phone")
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, "the page itself must not scroll sideways on a phone"

    assert browser.alerts == [], "hostile data ran in the page"
    assert await page.locator("img[src=x]").count() == 0


async def test_hostile_data_never_runs_and_the_csp_forbids_inline_script(
    browser: Browser, scenario: tuple[Client, Any, str]
) -> None:
    page = browser.page
    await sign_in(browser)
    violations: list[str] = []
    page.on(
        "console",
        lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
    )
    for path, status in (  # each page shows the hostile data (a 404 would show none)
        ("/ui/", 200),
        ("/ui/providers", 200),
        ("/ui/providers?provider=gmail", 200),
        ("/ui/campaigns/black-friday", 200),
        ("/ui/messages?q=gone@gmail.com", 200),
        ("/ui/messages?q=black-friday", 200),
        ("/ui/queue", 200),
        ("/ui/sandbox", 200),
        ("/ui/messages?q=%3Cscript%3Ealert(1)%3C/script%3E", 200),
        ("/ui/suppressions?q=%22%3E%3Cimg%20src=x%20onerror=alert(1)%3E", 200),
        ("/ui/checklist?domain=%3Cscript%3Ealert(1)%3C/script%3E", 400),  # shown in the error
    ):
        response = await browser.open(path)
        assert response.status == status, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("style-src")[0]
        assert await page.locator("img[src=x]").count() == 0, path
    # a script injected anyway (as a stored-XSS bug would) is refused by the CSP
    await page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__ran = true'; document.body.appendChild(s); }"
    )
    assert await page.evaluate("() => window.__ran === undefined")
    assert violations, "the CSP did not report the refused inline script"
    # the message's own HTML: a sandboxed frame with no script
    _, _, sandbox_id = scenario
    preview = await browser.open(f"/ui/sandbox/{sandbox_id}/preview")
    assert preview.headers["content-security-policy"].startswith("sandbox;")
    assert browser.alerts == []


async def test_signed_out_browsers_and_forged_actions_are_refused(
    browser: Browser, scenario: tuple[Client, Any, str]
) -> None:
    api, _, sandbox_id = scenario
    page = browser.page
    for path in (
        "/ui/",
        "/ui/queue",
        f"/ui/sandbox/{sandbox_id}",
        f"/ui/sandbox/{sandbox_id}/preview",
        "/ui/suppressions.csv",
        "/ui/live/stream",
    ):
        await page.goto(browser.base + path)
        assert "/ui/login?next=" in page.url, path
        assert "black-friday" not in await page.content()
    base = browser.base
    async with aiohttp.ClientSession() as anonymous:  # an action without a session
        async with anonymous.post(
            base + "/ui/suppressions/add", data={"email": "x@y.example"}
        ) as r:
            assert r.status == 401
        async with anonymous.post(base + "/ui/login", data={"key": "wrong"}) as r:
            assert r.status == 401
    assert (await api.get("/v1/suppressions/x@y.example")).status == 404

    await sign_in(browser)
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    session = cookies["sluice_console"]
    cookie = next(c for c in await page.context.cookies() if c["name"] == "sluice_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui/"
    headers = {"Cookie": f"sluice_console={session}"}
    async with aiohttp.ClientSession() as client:
        # signed in, but no CSRF token
        async with client.post(
            base + "/ui/suppressions/add", data={"email": "x@y.example"}, headers=headers
        ) as r:
            assert r.status == 403
        # the right token from another origin
        await browser.open("/ui/suppressions")
        token = await page.get_attribute("input[name=csrf]", "value")
        evil = {**headers, "Origin": "http://evil.example"}
        async with client.post(
            base + "/ui/suppressions/add",
            data={"email": "x@y.example", "csrf": token},
            headers=evil,
        ) as r:
            assert r.status == 403
    assert (await api.get("/v1/suppressions/x@y.example")).status == 404

    # a page of another origin that posts to the console from the signed-in browser
    async def attacker(request: web.Request) -> web.Response:
        form = (
            f'<form method="post" action="{base}/ui/suppressions/add">'
            '<input name="email" value="victim@y.example"><button>win</button></form>'
        )
        return web.Response(text=form, content_type="text/html")

    evil_app = web.Application()
    evil_app.router.add_get("/", attacker)
    async with TestServer(evil_app, host="127.0.0.1") as evil:  # another origin: another port
        await page.goto(str(evil.make_url("/")))
        await page.click("text=win")
        await page.wait_for_load_state()
        assert "refused" in (await page.content()).lower()
    assert (await api.get("/v1/suppressions/victim@y.example")).status == 404


async def test_a_marketers_prelaunch_run(
    browser: Browser, gateway: tuple[Client, Any], sink: Sink
) -> None:
    """As a marketer would: send the message to the sandbox, read it in the console, find
    the unsubscribe header and the personalization the checks flag, fix it, send to the
    sandbox again, then for real."""
    api, worker = gateway
    page = browser.page
    draft = cart_reminder()
    draft["subject"] = "*|FNAME|*, your {{ product_name }} is waiting"  # pasted from another tool
    draft["sandbox"] = True
    first = await api.post("/v1/messages", json=draft)
    assert first.status == 202 and (await first.json())["sandbox"] is True

    await sign_in(browser)
    await browser.open("/ui/sandbox")
    await page.get_by_role(
        "link", name="*|FNAME|*, your Noise-cancelling headphones is waiting"
    ).click()
    await page.wait_for_selector("#headers")
    await page.frame_locator("iframe.preview").locator("table").first.wait_for()
    headers = await page.inner_text("#headers")
    assert "List-Unsubscribe-Post\tList-Unsubscribe=One-Click" in headers
    checks = await page.inner_text(".checks")
    assert "fail content.merge_tags" in checks and "*|FNAME|*" in checks
    assert "pass message.unsubscribe" in checks
    if browser.shots is not None:
        await page.screenshot(path=str(browser.shots / "sandbox-flagged.png"), full_page=True)

    fixed = cart_reminder()  # the fixture's own subject: {{ first_name | default('Hi') }}
    fixed["sandbox"] = True
    await send(api, fixed)
    await browser.open("/ui/sandbox")
    await page.get_by_role(
        "link", name="Aryan, your Noise-cancelling headphones is waiting"
    ).click()
    await page.wait_for_selector("#h-checks")
    assert "all pass" in await page.inner_text("#h-checks")
    assert (await page.inner_text("#dkim")).startswith("pass")
    await worker.run_until_idle()
    assert sink.snapshot() == [], "nothing left for real yet: sandbox messages reach no worker"

    real = cart_reminder()
    real["recipients"][0]["timezone"] = None  # no quiet hours configured: sent now
    await send(api, real)
    await worker.run_until_idle()
    (received,) = sink.snapshot()
    assert received.message["Subject"] == "Aryan, your Noise-cancelling headphones is waiting"
    assert browser.alerts == []
