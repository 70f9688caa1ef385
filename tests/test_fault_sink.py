"""The fault sink (``loadtests/fault_sink.py``) does what its rules say, seen from real clients."""

from __future__ import annotations

import contextlib
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections import Counter

import aiosmtplib
import pytest

from loadtests.fault_sink import STALL_POINTS, FaultSink, Rule
from loadtests.harness import PROJECT_ROOT, free_port

MSG = b"From: a@sender.test\r\nTo: u@x.test\r\nSubject: hi\r\n\r\nhello\r\n"


def client(sink: FaultSink, timeout: float = 5.0, host: str | None = None) -> smtplib.SMTP:
    return smtplib.SMTP(host or sink.host, sink.port, local_hostname="client.test", timeout=timeout)


def send(sink: FaultSink, rcpt: str = "u@x.test", timeout: float = 5.0) -> dict[str, object]:
    with client(sink, timeout) as smtp:
        return dict(smtp.sendmail("a@sender.test", [rcpt], MSG))


def test_accepts_and_records_everything_about_a_message(fault_sink: FaultSink) -> None:
    assert send(fault_sink) == {}
    [got] = fault_sink.wait_for(1)
    assert (got.mail_from, got.rcpt_tos, got.data) == ("a@sender.test", ("u@x.test",), MSG)
    assert (got.reply, got.outcome, got.connection_id) == ("250 2.0.0 OK", "accepted", 1)
    assert got.local == fault_sink.relay and got.peer.startswith("127.0.0.1:")
    assert got.message["Subject"] == "hi"
    assert fault_sink.counts == {"accepted": 1} and fault_sink.accepted() == [got]


def test_4xx_5xx_and_421_replies_per_domain(fault_sink: FaultSink) -> None:
    fault_sink.set_rule("temp.test", p_4xx=1.0)
    fault_sink.set_rule("perm.test", p_5xx=1.0, reply_5xx="554 5.7.1 Go away")
    fault_sink.set_rule("busy.test", p_421=1.0)
    with client(fault_sink) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as temp:
            smtp.sendmail("a@sender.test", ["u@temp.test"], MSG)
        with pytest.raises(smtplib.SMTPDataError) as perm:  # same connection: still open
            smtp.sendmail("a@sender.test", ["u@perm.test"], MSG)
        assert smtp.sendmail("a@sender.test", ["u@x.test"], MSG) == {}  # "*" is untouched
        with pytest.raises(smtplib.SMTPDataError) as busy:
            smtp.sendmail("a@sender.test", ["u@busy.test"], MSG)
        assert smtp.sock is None  # smtplib closes on a 421
    assert (temp.value.smtp_code, temp.value.smtp_error) == (451, b"4.3.0 Temporary failure")
    assert (perm.value.smtp_code, perm.value.smtp_error) == (554, b"5.7.1 Go away")
    assert busy.value.smtp_code == 421
    fault_sink.wait_for(lambda s: s.open_connections == 0)  # the sink closed its end
    assert fault_sink.counts == {"4xx": 1, "5xx": 1, "accepted": 1, "421": 1}
    assert [m.outcome for m in fault_sink.received()] == ["4xx", "5xx", "accepted", "421"]


def test_drop_after_the_final_dot_is_recorded_but_never_answered(fault_sink: FaultSink) -> None:
    fault_sink.set_rule("x.test", p_drop=1.0)
    with pytest.raises(smtplib.SMTPServerDisconnected, match=r"unexpectedly closed$"):
        send(fault_sink)
    [got] = fault_sink.wait_for(1)
    assert (got.outcome, got.reply, got.data) == ("drop", None, MSG)
    fault_sink.wait_for(lambda s: s.open_connections == 0)


