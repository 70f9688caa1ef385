"""The sandbox: ``"sandbox": true`` (or the sandbox API key) runs the whole path into the
capture inbox. The real app against the real Redis, DKIM checked against a key served by a
real DNS server on loopback; nothing is queued, counted or sent."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from core.store import Store
from loadtests.harness import cart_reminder
from mta.dkimkeys import KeyStore
from tests.conftest import Sink, gateway_settings
from tests.dnsserver import DNSServer, txt_rdata
from tests.inprocess import Client, running_api, running_worker

SANDBOX_KEY = "sandbox-key-for-tests-0123456789"


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer({"shop.example.com": "@ IN A 192.0.2.1"}) as server:
        yield server


@pytest.fixture
async def gateway(
    tmp_path: Path, redis_url: str, store: Store, dns_server: DNSServer, sink: Sink
) -> AsyncIterator[tuple[Client, Any]]:
    """A gateway relaying into the sink, with a DKIM key for shop.example.com published."""
    settings = gateway_settings(
        tmp_path,
        relay=sink.relay,
        nameserver=dns_server.nameserver,
        sandbox_api_key=SANDBOX_KEY,
    )
    key = KeyStore(settings.data_dir).generate("shop.example.com", "s1", "rsa", 2048)
    dns_server.add(key.record_name, "TXT", txt_rdata(key.txt_value()))
    async with (
        running_api(settings, redis_url) as client,
        running_worker(settings, store) as worker,
    ):
        yield client, worker


def fixture(**change: Any) -> dict[str, Any]:
    body = cart_reminder()
    body.update(change)
    return body


async def post(client: Client, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    response = await client.post("/v1/messages", json=body, headers=headers)
    return response.status, await response.json()


async def test_a_sandbox_message_is_composed_signed_and_captured_not_sent(
    gateway: tuple[Client, Any], store: Store, sink: Sink
) -> None:
    client, worker = gateway
    status, answer = await post(client, fixture(sandbox=True))
    assert status == 202, answer
    assert answer["sandbox"] is True
    (result,) = answer["results"]
    assert result["status"] in ("queued", "scheduled")  # quiet hours in Istanbul may apply
    message_id = result["message_id"]

    listed = await (await client.get("/v1/sandbox/messages")).json()
    assert [m["message_id"] for m in listed["messages"]] == [message_id]
    assert listed["messages"][0]["subject"] == "Aryan, your Noise-cancelling headphones is waiting"

    detail = await (await client.get(f"/v1/sandbox/messages/{message_id}")).json()
    assert [d["result"] for d in detail["dkim"]] == ["pass"], detail["dkim"]
    assert detail["dkim"][0]["domain"] == "shop.example.com"
    names = {h["name"].lower() for h in detail["headers"]}
    assert {"list-unsubscribe", "list-unsubscribe-post", "dkim-signature"} <= names
    assert "Aryan" in detail["html"] and "Aryan" in detail["text"]
    clicks = [link for link in detail["links"] if link.get("kind") == "click"]
    assert "https://shop.example.com/cart/8f3a2c" in {link["leads_to"] for link in clicks}
    assert all(link["url"].startswith("http://127.0.0.1:") for link in clicks)  # rewritten
    checks = {c["id"]: c["status"] for c in detail["checks"]}
    assert checks["message.unsubscribe"] == "pass"
    assert checks["message.merge_tags"] == "pass"
    assert checks["content.text_part"] == "pass"

    # nothing queued, nothing sent, no event
    await worker.run_until_idle()
    assert sink.messages == []
    events = await (await client.get("/v1/events")).json()
    assert events["events"] == []
    assert (await client.get(f"/v1/messages/{message_id}")).status == 404


async def test_sandbox_messages_count_toward_no_cap(gateway: tuple[Client, Any]) -> None:
    client, _ = gateway
    policy = {
        "frequency_caps": [{"category": "*", "limit": 1, "window_seconds": 86400, "action": "drop"}]
    }
    assert (await client.put("/v1/policy", json=policy)).status == 200
    now = fixture(sandbox=True)
    now["recipients"][0].pop("timezone")
    for _ in range(3):
        status, answer = await post(client, now)
        assert status == 202 and answer["results"][0]["status"] == "queued", answer
    real = copy.deepcopy(now)
    real.pop("sandbox")
    _, first = await post(client, real)
    assert first["results"][0]["status"] == "queued"  # the sandbox runs counted nothing
    _, again = await post(client, now)
    assert again["results"][0]["status"] == "capped"  # the sandbox reads the real count
    assert "frequency cap" in again["results"][0]["reason"]


async def test_the_policy_is_read_suppressed_recipients_are_not_captured(
    gateway: tuple[Client, Any],
) -> None:
    client, _ = gateway
    assert (await client.put("/v1/suppressions/aryan@inbox.example.org", json={})).status in (
        200,
        201,
    )
    _, answer = await post(client, fixture(sandbox=True))
    assert answer["results"][0]["status"] == "suppressed"
    listed = await (await client.get("/v1/sandbox/messages")).json()
    assert listed["messages"] == []


async def test_a_merge_tag_left_unfilled_is_flagged(gateway: tuple[Client, Any]) -> None:
    client, _ = gateway
    _, answer = await post(client, fixture(sandbox=True, subject="*|FNAME|*, your cart misses you"))
    message_id = answer["results"][0]["message_id"]
    detail = await (await client.get(f"/v1/sandbox/messages/{message_id}")).json()
    checks = {c["id"]: c for c in detail["checks"]}
    assert checks["content.merge_tags"]["status"] == "fail"
    assert "*|FNAME|*" in checks["content.merge_tags"]["detail"]
    assert checks["message.merge_tags"]["status"] == "fail"


async def test_the_sandbox_key_only_sends_into_the_sandbox(
    gateway: tuple[Client, Any], sink: Sink
) -> None:
    client, worker = gateway
    status, answer = await post(client, fixture(), key=SANDBOX_KEY)  # no "sandbox" field
    assert status == 202 and answer["sandbox"] is True
    status, answer = await post(client, fixture(sandbox=False), key=SANDBOX_KEY)
    assert status == 202 and answer["sandbox"] is True, "the key wins over the field"
    headers = {"Authorization": f"Bearer {SANDBOX_KEY}"}
    listed = await client.get("/v1/sandbox/messages", headers=headers)
    assert listed.status == 200 and len((await listed.json())["messages"]) == 2
    for method, path in (
        ("GET", "/v1/stats"),
        ("GET", "/v1/suppressions"),
        ("PUT", "/v1/policy"),
        ("POST", "/v1/queues/actions"),
        ("GET", "/metrics"),
    ):
        refused = await client.request(method, path, headers=headers)
        assert refused.status == 403, (method, path)
        assert (await refused.json())["error"] == "forbidden"
    sendgrid = {
        "personalizations": [{"to": [{"email": "a@inbox.example.org"}]}],
        "from": {"email": "news@shop.example.com"},
        "subject": "hello",
        "content": [{"type": "text/plain", "value": "hi"}],
    }
    assert (await client.post("/v3/mail/send", json=sendgrid, headers=headers)).status == 202
    sendgrid["mail_settings"] = {"sandbox_mode": {"enable": True}}
    assert (await client.post("/v3/mail/send", json=sendgrid)).status == 202
    await worker.run_until_idle()
    assert sink.messages == []
    listed = await (await client.get("/v1/sandbox/messages")).json()
    assert len(listed["messages"]) == 4


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sandbox": "yes"}, "sandbox"),
        ({"sandbox": 1}, "sandbox"),
        (
            {
                "sandbox": True,
                "recipients": [{"email": f"u{i}@inbox.example.org"} for i in range(101)],
            },
            "recipients",
        ),
    ],
)
async def test_bad_sandbox_requests_get_a_400(
    gateway: tuple[Client, Any], change: dict[str, Any], field: str
) -> None:
    client, _ = gateway
    status, answer = await post(client, fixture(**change))
    assert status == 400 and answer["field"] == field, answer


async def test_an_unknown_or_hostile_capture_id_is_a_404(gateway: tuple[Client, Any]) -> None:
    client, _ = gateway
    for name in ("nope", "x" * 300, "%0d%0aSet-Cookie:%20a=b", "..%2f..%2fetc"):
        response = await client.get(f"/v1/sandbox/messages/{name}")
        assert response.status == 404, name
    assert (await client.get("/v1/sandbox/messages?before=abc")).status == 400
    assert (await client.get("/v1/sandbox/messages?limit=0")).status == 400


async def test_a_sandbox_messages_links_record_nothing(gateway: tuple[Client, Any]) -> None:
    """Its click redirects, its pixel answers, its one-click unsubscribe changes nothing: a
    marketer may click everything in a sandbox message."""
    client, _ = gateway
    _, answer = await post(client, fixture(sandbox=True))
    message_id = answer["results"][0]["message_id"]
    assert message_id.startswith("z")  # a sandbox batch id
    detail = await (await client.get(f"/v1/sandbox/messages/{message_id}")).json()
    by_kind = {link.get("kind"): link for link in detail["links"]}
    path = by_kind["click"]["url"].split("/", 3)[3]
    clicked = await client.get("/" + path, allow_redirects=False)
    assert clicked.status == 302
    assert clicked.headers["Location"] == by_kind["click"]["leads_to"]
    pixel = by_kind["open"]["url"].split("/", 3)[3]
    assert (await client.get("/" + pixel)).status == 200
    unsubscribe = next(h["value"] for h in detail["headers"] if h["name"] == "List-Unsubscribe")
    one_click = unsubscribe.split("<", 1)[1].split(">", 1)[0].split("/", 3)[3]
    posted = await client.post("/" + one_click, data={"List-Unsubscribe": "One-Click"})
    assert posted.status == 200 and "nothing was unsubscribed" in await posted.text()
    assert (await client.get("/v1/suppressions/aryan@inbox.example.org")).status == 404
    assert (await (await client.get("/v1/events")).json())["events"] == []


async def test_captures_are_kept_for_the_configured_time(
    tmp_path: Path, redis_url: str, store: Store, sink: Sink
) -> None:
    settings = gateway_settings(tmp_path, relay=sink.relay, sandbox_retention="1s")
    async with running_api(settings, redis_url) as client:
        _, answer = await post(client, fixture(sandbox=True))
        message_id = answer["results"][0]["message_id"]
        assert (await client.get(f"/v1/sandbox/messages/{message_id}")).status == 200
        await asyncio.sleep(1.3)
        assert (await client.get(f"/v1/sandbox/messages/{message_id}")).status == 404
        listed = await (await client.get("/v1/sandbox/messages")).json()
        assert listed["messages"] == []


@pytest.fixture
async def redirecting() -> AsyncIterator[str]:
    """A web server on loopback: /go redirects twice, then lands on /landing (200)."""

    async def go(request: web.Request) -> web.Response:
        raise web.HTTPFound("/step")

    async def step(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/landing?utm_source=email")

    async def landing(request: web.Request) -> web.Response:
        return web.Response(text="the shop")

    app = web.Application()
    app.router.add_get("/go", go)
    app.router.add_get("/step", step)
    app.router.add_get("/landing", landing)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize("private", [True, False], ids=["allowed", "refused"])
async def test_links_are_followed_to_where_they_finally_lead(
    tmp_path: Path, redis_url: str, store: Store, sink: Sink, redirecting: str, private: bool
) -> None:
    settings = gateway_settings(
        tmp_path, relay=sink.relay, sandbox_follow_private="true" if private else "false"
    )
    body = fixture(sandbox=True)
    body["html"] = body["html"].replace("</body>", f'<a href="{redirecting}/go">x</a></body>')
    async with running_api(settings, redis_url) as client:
        _, answer = await post(client, body)
        message_id = answer["results"][0]["message_id"]
        path = f"/v1/sandbox/messages/{message_id}"
        plain = await (await client.get(path)).json()
        assert all("final" not in link for link in plain["links"])  # only when asked
        followed = await (await client.get(path + "?follow=true")).json()
        (link,) = [x for x in followed["links"] if x.get("leads_to") == f"{redirecting}/go"]
        if private:
            assert link["final"] == {
                "url": f"{redirecting}/landing?utm_source=email",
                "status": 200,
            }
            assert [hop["status"] for hop in link["hops"]] == [302, 301, 200]
        else:
            assert "private or reserved" in link["final"]["problem"]
        assert (await client.get(path + "?follow=yes")).status == 400
