"""Statistics from the rollups (``core/rollups.py``, ``gateway/stats.py``): a scripted
scenario through the real API, worker, SMTP sink, tracking endpoints and inbound server,
whose every count and rate in ``/v1/stats`` and the campaign report equals what the script
did, people and machines apart; over one shard and over eight."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core import rollups
from core.settings import HostPort
from core.store import Store
from core.store.rollups import Page
from gateway.stats import Query, buckets, rates_of
from loadtests.fault_sink import FaultSink
from loadtests.harness import PROJECT_ROOT, cart_reminder
from mta.worker import Worker
from tests.conftest import Sink, fresh_store
from tests.inprocess import Client, complain, get, send
from tests.test_cli import sluice as cli
from tests.test_metrics import total as summed
from tracking.machines import CLICK_WINDOW_SECONDS

BROWSER = {"User-Agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15"}
APPLE_PROXY = {"User-Agent": "Mozilla/5.0"}  # what Apple's proxy sends, from its addresses
PROVIDERS = {"gmail": "gmail.com", "microsoft": "outlook.com", "yahoo": "yahoo.com"}


@pytest.fixture(params=[1, 8], ids=["one-shard", "eight-shards"])
async def store(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with fresh_store(redis_url, request.param) as opened:
        yield opened


def campaign_body(campaign: str, emails: list[str]) -> dict[str, Any]:
    body = cart_reminder()
    template = body["recipients"][0]
    body["campaign"] = campaign
    body["recipients"] = [
        {
            **template,
            "email": email,
            "data": {**template["data"], "cart_url": f"https://shop.example.com/cart/{n}"},
        }
        for n, email in enumerate(emails)
    ]
    return body


async def stats(api: Client, **params: str) -> dict[str, Any]:
    return await get(api, "/v1/stats?" + "&".join(f"{k}={v}" for k, v in params.items()))  # type: ignore[no-any-return]


async def settled(api: Client, done: Callable[[dict[str, int]], bool]) -> dict[str, Any]:
    """The all-time totals once ``done`` holds of them (the counter is a second behind)."""
    deadline = time.monotonic() + 20
    while True:
        found = await stats(api, resolution="day")
        total: dict[str, int] = {name: 0 for name in rollups.COUNTS}
        for row in found["rows"]:
            for name in rollups.COUNTS:
                total[name] += row["counts"][name]
        if done(total) or time.monotonic() > deadline:
            return total
        await asyncio.sleep(0.2)


def html_of(received: Any) -> str:
    return str(received.message.get_body(("html",)).get_content())


@pytest.mark.slow
async def test_every_count_and_rate_equals_what_the_scenario_did(
    relay_api: Client, worker: Worker, sink: Sink, inbound: HostPort
) -> None:
    # black-friday: 3 recipients at each of gmail, microsoft, yahoo and another domain
    emails = [
        f"bf{n}@{domain}" for domain in (*PROVIDERS.values(), "inbox.example.org") for n in range(3)
    ]
    sink.refuse["bf0@gmail.com"] = (
        "550 5.1.1 <bf0@gmail.com>: Recipient address rejected: User unknown"
    )
    sink.refuse["bf0@yahoo.com"] = "552 5.2.2 <bf0@yahoo.com>: Mailbox full"
    sink.refuse["bf0@outlook.com"] = "451 4.7.1 Try again later"
    await relay_api.put("/v1/suppressions/gone@inbox.example.org", json={"reason": "unsubscribe"})
    bf = await send(relay_api, campaign_body("black-friday", emails))
    welcome = await send(
        relay_api,
        campaign_body(
            "welcome", [f"w{n}@inbox.example.org" for n in range(4)] + ["gone@inbox.example.org"]
        ),
    )
    assert [r["status"] for r in welcome] == ["queued"] * 4 + ["suppressed"]
    await worker.run_until_idle()
    del sink.refuse["bf0@outlook.com"]  # the deferred one goes through on its retry
    await asyncio.sleep(1.5)
    await worker.run_until_idle()
    delivered = {r.rcpt_tos[0]: r for r in sink.snapshot()}
    assert len(delivered) == 14

    ids = {r["email"]: r["message_id"] for r in bf}
    pages = {email: html_of(delivered[email]) for email in delivered if email.startswith("bf")}

    def pixel(email: str) -> str:
        [url] = re.findall(r'<img src="([^"]+/t/o/[^"]+)"', pages[email])
        return url

    def first_link(email: str) -> str:
        return next(u for u in re.findall(r'<a [^>]*href="([^"]+)"', pages[email]) if "/t/c/" in u)

    async with aiohttp.ClientSession() as mail_client:
        # a link scanner clicks as soon as the message lands: a machine
        async with mail_client.get(
            first_link("bf1@outlook.com"), headers=BROWSER, allow_redirects=False
        ) as r:
            assert r.status == 302
        for email in ("bf1@gmail.com", "bf2@gmail.com", "bf1@yahoo.com"):  # people
            for _ in range(2 if email == "bf1@gmail.com" else 1):
                async with mail_client.get(pixel(email), headers=BROWSER) as r:
                    assert r.status == 200
        for email in ("bf1@gmail.com", "bf2@yahoo.com"):  # Apple's proxy fetches the image
            async with mail_client.get(pixel(email), headers=APPLE_PROXY) as r:
                assert r.status == 200
    await asyncio.sleep(CLICK_WINDOW_SECONDS + 0.5)
    async with aiohttp.ClientSession() as mail_client:
        for email in ("bf1@gmail.com", "bf2@outlook.com"):  # people, later
            async with mail_client.get(
                first_link(email), headers=BROWSER, allow_redirects=False
            ) as r:
                assert r.status == 302
        one_click = re.findall(
            r"<([^>]+)>", delivered["bf1@yahoo.com"].message["List-Unsubscribe"]
        )[0]
        async with mail_client.post(
            one_click,
            data=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as r:
            assert r.status == 200

    await complain(inbound, str(delivered["bf2@gmail.com"].message["Message-ID"]))

    total = await settled(
        relay_api, lambda t: t["complained"] == 1 and t["unsubscribed"] == 1 and t["clicked"] == 2
    )
    assert total == {
        **{name: 0 for name in rollups.COUNTS},
        "accepted": 17,
        "suppressed": 1,
        "delivered": 14,
        "deferred": 1,
        "bounced": 2,
        "bounced_hard": 1,
        "complained": 1,
        "unsubscribed": 1,
        "opened": 3,
        "opened_machine": 2,
        "clicked": 2,
        "clicked_machine": 1,
    }

    by_campaign = await stats(relay_api, resolution="day", group_by="campaign")
    rows = {row["campaign"]: row for row in by_campaign["rows"]}
    black = rows["black-friday"]
    assert black["counts"]["accepted"] == 12 and black["counts"]["delivered"] == 10
    assert black["counts"]["bounced_class"] == {"bad-mailbox": 1, "quota": 1}
    assert black["rates"] == {
        "delivery": round(10 / 12, 6),
        "hard_bounce": round(1 / 12, 6),
        "complaint": 0.1,
        "open": 0.3,
        "click": 0.2,
        "unsubscribe": 0.1,
    }
    assert black["denominators"]["complaint"] == {"of": "delivered", "messages": 10}
    assert black["low_volume"] is True, "12 messages: too few to act on"
    assert rows["welcome"]["counts"]["delivered"] == 4
    assert rows["welcome"]["counts"]["suppressed"] == 1

    gmail = await stats(relay_api, resolution="day", campaign="black-friday", provider="gmail")
    [row] = gmail["rows"]
    assert (
        row["counts"]["accepted"],
        row["counts"]["delivered"],
        row["counts"]["bounced_hard"],
    ) == (3, 2, 1)
    assert (
        row["counts"]["opened"],
        row["counts"]["opened_machine"],
        row["counts"]["complained"],
    ) == (2, 1, 1)

    report_ = await get(relay_api, "/v1/campaigns/black-friday")
    assert [(s["step"], s["messages"]) for s in report_["funnel"]] == [
        ("accepted", 12),
        ("delivered", 10),
        ("opened", 3),
        ("clicked", 2),
    ]
    providers = {p["provider"]: p["counts"]["delivered"] for p in report_["providers"]}
    assert providers == {"gmail": 2, "microsoft": 3, "yahoo": 2, "other": 3}
    classes = {c["class"]: c for c in report_["bounce_classes"]}
    assert "5.1.1" in classes["bad-mailbox"]["samples"][0]
    links = {link["url"]: link for link in report_["links"]}
    home = "https://shop.example.com/?utm_source=email&utm_campaign=cart"
    assert links == {home: {"url": home, "human": 2, "machine": 1}}, "the first link, clicked"
    # /metrics: the same figures, with bounded labels
    scraped = await (await relay_api.get("/metrics")).text()
    samples = [
        sample for family in text_string_to_metric_families(scraped) for sample in family.samples
    ]

    assert (
        summed(samples, "sluice_bounces_total", **{"class": "bad-mailbox"}, provider="gmail") == 1
    )
    assert summed(samples, "sluice_bounces_total", **{"class": "quota"}, provider="yahoo") == 1
    assert summed(samples, "sluice_bounces_total") == 2
    assert (
        summed(samples, "sluice_complaints_total", provider="gmail")
        == summed(samples, "sluice_complaints_total")
        == 1
    )
    opened = {
        (agent, provider): summed(
            samples, "sluice_engagement_total", event="opened", agent=agent, provider=provider
        )
        for agent in ("human", "machine")
        for provider in ("gmail", "yahoo")
    }
    assert opened == {
        ("human", "gmail"): 3,
        ("human", "yahoo"): 1,
        ("machine", "gmail"): 1,
        ("machine", "yahoo"): 1,
    }
    assert summed(samples, "sluice_engagement_total", event="clicked", agent="machine") == 1
    assert summed(samples, "sluice_engagement_total", event="clicked", agent="human") == 2
    assert summed(samples, "sluice_engagement_total", event="unsubscribed") == 1
    listed = await get(relay_api, "/v1/campaigns")
    assert [c["campaign"] for c in listed["campaigns"]] == ["black-friday", "welcome"]
    assert ids  # every black-friday recipient got a message id


async def test_events_are_counted_once_whatever_the_counters(
    relay_api: Client, worker: Worker, store: Store, redis_url: str
) -> None:
    """Two counters on one page: the cursor they both began after lets one count it. The
    command line reads the same figures."""
    started = time.time()
    await send(relay_api, campaign_body("spring", [f"s{n}@inbox.example.org" for n in range(30)]))
    await worker.run_until_idle()
    total = await settled(relay_api, lambda t: t["delivered"] == 30)
    assert (total["accepted"], total["delivered"]) == (30, 30)
    by_campaign = ("stats", "--group-by", "campaign", "--json", "--redis-url", redis_url)
    listed = await asyncio.to_thread(sluice, *by_campaign)
    [row] = json.loads(listed.stdout)["rows"]
    assert (row["campaign"], row["counts"]["delivered"]) == ("spring", 30)
    report = await asyncio.to_thread(
        sluice, "campaign", "report", "spring", "--redis-url", redis_url
    )
    assert "funnel: accepted 30 -> delivered 30 -> opened 0 -> clicked 0" in report.stdout, report
    missing = await asyncio.to_thread(
        sluice, "campaign", "report", "autumn", "--redis-url", redis_url
    )
    assert missing.returncode == 2 and "no messages of campaign 'autumn'" in missing.stderr
    hours = {rollups.hour_of(started), rollups.hour_of(time.time())}  # an hour may turn
    ttls = [
        await store.redis.ttl(shard.keys.rollup(rollups.HOURLY, hour))
        for shard in store.shards.all
        for hour in hours
    ]
    present = [t for t in ttls if t != -2]  # -2: no such hash (no events that hour there)
    assert present and all(29 * 86400 < t <= 30 * 86400 for t in present), ttls
    refused = 0
    for shard in store.shards.all:  # a page counted again from where it began: refused
        _, events = await store.rollups.events(shard, 10)
        assert events == [], "every event counted"
        cursor = (await store.redis.get(shard.keys.rollup_cursor) or b"").decode()
        if cursor:
            page = Page(shard, "", cursor)
            page.counts[(rollups.DAILY, rollups.day_of(time.time()), "x")] += 1
            assert (
                await store.rollups.apply(page, hourly_seconds=3600, daily_seconds=86400) is False
            )
            refused += 1
    assert refused > 0, "some shard counted events: its replayed page was refused"


def sluice(*args: str) -> subprocess.CompletedProcess[str]:
    """``sluice`` on the command line (``tests/test_cli.py``), from the project's root."""
    return cli(*args, cwd=PROJECT_ROOT)


