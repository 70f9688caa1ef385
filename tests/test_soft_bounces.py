"""Soft bounces that never end: an address whose messages keep ending soft-bounced is
suppressed (``soft_bounce_limit``) once enough of them span enough days, and a delivery in
between starts the count over. End to end on a clock the test moves (``core.clock``): the
real API and a delivery worker in burst mode, into the fault sink on loopback, a week of
retries in a few seconds."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core import rollups
from core.clock import ManualClock
from core.events import iso_time
from core.settings import HostPort, Settings
from core.store import Store
from loadtests.fault_sink import FaultSink
from loadtests.harness import fixture_batch
from loadtests.redis_cluster import LocalCluster
from mta.worker import Worker
from tests.conftest import CLUSTER_SHARDS, fresh_store, gateway_settings, need_tools
from tests.inprocess import (
    Client,
    Webhooks,
    message,
    running_api,
    running_inbound,
    running_worker,
    send,
    suppressions,
)
from tests.inprocess import (
    report as send_report,
)

DAY = 86400.0
FULL = "full@inbox.example.org"  # its mailbox stays full: every message expires
RECOVERS = "recovers@inbox.example.org"  # full too, but one message gets through
BLOCKED = "blocked@inbox.example.org"  # deferred for the sender's reputation, not the address


@pytest.fixture(
    params=[
        pytest.param(1, id="one-shard"),
        pytest.param(8, id="eight-shards"),
        # the scripts' keys must share one slot per shard: a real cluster refuses otherwise
        pytest.param(CLUSTER_SHARDS, id="cluster", marks=pytest.mark.slow),
    ]
)
def backend(redis_url: str, request: pytest.FixtureRequest) -> tuple[str, int]:
    """(Redis URL, shards): one Redis in one or eight shards, or a Redis Cluster."""
    if request.param == CLUSTER_SHARDS:
        need_tools("redis-server")
        cluster: LocalCluster = request.getfixturevalue("cluster")
        return cluster.url, CLUSTER_SHARDS
    return redis_url, int(request.param)


@pytest.fixture
async def store(backend: tuple[str, int]) -> AsyncIterator[Store]:
    async with fresh_store(*backend) as opened:
        yield opened


@pytest.fixture
def fault(fault_sink: FaultSink) -> FaultSink:
    """The fault sink: two mailboxes full until told otherwise, one sender blocklisted."""
    fault_sink.set_rule(FULL, p_4xx=1.0, reply_4xx=f"452 4.2.2 <{FULL}>: Mailbox full")
    fault_sink.set_rule(RECOVERS, p_4xx=1.0, reply_4xx=f"452 4.2.2 <{RECOVERS}>: Mailbox full")
    fault_sink.set_rule(
        BLOCKED,
        p_4xx=1.0,
        reply_4xx="451 4.7.1 Client host rejected: blocked using zen.spamhaus.org",
    )
    return fault_sink


class Gateway:
    """The API, a worker and the inbound server of one gateway on a ``ManualClock``."""

    def __init__(
        self,
        api: Client,
        worker: Worker,
        inbound: HostPort,
        clock: ManualClock,
        settings: Settings,
    ) -> None:
        self.api = api
        self.worker = worker
        self.inbound = inbound
        self.clock = clock
        self.settings = settings

    async def send_all(self, *emails: str) -> dict[str, dict[str, Any]]:
        """One message to each of ``emails``, delivered until each is final: tried, retried
        at ``SLUICE_MAX_DEFERRAL`` (60 s in tests) and expired if its server still defers.
        The result of each, by address."""
        body = fixture_batch(len(emails))
        for recipient, email in zip(body["recipients"], emails, strict=True):
            recipient["email"] = email
        results = await send(self.api, body)
        await self.worker.run_until_idle()  # first attempts
        self.clock.advance(self.settings.delivery.max_deferral + 1)
        await self.worker.run_until_idle()  # the retries: delivered, or expired
        return {r["email"]: r for r in results}

    async def status(self, result: dict[str, Any]) -> str:
        return str((await message(self.api, result["message_id"]))["status"])


@pytest.fixture
async def gateway(
    backend: tuple[str, int], store: Store, fault: FaultSink, tmp_path: Path
) -> AsyncIterator[Gateway]:
    redis_url = backend[0]
    clock = ManualClock(float(int(time.time())))  # whole seconds: times compare exactly
    settings = gateway_settings(tmp_path, relay=fault.relay)
    assert settings.delivery.soft_bounce_limit.messages == 3  # the defaults
    assert settings.delivery.soft_bounce_limit.days == 7
    async with (
        running_api(settings, redis_url, clock=clock) as api,
        running_worker(settings, store, clock=clock) as worker,
        running_inbound(settings, store, clock=clock) as inbound,
    ):
        yield Gateway(api, worker, inbound, clock, settings)


async def test_an_address_that_soft_bounces_for_a_week_is_suppressed_and_one_that_recovers_is_not(
    gateway: Gateway, fault: FaultSink, webhooks: Webhooks
) -> None:
    start = gateway.clock()
    first = await gateway.send_all(FULL, RECOVERS, BLOCKED)  # day 0
    for result in first.values():
        assert await gateway.status(result) == "expired"
    found = await message(gateway.api, first[FULL]["message_id"])
    assert [e["type"] for e in found["events"]] == ["queued", "deferred", "expired"]
    assert found["events"][-1]["soft_bounce"] is True
    blocked = await message(gateway.api, first[BLOCKED]["message_id"])
    assert blocked["events"][-1]["soft_bounce"] is False, "the sender's reputation, not the address"

    gateway.clock.advance(3.5 * DAY)
    await gateway.send_all(FULL, RECOVERS, BLOCKED)  # day 3.5

    gateway.clock.advance(1.5 * DAY)
    fault.clear_rule(RECOVERS)  # its mailbox has room again, for one message
    third = await gateway.send_all(FULL, RECOVERS, BLOCKED)  # day 5
    assert await gateway.status(third[RECOVERS]) == "delivered"
    fault.set_rule(RECOVERS, p_4xx=1.0, reply_4xx=f"452 4.2.2 <{RECOVERS}>: Mailbox full")
    # three messages to FULL ended soft-bounced, but over five days: not yet
    assert await suppressions(gateway.api, FULL) == []

    gateway.clock.advance(2 * DAY + 3600)
    fourth = await gateway.send_all(FULL, RECOVERS, BLOCKED)  # day 7, an hour after
    assert gateway.clock() - start > 7 * DAY
    [entry] = await suppressions(gateway.api, FULL)
    assert (entry["reason"], entry["category"], entry["source"]) == (
        "soft_bounce_limit",
        None,
        f"soft-bounce:{fourth[FULL]['message_id']}",
    )
    assert entry["created_at"] == int(gateway.clock())
    found = await message(gateway.api, fourth[FULL]["message_id"])
    assert found["status"] == "expired", "the message expired; its address is suppressed"
    assert [e["type"] for e in found["events"]][-2:] == ["expired", "suppressed"]
    suppressed = found["events"][-1]
    assert (suppressed["reason"], suppressed["scope"], suppressed["stage"]) == (
        "soft_bounce_limit",
        "global",
        "outcome",
    )
    assert suppressed["soft_bounces"] == 4
    # statistics count the message once, as expired: its address's suppression is no message's
    counted = [metric for event in found["events"] for metric in rollups.metrics_of(event)]
    assert sorted(counted) == ["accepted", "deferred", "expired"]
    first_ended = start + gateway.settings.delivery.max_deferral + 1
    assert suppressed["first_soft_bounce_at"] == iso_time(first_ended)

    gateway.clock.advance(3 * DAY)
    fifth = await gateway.send_all(FULL, RECOVERS, BLOCKED)  # day 10
    assert fifth[FULL]["status"] == "suppressed" and fifth[FULL]["reason"] == "soft_bounce_limit"
    assert await gateway.status(fifth[RECOVERS]) == "expired"
    # four soft bounces over ten days, but a delivery between the second and the third
    assert await suppressions(gateway.api, RECOVERS) == []
    # five expired messages, each for the sender's reputation
    assert await suppressions(gateway.api, BLOCKED) == []

    def suppressed_events() -> list[dict[str, Any]]:
        return [e for e in webhooks.receiver.events() if e["type"] == "suppressed"]

    await webhooks.dispatch_until(lambda: len(suppressed_events()) >= 2)
    by_stage = {e.get("stage"): e for e in suppressed_events()}
    assert by_stage["outcome"]["email"] == FULL
    assert by_stage["outcome"]["reason"] == "soft_bounce_limit"
    assert by_stage["outcome"]["message_id"] == fourth[FULL]["message_id"]
    assert by_stage[None]["message_id"] == fifth[FULL]["message_id"]  # refused at accept


def failure_report(email: str, status: str, diagnostic: str) -> bytes:
    """An RFC 3464 report that a relay could not deliver to ``email`` after accepting it."""
    text = f"""From: MAILER-DAEMON@mx.example.net
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="report"

