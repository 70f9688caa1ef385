"""Bounces and complaints coming back to `--inbound` become events and suppressions."""

from __future__ import annotations

import json
import re
import smtplib
import time
import urllib.error
import urllib.request
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import pytest

from loadtests.harness import Served, fixture_batch
from mta.bounces import parse_report
from mta.bounces.parts import header, load
from tests.bounce_reports import (
    EXCHANGE_POLICY_BLOCK,
    GMAIL_DELAYED_QUOTA,
    POSTFIX_USER_UNKNOWN,
    YAHOO_ARF,
)
from tests.conftest import Sink
from tests.test_end_to_end import get, post, wait_status

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora" / "bounces"

pytestmark = pytest.mark.slow


def deliver(served: Served, sink: Sink, count: int) -> list[tuple[str, str, str]]:
    """(message id, recipient, VERP return path) of ``count`` delivered messages."""
    status, answer = post(served, "/v1/messages", fixture_batch(count))
    assert status == 202
    received = {r.rcpt_tos[0]: r for r in sink.wait_for(count)}
    out = []
    for result in answer["results"]:
        assert wait_status(served, result["message_id"], "delivered")["status"] == "delivered"
        out.append((result["message_id"], result["email"], received[result["email"]].mail_from))
    return out


def header_id(sink: Sink, email: str) -> str:
    """The Message-ID header of the message ``email`` received, angle brackets kept."""
    [received] = [r for r in sink.snapshot() if r.rcpt_tos == [email]]
    return str(received.message["Message-ID"]).strip()


def wait_final(served: Served, message_id: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while (status := get(served, f"/v1/messages/{message_id}")["status"]) in ("queued", "deferred"):
        assert time.monotonic() < deadline, f"{message_id} still {status}"
        time.sleep(0.1)
    return str(status)


def report(served: Served, rcpt: str, raw: bytes) -> None:
    host, port = served.inbound.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        smtp.sendmail("", [rcpt], raw)


def test_dsn_and_arf_become_events_and_suppressions(serve_factory: Any, sink: Sink) -> None:
    served = serve_factory(relay=sink.relay, workers=1)
    (
        (dead, dead_rcpt, dead_verp),
        (blocked, _, blocked_verp),
        (full, _, full_verp),
        (
            complainer,
            complainer_rcpt,
            _,
        ),
    ) = deliver(served, sink, 4)
    assert dead_verp.startswith("bounce+") and dead_verp.endswith("@shop.example.com")

    report(served, dead_verp, POSTFIX_USER_UNKNOWN)  # Postfix: 550 5.1.1 user unknown
    report(served, blocked_verp, EXCHANGE_POLICY_BLOCK)  # Exchange: 5.7.1 policy block
    report(served, full_verp, GMAIL_DELAYED_QUOTA)  # Gmail: delayed, over quota
    original = header_id(sink, complainer_rcpt).encode()  # signed: <id.signature@domain>
    report(
        served, "fbl@shop.example.com", YAHOO_ARF.replace(b"<01HZX3J6Q3ARF@sluice.test>", original)
    )

    found = get(served, f"/v1/messages/{dead}")
    assert found["status"] == "bounced"
    event = found["events"][-1]
    assert (event["type"], event["bounce_class"], event["hard"], event["source"]) == (
        "bounced",
        "bad-mailbox",
        True,
        "dsn",
    )
    assert event["status"] == "5.1.1" and event["email"] == dead_rcpt

    found = get(served, f"/v1/messages/{blocked}")
    assert found["status"] == "bounced"
    assert found["events"][-1]["hard"] is False
    assert found["events"][-1]["bounce_class"] in ("policy", "spam")

    found = get(served, f"/v1/messages/{full}")
    assert found["status"] == "delivered", "a delay notice is not a bounce"

    found = get(served, f"/v1/messages/{complainer}")
    assert found["status"] == "delivered", "a complaint adds an event; the mail was delivered"
    event = found["events"][-1]
    assert (event["type"], event["feedback_type"], event["email"]) == (
        "complained",
        "abuse",
        complainer_rcpt,
    )

    # suppressed: the dead address and the complainer; not the blocked or full ones
    status, answer = post(served, "/v1/messages", fixture_batch(4))
    assert status == 202
    outcome = {r["email"]: wait_final(served, r["message_id"]) for r in answer["results"]}
    assert outcome == {
        "user0@inbox.example.org": "suppressed",
        "user1@inbox.example.org": "delivered",
        "user2@inbox.example.org": "delivered",
        "user3@inbox.example.org": "suppressed",
    }


def test_mail_for_unknown_or_forged_return_paths_is_refused(serve_factory: Any, sink: Sink) -> None:
    served = serve_factory(relay=sink.relay, workers=1)
    [(message_id, _, verp)] = deliver(served, sink, 1)
    local, domain = verp.split("@")
    token, signature = local.rsplit(".", 1)
    forged = f"{token}.{'b' * 10 if signature == 'a' * 10 else 'a' * 10}@{domain}"
    host, port = served.inbound.rsplit(":", 1)
    for rcpt in ("postmaster@shop.example.com", forged, f"bounce+{message_id}.aaaaaaaaaa@x.test"):
        with smtplib.SMTP(host, int(port), timeout=30) as smtp:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                smtp.sendmail("", [rcpt], POSTFIX_USER_UNKNOWN)
            assert refused.value.recipients[rcpt][0] == 550
    assert get(served, f"/v1/messages/{message_id}")["status"] == "delivered"


def suppressed(served: Served, email: str) -> list[dict[str, Any]]:
    """The suppression entries of ``email`` (none: 404)."""
    request = urllib.request.Request(
        f"{served.url}/v1/suppressions/{email}", headers=served.headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            entries: list[dict[str, Any]] = json.loads(response.read())["suppressions"]
            return entries
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        return []


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
def test_corpus_dsns_bounce_the_message_and_only_hard_ones_suppress(
    serve_factory: Any, sink: Sink
) -> None:
    """Real DSNs (Sisimai's verdict in brackets), readdressed to messages Sluice sent."""
    expected = json.loads((CORPUS / "expected.json").read_text())
    cases = [  # file, (class, hard, status) Sluice must record
        ("lhost-postfix-04.eml", ("bad-mailbox", True, "5.1.1")),  # [userunknown]
        ("lhost-postfix-58.eml", ("policy", False, "5.7.1")),  # [badreputation]: Gmail block
        ("rhost-google-01.eml", ("bad-mailbox", False, "5.2.1")),  # [suspend]: disabled
    ]
    served = serve_factory(relay=sink.relay, workers=1)
    sent = deliver(served, sink, len(cases))
    for (name, (bounce_class, hard, status)), (message_id, email, verp) in zip(
        cases, sent, strict=True
    ):
        assert expected[name][0]["hard"] is hard, name
        raw = readdressed(name, email, verp)
        assert email.encode() in raw and verp.encode() in raw
        report(served, verp, raw)
        found = get(served, f"/v1/messages/{message_id}")
        assert found["status"] == "bounced", name
        event = found["events"][-1]
        assert (event["type"], event["email"], event["source"]) == ("bounced", email, "dsn")
        assert (event["bounce_class"], event["hard"], event["status"]) == (
            bounce_class,
            hard,
            status,
        ), name
        entries = suppressed(served, email)
        if hard:
            assert [(e["reason"], e["source"]) for e in entries] == [
                ("hard_bounce", f"dsn:{message_id}")
            ]
        else:
            assert entries == [], name