async def test_aiosmtplib_sees_a_drop_as_a_disconnect(fault_sink: FaultSink) -> None:
    fault_sink.set_rule("x.test", p_drop=1.0)
    smtp = aiosmtplib.SMTP(hostname=fault_sink.host, port=fault_sink.port, timeout=5)
    await smtp.connect()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await smtp.sendmail("a@sender.test", ["u@x.test"], MSG)
    smtp.close()
    assert [m.outcome for m in await fault_sink.async_wait_for(1)] == ["drop"]


def test_scripted_sequences_per_address_come_before_the_rules(fault_sink: FaultSink) -> None:
    fault_sink.script("User1@x.test", ["451 4.3.0 later", "250 OK", "drop", "421 4.7.0 bye"])
    fault_sink.set_rule("x.test", p_5xx=1.0)
    with client(fault_sink) as smtp:
        with pytest.raises(smtplib.SMTPDataError, match="later"):
            smtp.sendmail("a@sender.test", ["user1@x.test"], MSG)
        with pytest.raises(smtplib.SMTPDataError) as other:  # other addresses follow the rule
            smtp.sendmail("a@sender.test", ["user2@x.test"], MSG)
        assert other.value.smtp_code == 550
        assert smtp.sendmail("a@sender.test", ["user1@x.test"], MSG) == {}
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.sendmail("a@sender.test", ["user1@x.test"], MSG)
    with pytest.raises(smtplib.SMTPDataError) as bye:
        send(fault_sink, "user1@x.test")
    assert bye.value.smtp_code == 421
    with pytest.raises(smtplib.SMTPDataError) as used_up:  # script used up: the rule again
        send(fault_sink, "user1@x.test")
    assert used_up.value.smtp_code == 550
    outcomes = [m.outcome for m in fault_sink.received()]
    assert outcomes == ["4xx", "5xx", "accepted", "drop", "421", "5xx"]
    with pytest.raises(ValueError):
        fault_sink.script("u@x.test", ["ok"])


def test_rcpt_rejection_by_domain_and_by_address(fault_sink: FaultSink) -> None:
    fault_sink.set_rule("gone.test", rcpt_reply="550 5.1.1 user unknown")
    fault_sink.set_rule("vip@gone.test")  # an address rule beats its domain's
    with client(fault_sink) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail("a@sender.test", ["u@gone.test"], MSG)
        assert refused.value.recipients == {"u@gone.test": (550, b"5.1.1 user unknown")}
        partly = smtp.sendmail("a@sender.test", ["u@gone.test", "vip@gone.test"], MSG)
        assert partly == {"u@gone.test": (550, b"5.1.1 user unknown")}
    [got] = fault_sink.wait_for(1)
    assert got.rcpt_tos == ("vip@gone.test",)
    assert fault_sink.counts == {"rcpt_rejected": 2, "accepted": 1}


def test_helo_and_mail_refusals(fault_sink: FaultSink) -> None:
    fault_sink.set_rule("*", mail_reply="553 5.1.8 <a@sender.test>: Sender address rejected")
    with pytest.raises(smtplib.SMTPSenderRefused) as sender:
        send(fault_sink)
    assert sender.value.smtp_code == 553
    fault_sink.set_rule("*", helo_reply="550 5.7.1 <client.test>: Helo command rejected")
    with client(fault_sink) as smtp:
        assert smtp.ehlo()[0] == 550
        assert smtp.helo()[0] == 550
    fault_sink.set_rule("*")
    assert send(fault_sink) == {}
    assert fault_sink.counts == {"mail_rejected": 1, "helo_rejected": 2, "accepted": 1}


def test_latency_delays_the_data_reply(fault_sink: FaultSink) -> None:
    fault_sink.set_rule("slow.test", latency=0.3)
    with client(fault_sink) as smtp:
        started = time.monotonic()
        smtp.sendmail("a@sender.test", ["u@slow.test"], MSG)
        slow = time.monotonic() - started
        started = time.monotonic()
        smtp.sendmail("a@sender.test", ["u@x.test"], MSG)
        fast = time.monotonic() - started
    assert slow >= 0.3 > fast
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        send(fault_sink, "u@slow.test", timeout=0.1)  # gave up: did it go through?
    assert [m.outcome for m in fault_sink.wait_for(3)] == ["accepted"] * 3  # it did