--report
Content-Type: text/plain

Your message could not be delivered.

--report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {email}
Action: failed
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--report--
"""
    return text.replace("\n", "\r\n").encode()


MAILBOX_FULL = ("5.2.2", "552 5.2.2 Mailbox full")
BLOCKLISTED = ("5.7.1", "550 5.7.1 Service unavailable, client host blocked using zen.spamhaus.org")


async def test_reports_after_acceptance_count_as_the_soft_bounces_they_are(
    gateway: Gateway, fault: FaultSink
) -> None:
    """A relay accepts every message and mails a failure report later: a report that the
    mailbox was full makes its message a soft bounce, and its delivery no delivery; a report
    that blames the sender counts for nothing either way."""
    full, recovers, blamed = (f"{name}@relayed.example.org" for name in ("full", "ok", "blamed"))
    script = {  # day -> the report each address's message comes back with (None: delivered)
        0: {full: MAILBOX_FULL, recovers: MAILBOX_FULL, blamed: MAILBOX_FULL},
        2: {full: MAILBOX_FULL, recovers: MAILBOX_FULL, blamed: MAILBOX_FULL},
        4: {full: MAILBOX_FULL, recovers: None, blamed: BLOCKLISTED},
        8: {full: MAILBOX_FULL, recovers: MAILBOX_FULL, blamed: MAILBOX_FULL},
    }
    start = gateway.clock()
    sent: dict[int, dict[str, dict[str, Any]]] = {}
    for day, reports in script.items():
        gateway.clock.advance(start + day * DAY - gateway.clock())
        before = len(fault.accepted())
        sent[day] = await gateway.send_all(*reports)
        return_paths = {m.rcpt_tos[0]: m.mail_from for m in fault.accepted()[before:]}
        assert sorted(return_paths) == sorted(reports), "the relay accepted every message"
        for email, report in reports.items():
            if report is not None:
                await send_report(
                    gateway.inbound, return_paths[email], failure_report(email, *report)
                )
                assert await gateway.status(sent[day][email]) == "bounced"
        if day == 4:  # three soft bounces to full, over four days: not yet
            assert await suppressions(gateway.api, full) == []

    [entry] = await suppressions(gateway.api, full)
    assert (entry["reason"], entry["source"]) == (
        "soft_bounce_limit",
        f"soft-bounce:{sent[8][full]['message_id']}",
    )
    found = await message(gateway.api, sent[8][full]["message_id"])
    assert [e["type"] for e in found["events"]] == ["queued", "delivered", "bounced", "suppressed"]
    assert found["events"][2]["soft_bounce"] is True and found["events"][2]["source"] == "dsn"
    assert found["events"][-1]["soft_bounces"] == 4
    # delivered on day 4, and no report came back: a delivery between its soft bounces
    assert await suppressions(gateway.api, recovers) == []
    # bounced on day 4 for the sender's listing: neither a soft bounce nor a delivery
    [entry] = await suppressions(gateway.api, blamed)
    assert entry["reason"] == "soft_bounce_limit"
    found = await message(gateway.api, sent[8][blamed]["message_id"])
    assert found["events"][-1]["soft_bounces"] == 3
