"""The inbound server acts only on what Sluice signed, counts a complaint once per message and
refuses abusive sessions before doing the work, against a real ``sluice serve``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import re
import smtplib
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.ids import base32_prefix
from core.settings import Secret
from core.store import UnverifiedReport, open_store
from loadtests.harness import Served, cart_reminder, fixture_batch
from mta.bounces import parse_report
from mta.inbound import MAX_CONNECTIONS, MAX_RECIPIENTS, MAX_REPORT_BYTES, over_limits
from mta.inbound_server import MessageBuffer
from mta.message_ids import MessageIds
from mta.mime import Mailbox, build_message
from mta.verp import Verp
from tests.bounce_reports import POSTFIX_USER_UNKNOWN, YAHOO_ARF
from tests.conftest import Sink
from tests.test_end_to_end import get, post, wait_status
from tests.test_inbound import CORPUS
from tests.test_warmup import put

WARMING_IP = "127.0.0.1"
ARF_ID, DSN_ID = "<01HZX3J6Q3ARF@sluice.test>", "<01HZX3J6Q0ABCDEF@sluice.test>"  # as quoted


def report(served: Served, rcpt: str, raw: bytes) -> None:
    host, port = served.inbound.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        smtp.sendmail("", [rcpt], raw)


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


def serve_warming(serve_factory: Any, sink: Sink) -> Served:
    """A serve whose only sending IP is warming (as tests/test_warmup.py sets one up), so a
    complaint about its mail is a warmup signal."""
    served: Served = serve_factory(
        relay=sink.relay, workers=1, extra_env={"SLUICE_IPS": f"{WARMING_IP}@default"}
    )
    put(served, f"/v1/warmup/ips/{WARMING_IP}", {"schedule": [10_000, 10_000]})
    time.sleep(2.5)  # workers re-read warmup settings every 2 s
    return served


def deliver_to_gmail(served: Served, sink: Sink, count: int) -> list[dict[str, str]]:
    """``count`` delivered messages: message id, recipient, return path and Message-ID header."""
    status, answer = post(served, "/v1/messages", fixture_batch(count, domain="gmail.com"))
    assert status == 202
    sink.wait_for(count)
    out = []
    for result in answer["results"]:
        assert wait_status(served, result["message_id"], "delivered")["status"] == "delivered"
        [received] = [r for r in sink.snapshot() if r.rcpt_tos == [result["email"]]]
        header = str(received.message["Message-ID"]).strip()
        sent = {"id": result["message_id"], "email": result["email"], "header": header}
        out.append({**sent, "verp": received.mail_from})
    return out


def warmup_complaints(served: Served) -> int:
    [ip] = get(served, "/v1/warmup/status")["ips"]
    assert ip["ip"] == WARMING_IP and ip["providers"]["gmail"]["last_hour"]["sent"] > 0
    return int(ip["providers"]["gmail"]["last_hour"]["complained"])


def unverified(served: Served) -> tuple[int, list[UnverifiedReport]]:
    async def read() -> tuple[int, list[UnverifiedReport]]:
        async with open_store(served.redis_url()) as store:
            return await store.unverified_reports()

    return asyncio.run(read())


def events(served: Served, message_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = get(served, f"/v1/messages/{message_id}")["events"]
    return found


def naming(raw: bytes, old_id: str, new_id: str, old_rcpt: str, new_rcpt: str) -> bytes:
    """A report rewritten to quote ``new_id`` (angle brackets or not) about ``new_rcpt``."""
    for old, new in ((old_id.strip("<>"), new_id.strip("<>")), (old_rcpt, new_rcpt)):
        raw = re.sub(re.escape(old.encode()), new.encode(), raw, flags=re.IGNORECASE)
    return re.sub(rb"\r?\n", b"\r\n", raw)


def corpus_arf(name: str, header: str, email: str) -> bytes:
    """A real ARF report from the corpus, rewritten to quote a message Sluice sent."""
    raw = (CORPUS / "samples" / name).read_bytes()
    parsed = parse_report(raw)
    assert parsed.kind == "arf" and parsed.original_message_id, name
    old_rcpt = parsed.recipients[0].email if parsed.recipients else "kijitora@example.org"
    rewritten = naming(raw, parsed.original_message_id, header, old_rcpt, email)
    again = parse_report(rewritten)
    assert (again.kind, again.original_message_id) == ("arf", header), name
    return rewritten


@pytest.mark.slow
def test_forged_reports_naming_another_recipients_message_change_nothing(
    serve_factory: Any, sink: Sink
) -> None:
    """One recipient of a batch knows the others' message ids up to the index, and its own
    signed Message-ID and return path; none of that reaches another recipient."""
    served = serve_warming(serve_factory, sink)
    attacker, victim = deliver_to_gmail(served, sink, 2)
    own_signature = attacker["header"].strip("<>").partition("@")[0].rpartition(".")[2]
    assert len(own_signature) == 16  # 80 bits, base32
    forged_ids = [
        f"<{victim['id']}@shop.example.com>",  # the unsigned form Sluice used to write
        f"<{victim['id']}.{own_signature}@shop.example.com>",  # another message's signature
        f"<{victim['id']}.{'a' * 16}@shop.example.com>",
    ]
    reasons = ["unsigned", "bad signature", "bad signature"]
    before = events(served, victim["id"])
    for forged in forged_ids:
        arf = naming(YAHOO_ARF, ARF_ID, forged, "complainer@yahoo.com", victim["email"])
        dsn = naming(POSTFIX_USER_UNKNOWN, DSN_ID, forged, "Nobody@Example.NET", victim["email"])
        assert parse_report(arf).original_message_id == forged
        assert parse_report(dsn).original_message_id == forged
        report(served, "fbl@shop.example.com", arf)
        report(served, "abuse-reports@other.example", dsn)
    # a bounce to the attacker's own return path acts on the attacker's message only
    own_bounce = naming(
        POSTFIX_USER_UNKNOWN, DSN_ID, forged_ids[0], "Nobody@Example.NET", victim["email"]
    )
    report(served, attacker["verp"], own_bounce)
    assert get(served, f"/v1/messages/{attacker['id']}")["status"] == "bounced"

    assert suppressed(served, victim["email"]) == []  # 404
    assert events(served, victim["id"]) == before
    assert get(served, f"/v1/messages/{victim['id']}")["status"] == "delivered"
    assert warmup_complaints(served) == 0
    count, latest = unverified(served)
    assert count == 6
    assert sorted((r.kind, r.claimed, r.reason, r.peer) for r in latest) == sorted(
        (kind, forged, reason, "127.0.0.1")
        for forged, reason in zip(forged_ids, reasons, strict=True)
        for kind in ("arf", "dsn")
    )
    logged = [line for line in served.log().splitlines() if "unverified" in line]
    assert len(logged) == 6 and "unverified arf report from 127.0.0.1 (unsigned" in logged[0]
    assert not any(victim["email"] in line for line in logged), "no addresses in the log"


@pytest.mark.slow
@pytest.mark.skipif(not (CORPUS / "expected.json").is_file(), reason="no bounce corpus")
def test_a_genuine_complaint_counts_once_per_message(serve_factory: Any, sink: Sink) -> None:
    """Real feedback-loop layouts quoting the signed Message-ID: each suppresses its recipient
    with one complained event and one warmup complaint, however often it is sent."""
    served = serve_warming(serve_factory, sink)
    layouts = ["arf-15.eml", "arf-12.eml", "arf-22.eml", "arf-17.eml"]  # Return Path FBL,
    # text/rfc822-header opt-out, Microsoft JMRP, several Original-Rcpt-To
    sent = deliver_to_gmail(served, sink, len(layouts))
    reports = [
        corpus_arf(name, m["header"], m["email"]) for name, m in zip(layouts, sent, strict=True)
    ]
    for raw in reports:
        report(served, "fbl@shop.example.com", raw)
    report(served, "fbl@shop.example.com", reports[0])  # the same report again
    host, port = served.inbound.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:  # one DATA, twenty recipients
        smtp.sendmail("", [f"fbl@shop{i}.example" for i in range(20)], reports[1])

    for name, message in zip(layouts, sent, strict=True):
        complained = [e for e in events(served, message["id"]) if e["type"] == "complained"]
        assert len(complained) == 1, name
        assert complained[0]["email"] == message["email"]
        entries = suppressed(served, message["email"])
        assert [(e["reason"], e["source"]) for e in entries] == [
            ("complaint", f"arf:{message['id']}")
        ], name
    assert warmup_complaints(served) == len(layouts)
    assert unverified(served)[0] == 0


@pytest.mark.slow
@pytest.mark.skipif(not (CORPUS / "expected.json").is_file(), reason="no bounce corpus")
def test_a_dmarc_failure_report_about_our_message_is_not_a_complaint(
    serve_factory: Any, sink: Sink
) -> None:
    """An ARF ``auth-failure`` (DMARC forensic) report quotes our signed Message-ID too, but
    says our message failed authentication, nothing about the recipient."""
    served = serve_warming(serve_factory, sink)
    [message] = deliver_to_gmail(served, sink, 1)
    raw = corpus_arf("arf-19.eml", message["header"], message["email"])
    assert parse_report(raw).feedback_type == "auth-failure"
    report(served, "fbl@shop.example.com", raw)
    assert [e["type"] for e in events(served, message["id"])] == ["queued", "delivered"]
    assert suppressed(served, message["email"]) == []
    assert warmup_complaints(served) == 0


@pytest.mark.slow
def test_too_many_recipients_get_452_and_too_many_connections_421(
    serve_factory: Any, sink: Sink
) -> None:
    served = serve_factory(relay=sink.relay, workers=0)
    host, port = served.inbound.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        smtp.ehlo("test.example")
        smtp.mail("")
        for i in range(MAX_RECIPIENTS):
            assert smtp.rcpt(f"fbl@d{i}.example")[0] == 250
        code, text = smtp.rcpt("fbl@one-more.example")
        assert (code, text[:5]) == (452, b"4.5.3")

    def greeting(sock: socket.socket) -> bytes:
        sock.settimeout(10)
        return sock.recv(512)

    time.sleep(0.3)  # the server has seen that one close
    held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        assert all(greeting(s).startswith(b"220") for s in held)
        with socket.create_connection((host, int(port)), timeout=10) as extra:
            assert greeting(extra).startswith(b"421 4.7.0")
            assert extra.recv(512) == b"", "closed after the 421"
        held.pop().close()
        time.sleep(0.2)
        with socket.create_connection((host, int(port)), timeout=10) as freed:
            assert greeting(freed).startswith(b"220"), "a slot is free again"
    finally:
        for sock in held:
            sock.close()


@pytest.mark.slow
def test_data_over_the_size_limit_gets_552_and_the_session_goes_on(
    serve_factory: Any, sink: Sink
) -> None:
    served = serve_factory(relay=sink.relay, workers=0)
    host, port = served.inbound.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=60) as smtp:
        smtp.ehlo("test.example")
        smtp.mail("")
        smtp.rcpt("fbl@shop.example.com")
        smtp.putcmd("data")
        assert smtp.getreply()[0] == 354
        too_big = (b"x" * 998 + b"\r\n") * (MAX_REPORT_BYTES // 1000 + 1)
        smtp.send(too_big + b".\r\n")
        assert smtp.getreply() == (
            552,
            f"5.3.4 Message too big (limit {MAX_REPORT_BYTES} bytes)".encode(),
        )
        assert smtp.sendmail("", ["fbl@shop.example.com"], YAHOO_ARF) == {}
    # the end of DATA and the next command in one write (pipelined): both are answered
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        replies = sock.makefile("rb")
        assert replies.readline().startswith(b"220")
        sock.sendall(b"HELO test.example\r\nMAIL FROM:<>\r\nRCPT TO:<fbl@shop.example.com>\r\n")
        assert [replies.readline()[:3] for _ in range(3)] == [b"250"] * 3
        sock.sendall(b"DATA\r\n")
        assert replies.readline().startswith(b"354")
        sock.sendall(YAHOO_ARF + b".\r\nQUIT\r\n")
        assert replies.readline().startswith(b"250 2.0.0 OK: report received")
        assert replies.readline().startswith(b"221")
    count, latest = unverified(served)
    assert count == 2 and {r.reason for r in latest} == {"not ours"}


@pytest.mark.slow
def test_a_report_of_200000_tiny_parts_is_refused_while_the_api_answers(
    serve_factory: Any, sink: Sink
) -> None:
    served = serve_factory(relay=sink.relay, workers=0)
    part = b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    raw = (
        b"From: a@attacker.example\r\nTo: fbl@shop.example.com\r\nSubject: report\r\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n'
        + part * 200_000
        + b"--b--\r\n"
    )
    assert len(raw) > 7_000_000
    latencies: list[float] = []
    sending = threading.Event()
    sending.set()

    def probe() -> None:
        while sending.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(served.url + "/healthz", timeout=10) as answer:
                assert answer.status == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)

    prober = threading.Thread(target=probe)
    host, port = served.inbound.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=60) as smtp:
        smtp.ehlo("attacker.example")
        smtp.mail("")
        smtp.rcpt("fbl@shop.example.com")
        prober.start()
        started = time.monotonic()
        # raw DATA (no line starts with "."): smtplib's own rewriting would hold this
        # process's GIL and slow the probe, not the server
        smtp.putcmd("data")
        assert smtp.getreply()[0] == 354
        smtp.send(raw + b".\r\n")
        code, text = smtp.getreply()
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # and a little after
        sending.clear()
        prober.join(30)
    assert (code, text) == (552, b"5.3.4 Too many MIME parts for a report (limit 1000)")
    assert elapsed < 15, elapsed
    assert len(latencies) > 10
    assert max(latencies) < 0.1, sorted(latencies)[-5:]


def test_the_pre_scan_passes_real_reports() -> None:
    """Every report of the corpus, and a complaint quoting the largest message Sluice renders
    (2 MB of HTML), are under the limits."""
    samples = sorted((CORPUS / "samples").glob("*.eml")) if CORPUS.is_dir() else []
    for path in samples:
        assert over_limits(Path(path).read_bytes()) is None, path.name
    body = cart_reminder()
    html = body["html"] * (2 * 1024 * 1024 // len(body["html"]))
    original = build_message(
        sender=Mailbox("news@shop.example.com"),
        to=Mailbox("user0@gmail.com"),
        subject="Hi",
        html=html,
        text=body["text"] * 20,
        message_id="x.y@shop.example.com",
    )
    report_part, marker, _ = YAHOO_ARF.partition(b"Content-Disposition: inline\r\n\r\n")
    quoting = report_part + marker + original + b"\r\n--arf_boundary--\r\n"
    assert len(quoting) > 2_000_000
    assert over_limits(quoting) is None


_LINES = st.lists(  # lines without CR (one CR alone is a case), some with leading dots
    st.sampled_from([b"", b".", b"..", b".x", b"x.", b"\r", b"\n."])
    | st.binary().map(lambda line: line.replace(b"\r", b"")),
    max_size=30,
)


@given(
    lines=_LINES, cuts=st.lists(st.integers(min_value=0), max_size=10), limit=st.integers(0, 300)
)
@settings(max_examples=300, deadline=None)
def test_the_data_reader_finds_the_end_whatever_the_chunks(
    lines: list[bytes], cuts: list[int], limit: int
) -> None:
    """Dot-stuffed lines, cut anywhere into chunks: the message comes back unstuffed, the
    bytes after the final dot are handed back, and a message over the limit is flagged."""
    message = b"".join(line + b"\r\n" for line in lines)
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    sent = b"".join(line + b"\r\n" for line in stuffed)  # the limit counts these, as aiosmtpd
    wire = sent + b".\r\nQUIT\r\n"
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    chunks = [wire[a:b] for a, b in itertools.pairwise(points)]

    async def feed() -> tuple[MessageBuffer, bytes]:
        buffer = MessageBuffer(limit)
        for index, chunk in enumerate(chunks):
            after = buffer.feed(chunk)
            if after is not None:
                assert buffer.ended.done()
                return buffer, after + b"".join(chunks[index + 1 :])
        raise AssertionError("the end was not found")

    buffer, after = asyncio.run(feed())
    assert after == b"QUIT\r\n"
    assert buffer.too_big is (len(sent) > limit)
    if not buffer.too_big:
        assert buffer.content() == message


def test_the_message_id_signature_is_its_own() -> None:
    """The Message-ID's signature (80 bits) is neither the return path's nor the unsubscribe
    address's: none of the three stands in for another."""
    key = Secret("k" * 32)
    ids, verp, unsubscribe = MessageIds(key), Verp(key), Verp(key, prefix="unsubscribe+")
    message_id = "a" * 26 + "-7"
    header = ids.header_value(message_id, "shop.example.com")
    signature = header.partition("@")[0].rpartition(".")[2]
    assert len(signature) == 16
    assert ids.check(f"<{header}>").message_id == message_id
    assert ids.check(f"<{header.upper()}>").message_id == message_id, "case folded on the way"
    assert verp.message_id(f"bounce+{message_id}.{signature[:10]}@x.example") is None
    assert unsubscribe.message_id(f"unsubscribe+{message_id}.{signature[:10]}@x.example") is None
    for other in (verp, unsubscribe):
        token = other.return_path(message_id, "x.example").partition("@")[0].rpartition(".")[2]
        forged = f"<{message_id}.{token}{signature[10:]}@shop.example.com>"
        assert ids.check(forged).problem == "bad signature"