def test_rates_name_their_denominators_and_flag_low_volume() -> None:
    counts = {name: 0 for name in rollups.COUNTS} | {"bounced_class": {}}
    assert rates_of(counts)["rates"]["delivery"] is None, "no message: no rate"
    counts.update(delivered=990, bounced=10, bounced_hard=4, complained=2, opened=300)
    found = rates_of(counts)
    assert found["rates"]["delivery"] == 0.99 and found["rates"]["hard_bounce"] == 0.004
    assert found["rates"]["complaint"] == round(2 / 990, 6)
    assert found["low_volume"] is False
    assert found["denominators"]["delivery"] == {"of": "delivered+bounced", "messages": 1000}
    spans = buckets(Query("hour", 3600 * 5 + 10, 3600 * 7))
    assert [name for name, _ in spans] == ["1970010105", "1970010106", "1970010107"]


@pytest.mark.slow
async def test_against_a_real_serve_the_counts_are_what_the_fault_sink_answered(
    serve_factory: Any,
) -> None:
    """The scenario through ``sluice serve`` (API, workers, tracking, inbound server in their
    own processes) and the fault sink's scripted answers (4xx then OK, 5xx by class): two
    campaigns to four providers, human and Apple-proxy opens, a scanner's and a person's
    click, an ARF complaint, a one-click unsubscribe; /v1/stats, the campaign report and
    /metrics count exactly that."""
    with FaultSink() as fault:
        fault.script("bf0@gmail.com", ["550 5.1.1 <bf0@gmail.com>: User unknown"])
        fault.script("bf0@yahoo.com", ["552 5.2.2 <bf0@yahoo.com>: Mailbox full"])
        fault.script("bf1@yahoo.com", ["550 5.7.1 Message rejected as spam"])
        fault.script("bf0@outlook.com", ["451 4.7.1 Try again later", "250 OK"])
        served = serve_factory(relay=fault.relay, workers=1)
        emails = [
            f"bf{n}@{d}" for d in (*PROVIDERS.values(), "inbox.example.org") for n in range(3)
        ]
        bodies = [
            campaign_body("cyber", emails),
            campaign_body("welcome", ["w0@gmail.com", "w1@outlook.com"]),
        ]
        async with aiohttp.ClientSession(headers=served.headers) as api:
            for body in bodies:
                async with api.post(served.url + "/v1/messages", json=body) as r:
                    assert r.status == 202, await r.text()
            for _ in range(300):  # up to a minute: the deferred one comes back after its retry
                if len(fault.accepted()) >= 11:
                    break
                await asyncio.sleep(0.2)
            delivered = {m.rcpt_tos[0]: m.message for m in fault.accepted()}
            assert len(delivered) == 11, sorted(delivered)
            await _engage(delivered, served.inbound)

            async def by(group: str) -> dict[str, Any]:
                async with api.get(f"{served.url}/v1/stats?resolution=day&group_by={group}") as r:
                    return {row[group]: row for row in (await r.json())["rows"]}

            for _ in range(100):
                rows = await by("provider")
                if (
                    sum(
                        row["counts"]["complained"] + row["counts"]["unsubscribed"]
                        for row in rows.values()
                    )
                    == 2
                ):
                    break
                await asyncio.sleep(0.3)
            by_campaign = await by("campaign")
            async with api.get(served.url + "/v1/campaigns/cyber") as r:
                report = await r.json()
            async with api.get(served.url + "/metrics") as r:
                scraped = await r.text()
    gmail, yahoo, microsoft = (rows[p]["counts"] for p in ("gmail", "yahoo", "microsoft"))
    assert (gmail["delivered"], gmail["bounced_hard"], gmail["bounced_class"]) == (
        3,
        1,
        {"bad-mailbox": 1},
    )
    assert (gmail["opened"], gmail["opened_machine"], gmail["complained"]) == (1, 1, 1)
    assert (yahoo["delivered"], yahoo["bounced"], yahoo["bounced_hard"], yahoo["unsubscribed"]) == (
        1,
        2,
        0,
        1,
    )
    assert yahoo["bounced_class"] == {"quota": 1, "spam": 1}
    assert (microsoft["delivered"], microsoft["deferred"]) == (4, 1)
    assert (microsoft["clicked"], microsoft["clicked_machine"]) == (1, 1)
    assert sum(row["counts"]["accepted"] for row in rows.values()) == 14
    cyber, welcome = by_campaign["cyber"], by_campaign["welcome"]
    assert (cyber["counts"]["delivered"], welcome["counts"]["delivered"]) == (9, 2)
    assert cyber["rates"]["complaint"] == round(1 / 9, 6)
    assert cyber["rates"]["delivery"] == round(9 / 12, 6)
    assert cyber["rates"]["unsubscribe"] == round(1 / 9, 6)
    assert [(s["step"], s["messages"]) for s in report["funnel"]] == [
        ("accepted", 12),
        ("delivered", 9),
        ("opened", 1),
        ("clicked", 1),
    ]
    classes = {c["class"]: c["count"] for c in report["bounce_classes"]}
    assert classes == {"bad-mailbox": 1, "quota": 1, "spam": 1}
    [link] = report["links"]
    assert (link["human"], link["machine"]) == (1, 1)
    samples = [
        sample for family in text_string_to_metric_families(scraped) for sample in family.samples
    ]

    assert summed(samples, "sluice_messages_total", outcome="delivered") == 11
    assert summed(samples, "sluice_messages_total", outcome="bounced") == 3
    assert summed(samples, "sluice_messages_total", outcome="deferred", provider="microsoft") == 1
    assert summed(samples, "sluice_bounces_total", provider="yahoo") == 2
    assert summed(samples, "sluice_complaints_total", provider="gmail") == 1
    assert (
        summed(samples, "sluice_engagement_total", event="opened", agent="human", provider="gmail")
        == 2
    )
    assert summed(samples, "sluice_engagement_total", event="opened", agent="machine") == 1
    assert summed(samples, "sluice_engagement_total", event="clicked", agent="machine") == 1
    assert summed(samples, "sluice_engagement_total", event="clicked", agent="human") == 1
    assert summed(samples, "sluice_engagement_total", event="unsubscribed") == 1


