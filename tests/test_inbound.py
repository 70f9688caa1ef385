"""Bounces and complaints coming back to the inbound server become events and suppressions
(in-process: the API, a worker in burst mode and the inbound server, ``tests/inprocess.py``)."""

from __future__ import annotations

import json
import re
from email.utils import getaddresses
from pathlib import Path

import aiosmtplib
import pytest

from core.settings import HostPort
from loadtests.harness import fixture_batch
from mta.bounces import parse_report
from mta.bounces.parts import header, load
from mta.worker import Worker
from tests.bounce_reports import (
    EXCHANGE_POLICY_BLOCK,
    GMAIL_DELAYED_QUOTA,
    POSTFIX_USER_UNKNOWN,
    YAHOO_ARF,
)
from tests.conftest import Sink
from tests.inprocess import Client, message, report, send, suppressions

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora" / "bounces"


async def deliver(
    api: Client, worker: Worker, sink: Sink, count: int
) -> list[tuple[str, str, str]]:
    """(message id, recipient, VERP return path) of ``count`` delivered messages."""
    results = await send(api, fixture_batch(count))
    await worker.run_until_idle()
    received = {r.rcpt_tos[0]: r for r in sink.snapshot()}
    out = []
    for result in results:
        assert (await message(api, result["message_id"]))["status"] == "delivered"
        out.append((result["message_id"], result["email"], received[result["email"]].mail_from))
    return out


def header_id(sink: Sink, email: str) -> str:
    """The Message-ID header of the message ``email`` received, angle brackets kept."""
    [received] = [r for r in sink.snapshot() if r.rcpt_tos == [email]]
    return str(received.message["Message-ID"]).strip()


async def status_of(api: Client, message_id: str) -> str:
    return str((await message(api, message_id))["status"])


async def test_dsn_and_arf_become_events_and_suppressions(
    relay_api: Client, worker: Worker, sink: Sink, inbound: HostPort
) -> None:
    (
        (dead, dead_rcpt, dead_verp),
        (blocked, _, blocked_verp),
        (full, _, full_verp),
        (
            complainer,
            complainer_rcpt,
            _,
        ),
    ) = await deliver(relay_api, worker, sink, 4)
    assert dead_verp.startswith("bounce+") and dead_verp.endswith("@shop.example.com")

    await report(inbound, dead_verp, POSTFIX_USER_UNKNOWN)  # Postfix: 550 5.1.1 user unknown
    await report(inbound, blocked_verp, EXCHANGE_POLICY_BLOCK)  # Exchange: 5.7.1 policy block
    await report(inbound, full_verp, GMAIL_DELAYED_QUOTA)  # Gmail: delayed, over quota
    original = header_id(sink, complainer_rcpt).encode()  # signed: <id.signature@domain>
    await report(
        inbound, "fbl@shop.example.com", YAHOO_ARF.replace(b"<01HZX3J6Q3ARF@sluice.test>", original)
    )

    found = await message(relay_api, dead)
    assert found["status"] == "bounced"
    event = found["events"][-1]
    assert (event["type"], event["bounce_class"], event["hard"], event["source"]) == (
        "bounced",
        "bad-mailbox",
        True,
        "dsn",
    )
    assert event["status"] == "5.1.1" and event["email"] == dead_rcpt

    found = await message(relay_api, blocked)
    assert found["status"] == "bounced"
    assert found["events"][-1]["hard"] is False
    assert found["events"][-1]["bounce_class"] in ("policy", "spam")

    found = await message(relay_api, full)
    assert found["status"] == "delivered", "a delay notice is not a bounce"

    found = await message(relay_api, complainer)
    assert found["status"] == "delivered", "a complaint adds an event; the mail was delivered"
    event = found["events"][-1]
    assert (event["type"], event["feedback_type"], event["email"]) == (
        "complained",
        "abuse",
        complainer_rcpt,
    )

    # suppressed: the dead address and the complainer; not the blocked or full ones
    results = await send(relay_api, fixture_batch(4))
    await worker.run_until_idle()
    outcome = {r["email"]: await status_of(relay_api, r["message_id"]) for r in results}
    assert outcome == {
        "user0@inbox.example.org": "suppressed",
        "user1@inbox.example.org": "delivered",
        "user2@inbox.example.org": "delivered",
        "user3@inbox.example.org": "suppressed",
    }


async def test_mail_for_unknown_or_forged_return_paths_is_refused(
    relay_api: Client, worker: Worker, sink: Sink, inbound: HostPort
) -> None:
    [(message_id, _, verp)] = await deliver(relay_api, worker, sink, 1)
    local, domain = verp.split("@")
    token, signature = local.rsplit(".", 1)
    forged = f"{token}.{'b' * 10 if signature == 'a' * 10 else 'a' * 10}@{domain}"
    for rcpt in ("postmaster@shop.example.com", forged, f"bounce+{message_id}.aaaaaaaaaa@x.test"):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await report(inbound, rcpt, POSTFIX_USER_UNKNOWN)
        assert [(r.recipient, r.code) for r in refused.value.recipients] == [(rcpt, 550)]
    assert await status_of(relay_api, message_id) == "delivered"


def readdressed(name: str, recipient: str, return_path: str) -> bytes:
    """A corpus DSN as if it were about ``recipient`` and sent back to ``return_path``."""
    raw = (CORPUS / "samples" / name).read_bytes()
    [failed] = parse_report(raw).recipients
    msg = load(raw)
    assert msg is not None
    sender = getaddresses([header(msg, "To")])[0][1]
    for old, new in ((failed.email, recipient), (sender, return_path)):
        raw = re.sub(re.escape(old.encode()), new.encode(), raw, flags=re.IGNORECASE)
    return re.sub(rb"\r?\n", b"\r\n", raw)  # SMTP's line ends (the files have bare LF)


@pytest.mark.skipif(not (CORPUS / "expected.json").is_file(), reason="no bounce corpus")
async def test_corpus_dsns_bounce_the_message_and_only_hard_ones_suppress(
    relay_api: Client, worker: Worker, sink: Sink, inbound: HostPort
) -> None:
    """Real DSNs (Sisimai's verdict in brackets), readdressed to messages Sluice sent."""
    expected = json.loads((CORPUS / "expected.json").read_text())
    cases = [  # file, (class, hard, status) Sluice must record
        ("lhost-postfix-04.eml", ("bad-mailbox", True, "5.1.1")),  # [userunknown]
        ("lhost-postfix-58.eml", ("policy", False, "5.7.1")),  # [badreputation]: Gmail block
        ("rhost-google-01.eml", ("bad-mailbox", False, "5.2.1")),  # [suspend]: disabled
    ]
    sent = await deliver(relay_api, worker, sink, len(cases))
    for (name, (bounce_class, hard, status)), (message_id, email, verp) in zip(
        cases, sent, strict=True
    ):
        assert expected[name][0]["hard"] is hard, name
        raw = readdressed(name, email, verp)
        assert email.encode() in raw and verp.encode() in raw
        await report(inbound, verp, raw)
        found = await message(relay_api, message_id)
        assert found["status"] == "bounced", name
        event = found["events"][-1]
        assert (event["type"], event["email"], event["source"]) == ("bounced", email, "dsn")
        assert (event["bounce_class"], event["hard"], event["status"]) == (
            bounce_class,
            hard,
            status,
        ), name
        entries = await suppressions(relay_api, email)
        if hard:
            assert [(e["reason"], e["source"]) for e in entries] == [
                ("hard_bounce", f"dsn:{message_id}")
            ]
        else:
            assert entries == [], name