def test_signatures_are_the_documented_hmac_truncations() -> None:
    """Return paths and Message-IDs already in flight keep verifying across releases: each
    signature is the first base32 characters of HMAC-SHA256 over its context and the id."""
    key = Secret("k" * 32)
    message_id = "b" * 26 + "-42"

    def documented(context: bytes, chars: int) -> str:
        digest = hmac.new(b"k" * 32, context + message_id.encode(), hashlib.sha256).digest()
        return base64.b32encode(digest).decode()[:chars].lower()

    assert Verp(key).return_path(message_id, "b.example") == (
        f"bounce+{message_id}.{documented(b'', 10)}@b.example"
    )
    assert Verp(key, prefix="unsubscribe+").return_path(message_id, "b.example") == (
        f"unsubscribe+{message_id}.{documented(b'unsubscribe+', 10)}@b.example"
    )
    signature = documented(b"message-id\x00", 16)
    assert MessageIds(key).header_value(message_id, "s.example") == (
        f"{message_id}.{signature}@s.example"
    )


@given(st.binary(min_size=1, max_size=40), st.integers(1, 32))
def test_the_fast_base32_is_base32(data: bytes, half: int) -> None:
    chars = min(2 * half, len(data) * 8 // 5 // 2 * 2)
    assert base32_prefix(data, chars) == base64.b32encode(data).decode().lower()[:chars]