async def _engage(delivered: dict[str, Any], inbound: str) -> None:
    """As mail clients and people would: bf1@gmail.com opens twice and Apple's proxy fetches
    its pixel; a scanner clicks bf1@outlook.com's first link at once and its reader later;
    bf2@yahoo.com unsubscribes in one click; bf2@gmail.com reports spam (ARF)."""

    def html(email: str) -> str:
        return str(delivered[email].get_body(("html",)).get_content())

    [pixel] = re.findall(r'<img src="([^"]+/t/o/[^"]+)"', html("bf1@gmail.com"))
    link = next(
        u for u in re.findall(r'<a [^>]*href="([^"]+)"', html("bf1@outlook.com")) if "/t/c/" in u
    )
    one_click = re.findall(r"<([^>]+)>", delivered["bf2@yahoo.com"]["List-Unsubscribe"])[0]
    async with aiohttp.ClientSession() as reader:
        for agent in (BROWSER, BROWSER, APPLE_PROXY):
            async with reader.get(pixel, headers=agent) as r:
                assert r.status == 200
        async with reader.get(link, headers=BROWSER, allow_redirects=False) as r:
            assert r.status == 302  # at once: a scanner
        await asyncio.sleep(CLICK_WINDOW_SECONDS + 0.5)
        async with reader.get(link, headers=BROWSER, allow_redirects=False) as r:
            assert r.status == 302  # later: a person
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        async with reader.post(one_click, data=b"List-Unsubscribe=One-Click", headers=form) as r:
            assert r.status == 200
    await complain(inbound, str(delivered["bf2@gmail.com"]["Message-ID"]))