def test_start_fails_on_a_port_in_use(fault_sink: FaultSink) -> None:
    with pytest.raises(OSError):
        FaultSink(port=fault_sink.port).start()


@pytest.mark.parametrize("point", STALL_POINTS)
def test_stall_makes_the_client_time_out(fault_sink: FaultSink, point: str) -> None:
    target = "*" if point in ("connect", "ehlo", "mail") else "x.test"
    fault_sink.set_rule(target, stall=point)
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        send(fault_sink, timeout=0.3)
    if point == "dot":
        assert [(m.outcome, m.reply) for m in fault_sink.wait_for(1)] == [("stall", None)]
    else:
        assert fault_sink.counts == {f"stall_{point}": 1} and not fault_sink.received()
    fault_sink.wait_for(lambda s: s.open_connections == 0)  # the client's close ended it
    fault_sink.set_rule(target)  # changed while running: no stall any more
    assert send(fault_sink, timeout=2) == {}


def test_stop_closes_stalled_connections() -> None:
    sink = FaultSink(default=Rule(stall="connect")).start()
    with socket.create_connection(sink.address, timeout=5) as sock:
        sink.wait_for(lambda s: s.open_connections == 1)
        started = time.monotonic()
        sink.stop()
        assert time.monotonic() - started < 2
        assert sock.recv(100) == b""  # closed, without a greeting
    with pytest.raises(ConnectionRefusedError), socket.create_connection(sink.address, 1):
        pass


def run_mix(sink: FaultSink, count: int) -> list[str]:
    """``count`` messages from one client, reconnecting when the sink hangs up."""
    smtp: smtplib.SMTP | None = None
    try:
        for i in range(count):
            smtp = smtp or client(sink)
            try:
                smtp.sendmail("a@sender.test", [f"user{i}@x.test"], MSG)
            except smtplib.SMTPServerDisconnected:
                smtp = None
            except smtplib.SMTPDataError as exc:
                if exc.smtp_code == 421:
                    smtp = None
    finally:
        if smtp is not None:
            smtp.close()
    return [m.outcome for m in sink.wait_for(count)]


def test_rates_are_honoured_and_repeatable_with_a_seed() -> None:
    mix = Rule(p_4xx=0.2, p_5xx=0.1, p_drop=0.05, p_421=0.05)
    with FaultSink(default=mix, seed=7) as sink:
        outcomes = run_mix(sink, 500)
    counts = Counter(outcomes)
    for outcome, chance in [("4xx", 0.2), ("5xx", 0.1), ("drop", 0.05), ("421", 0.05)]:
        spread = 4 * (500 * chance * (1 - chance)) ** 0.5
        assert abs(counts[outcome] - 500 * chance) < spread, counts
    assert counts["accepted"] == 500 - sum(counts[k] for k in ("4xx", "5xx", "drop", "421"))
    with FaultSink(default=mix, seed=7) as again:
        assert run_mix(again, 100) == outcomes[:100]


def test_connection_counters_overall_and_per_listening_address() -> None:
    with FaultSink(extra_hosts=["127.0.0.2"]) as sink, contextlib.ExitStack() as stack:
        for host in ["127.0.0.1"] * 2 + ["127.0.0.2"] * 3:
            stack.enter_context(client(sink, host=host)).ehlo()
        assert (sink.open_connections, sink.max_concurrent, sink.connections_total) == (5, 5, 5)
        stack.close()
        sink.wait_for(lambda s: s.open_connections == 0)
        with client(sink):
            pass
        assert (sink.max_concurrent, sink.connections_total) == (5, 6)
        assert sink.max_concurrent_by_address == {
            f"127.0.0.1:{sink.port}": 2,
            f"127.0.0.2:{sink.port}": 3,
        }
        sink.wait_for(lambda s: s.open_connections == 0)
        sink.reset_stats()
        assert (sink.max_concurrent, sink.connections_total, sink.counts) == (0, 0, {})


def test_over_max_connections_the_greeting_is_421() -> None:
    with FaultSink(max_connections=2) as sink, client(sink), client(sink):
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            client(sink)
        assert refused.value.smtp_code == 421
        assert sink.counts == {"connect_421": 1} and sink.max_concurrent == 3


def test_dot_unstuffing(fault_sink: FaultSink) -> None:
    with client(fault_sink) as smtp:
        smtp.ehlo()
        smtp.mail("a@sender.test")
        smtp.rcpt("u@x.test")
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(b"Subject: dots\r\n\r\n..x\r\n...\r\n.\r\n")  # on the wire, stuffed
        assert smtp.getreply()[0] == 250
        body = b"Subject: dots\r\n\r\n.x\r\n..y\r\n.\r\nend\r\n"
        smtp.sendmail("a@sender.test", ["u@x.test"], body)  # smtplib stuffs it
    raw, round_trip = fault_sink.wait_for(2)
    assert raw.data == b"Subject: dots\r\n\r\n.x\r\n..\r\n"
    assert round_trip.data == body


def test_ehlo_extensions_are_configurable(fault_sink: FaultSink) -> None:
    with client(fault_sink) as smtp:
        smtp.ehlo()
        assert set(smtp.esmtp_features) == {
            "size",
            "8bitmime",
            "smtputf8",
            "pipelining",
            "enhancedstatuscodes",
        }
    fault_sink.set_extensions(
        pipelining=False, smtputf8=False, eightbitmime=False, starttls=True, extra=("CHUNKING",)
    )
    with client(fault_sink) as smtp:
        smtp.ehlo()
        assert set(smtp.esmtp_features) == {"size", "enhancedstatuscodes", "starttls", "chunking"}
        assert smtp.docmd("MAIL", "FROM:<a@sender.test> SMTPUTF8")[0] == 501
        assert smtp.mail("a@sender.test", ["BODY=8BITMIME"])[0] == 555
        with pytest.raises(smtplib.SMTPResponseException) as no_tls:  # advertised, not there
            smtp.starttls()
        assert no_tls.value.smtp_code == 454


def test_wait_for_times_out_and_takes_predicates(fault_sink: FaultSink) -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match="timed out"):
        fault_sink.wait_for(1, timeout=0.2)
    assert time.monotonic() - started < 1
    send(fault_sink)
    assert len(fault_sink.wait_for(lambda s: s.counts.get("accepted") == 1)) == 1


def test_rules_are_validated() -> None:
    with pytest.raises(ValueError):
        Rule(p_4xx=0.7, p_5xx=0.5)
    with pytest.raises(ValueError):
        Rule(stall="later")
    assert Rule(p_drop=0.5, p_4xx=0.5).draw(0.4) == "drop"
    assert Rule(p_drop=0.5, p_4xx=0.5).draw(0.6).startswith("451")


def test_cli_runs_until_interrupted_and_prints_counters() -> None:
    port = free_port()
    command = [sys.executable, "-m", "loadtests.fault_sink", "--listen", f"127.0.0.1:{port}"]
    command += ["--p-5xx", "1", "--seed", "1", "--rule", "ok.test:p_5xx=0,latency=0.01"]
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert process.stdout is not None
        assert "listening on" in process.stdout.readline()
        sink = FaultSink("127.0.0.1", port)  # not started: only for the helpers' host and port
        with pytest.raises(smtplib.SMTPDataError):
            send(sink)
        assert send(sink, "u@ok.test") == {}
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=10)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "messages=2 5xx=1 accepted=1 | connections=2" in output
