"""Sluice's outbound SMTP client (mta.smtp): PIPELINING, reply parsing, TLS, what it refuses.

Against the aiosmtpd fault sink and, where a server must misbehave in ways aiosmtpd
will not, a scripted raw TCP server on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import re
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from core.errors import PermanentDeliveryError, TransientDeliveryError
from loadtests.fault_sink import FaultSink
from mta.pool import HostState, SmtpPool
from mta.routing import Destination
from mta.smtp import (
    Reply,
    SmtpConnection,
    SmtpError,
    SmtpReplyError,
    SmtpTlsUnavailable,
    SmtpUnsupported,
    data_for_wire,
)

MESSAGE = b"From: a@shop.test\r\nTo: b@inbox.test\r\nSubject: hi\r\n\r\nHello\r\n"


async def open_to(
    sink_or_port: FaultSink | int, *, wait: float = 5.0, **kwargs: object
) -> SmtpConnection:
    """A connection to the sink (or port) whose steps each get ``wait`` seconds."""
    port = sink_or_port if isinstance(sink_or_port, int) else sink_or_port.port
    return await SmtpConnection.open(
        "127.0.0.1",
        port,
        ehlo_name="mta.sluice.test",
        wait=wait,
        **kwargs,  # type: ignore[arg-type]
    )


# --- a scripted raw server -----------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Script], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await script(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *ext: str) -> None:
    writer.write(b"220 raw.test ESMTP\r\n")
    assert (await reader.readline()).startswith(b"EHLO ")
    lines = ["raw.test", *ext]
    writer.write(
        b"".join(
            f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
            for i, line in enumerate(lines)
        )
    )


async def read_data(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n.\r\n")


async def take_envelope(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bytes = b""
) -> list[bytes]:
    """Greet with PIPELINING, read MAIL, RCPT and DATA, answer them (all accepted by
    default); the three command lines."""
    await greet(reader, writer, "PIPELINING")
    commands = [await reader.readline() for _ in range(3)]
    writer.write(replies or b"250 ok\r\n250 ok\r\n354 go\r\n")
    return commands


# --- PIPELINING ----------------------------------------------------------------------


async def test_pipelined_commands_go_in_one_write_and_replies_in_one_segment(
    raw_server: Callable[[Script], Awaitable[int]],
) -> None:
    """The server answers nothing until it holds MAIL, RCPT and DATA: only a client that
    pipelines gets through; then all three replies arrive in one segment."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, "PIPELINING", "8BITMIME")
        for _ in range(2):
            commands = [await reader.readline() for _ in range(3)]
            seen.extend(commands)
            writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n")
            seen.append(await read_data(reader))
            writer.write(b"250 2.0.0 queued as X\r\n")

    conn = await open_to(await raw_server(script))
    assert conn.pipelining
    for _ in range(2):
        reply = await conn.transaction("a@shop.test", "b@inbox.test", MESSAGE)
        assert (reply.code, reply.text) == (250, "2.0.0 queued as X")
    await conn.quit()
    assert seen[0] == b"MAIL FROM:<a@shop.test>\r\n"
    assert seen[1] == b"RCPT TO:<b@inbox.test>\r\n"
    assert seen[2] == b"DATA\r\n"
    assert seen[3] == MESSAGE + b".\r\n"


async def test_without_pipelining_each_command_waits_for_its_reply(
    raw_server: Callable[[Script], Awaitable[int]],
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, "8BITMIME")  # no PIPELINING
        for reply in (b"250 ok", b"250 ok", b"354 go"):
            await reader.readline()
            # Nothing more may be waiting: the client must not send before this reply.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.05)
            writer.write(reply + b"\r\n")
        await read_data(reader)
        writer.write(b"250 done\r\n")

    conn = await open_to(await raw_server(script))
    assert not conn.pipelining
    assert (await conn.transaction("a@shop.test", "b@inbox.test", MESSAGE)).code == 250
    conn.abort()


async def test_refused_recipient_then_the_connection_carries_the_next_message(
    fault_sink: FaultSink,
) -> None:
    fault_sink.set_rule("gone@inbox.test", rcpt_reply="550 5.1.1 no such user")
    conn = await open_to(fault_sink)
    with pytest.raises(SmtpReplyError) as refused:
        await conn.transaction("a@shop.test", "gone@inbox.test", MESSAGE)
    assert (refused.value.stage, refused.value.reply.code) == ("rcpt", 550)
    assert await conn.reset()
    assert (await conn.transaction("a@shop.test", "b@inbox.test", MESSAGE)).code == 250
    await conn.quit()
    [got] = fault_sink.accepted()
    assert got.rcpt_tos == ("b@inbox.test",)
    assert fault_sink.connections_total == 1


async def test_data_accepted_after_a_refused_recipient_is_ended_empty(
    raw_server: Callable[[Script], Awaitable[int]],
) -> None:
    """RFC 2920 3.1: a server that answers 354 with no valid recipient gets a lone dot."""
    after: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await take_envelope(reader, writer, b"250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n")
        after.append(await reader.readline())
        writer.write(b"554 no valid recipients\r\n")
        after.append(await reader.readline())
        writer.write(b"250 reset\r\n")

    conn = await open_to(await raw_server(script))
    with pytest.raises(SmtpReplyError) as refused:
        await conn.transaction("a@shop.test", "b@inbox.test", MESSAGE)
    assert refused.value.stage == "rcpt"
    assert await conn.reset()
    conn.abort()
    assert after == [b".\r\n", b"RSET\r\n"], "no message content after a refused recipient"


# --- replies -------------------------------------------------------------------------


async def test_multiline_and_malformed_replies(
    raw_server: Callable[[Script], Awaitable[int]],
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await reader.readline()
        writer.write(b"550-5.7.1 first line\r\n550-second line\r\n550 5.7.1 last\r\n")
        await reader.readline()
        writer.write(b"hello there\r\n")

    conn = await open_to(await raw_server(script))
    reply = await conn.command("MAIL FROM:<a@shop.test>")
    assert (reply.code, reply.text) == (550, "5.7.1 first line\nsecond line\n5.7.1 last")
    with pytest.raises(SmtpError, match="malformed reply"):
        await conn.command("NOOP")
    conn.abort()


async def test_oversized_reply_line_and_silence_are_errors_not_hangs(
    raw_server: Callable[[Script], Awaitable[int]],
) -> None:
    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 " + b"x" * 100_000 + b"\r\n")
        await writer.drain()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    with pytest.raises(SmtpError, match="reply line over"):
        await open_to(await raw_server(huge))
    with pytest.raises(SmtpError, match="did not answer"):
        await SmtpConnection.open(
            "127.0.0.1", await raw_server(silent), ehlo_name="mta.sluice.test", wait=0.3
        )


async def test_a_server_that_stops_reading_or_answering_mid_message_times_out_committed(
    raw_server: Callable[[Script], Awaitable[int]],
) -> None:
    """The message and its final reply are one step under one timeout: a server that stops
    reading the content, or reads it and never answers, ends the step with an error that
    says which, marked committed (the message may have arrived)."""
    stop = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await take_envelope(reader, writer)
        await stop.wait()  # reads no content

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await take_envelope(reader, writer)
        await read_data(reader)
        await stop.wait()  # never answers

    big = MESSAGE + (b"x" * 76 + b"\r\n") * 200_000
    try:
        # the timeout from the start: the connection's one timer is set when it opens
        conn = await open_to(await raw_server(deaf), wait=0.5)
        with pytest.raises(SmtpError, match="stopped reading") as deaf_error:
            await conn.transaction("a@shop.test", "b@inbox.test", big)
        assert deaf_error.value.committed
        conn.abort()
        conn = await open_to(await raw_server(mute), wait=0.5)
        with pytest.raises(SmtpError, match="did not answer") as mute_error:
            await conn.transaction("a@shop.test", "b@inbox.test", MESSAGE)
        assert mute_error.value.committed
        conn.abort()
    finally:
        stop.set()


async def test_greeting_refusal_and_helo_fallback(
    raw_server: Callable[[Script], Awaitable[int]],
) -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.7.0 too many connections, try later\r\n")
        await writer.drain()

    async def old(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 old.test SMTP\r\n")
        await reader.readline()
        writer.write(b"502 what is EHLO\r\n")
        assert (await reader.readline()) == b"HELO mta.sluice.test\r\n"
        writer.write(b"250 old.test\r\n")
        await reader.readline()

    with pytest.raises(SmtpReplyError) as refused:
        await open_to(await raw_server(busy))
    assert (refused.value.stage, refused.value.reply.code) == ("greeting", 421)
    conn = await open_to(await raw_server(old))
    assert conn.extensions == {} and not conn.pipelining
    conn.abort()


# --- what is refused before a byte is written ------------------------------------------


async def test_size_8bit_and_non_ascii_addresses_follow_the_extensions(
    fault_sink: FaultSink,
) -> None:
    fault_sink.set_extensions(size=1000, eightbitmime=False, smtputf8=False)
    conn = await open_to(fault_sink)
    with pytest.raises(SmtpUnsupported, match=r"over .* limit of 1000"):
        await conn.transaction("a@shop.test", "b@inbox.test", MESSAGE + b"x" * 1000)
    with pytest.raises(SmtpUnsupported, match="8BITMIME"):
        await conn.transaction("a@shop.test", "b@inbox.test", "Grüße\r\n".encode())
    with pytest.raises(SmtpUnsupported, match="SMTPUTF8"):
        await conn.transaction("a@shop.test", "jürgen@inbox.test", MESSAGE)
    for hostile in ("b@inbox.test>\r\nRSET", "b@inbox.test\x00", "b c@inbox.test"):
        with pytest.raises(SmtpUnsupported, match="cannot carry"):
            await conn.transaction("a@shop.test", hostile, MESSAGE)
    assert (await conn.transaction("a@shop.test", "b@inbox.test", MESSAGE)).code == 250
    await conn.quit()
    assert [r.rcpt_tos for r in fault_sink.received()] == [("b@inbox.test",)]

    fault_sink.set_extensions(size=None, eightbitmime=True, smtputf8=True)
    conn = await open_to(fault_sink)
    assert (await conn.transaction("a@shop.test", "jürgen@inbox.test", "Grüße\r\n".encode())).ok
    await conn.quit()
    assert fault_sink.received()[-1].data == "Grüße\r\n".encode()


def _reference_wire(message: bytes) -> bytes:
    """The slow, obvious definition data_for_wire must agree with."""
    wire = re.sub(rb"^\.", b"..", re.sub(rb"\r\n|\r|\n", b"\r\n", message), flags=re.MULTILINE)
    return wire + (b"" if wire.endswith(b"\r\n") else b"\r\n") + b".\r\n"


@given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"..", b" "])).map(b"".join))
def test_data_for_wire_agrees_with_the_regex_definition(message: bytes) -> None:
    wire = data_for_wire(message)
    assert wire == _reference_wire(message)
    body = wire[: -len(b".\r\n")]
    assert b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b"")
    assert b"\r\n.\r\n" not in b"\r\n" + body, "no end-of-data inside the message"


def test_data_for_wire_normalises_line_ends_and_stuffs_dots() -> None:
    assert data_for_wire(b"a\nb\rc\r\n.d\n..e") == b"a\r\nb\r\nc\r\n..d\r\n...e\r\n.\r\n"
    assert data_for_wire(b".\r\n") == b"..\r\n.\r\n"
    assert data_for_wire(b"x\r\n.\r\nMAIL FROM:<e@evil.test>\r\n") == (
        b"x\r\n..\r\nMAIL FROM:<e@evil.test>\r\n.\r\n"
    )


# --- TLS ---------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fault-sink.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


async def test_starttls_when_offered_and_required_tls_never_falls_back(tmp_path: Path) -> None:
    with FaultSink(tls_context=self_signed(tmp_path)) as sink:
        conn = await open_to(sink, tls="required")
        assert conn.tls and conn.pipelining
        assert (await conn.transaction("a@shop.test", "b@inbox.test", MESSAGE)).code == 250
        await conn.quit()
        assert len(sink.accepted()) == 1

    with FaultSink() as plain:  # offers no STARTTLS
        with pytest.raises(SmtpTlsUnavailable):
            await open_to(plain, tls="required")
        conn = await open_to(plain)  # opportunistic: plain text is fine
        assert not conn.tls
        conn.abort()


async def test_a_route_that_requires_tls_never_takes_another_routes_plain_connection() -> None:
    """Two routes to one host, one requiring TLS: the opportunistic one's pooled plain-text
    connection (the host offers no STARTTLS) is not reused for the other, which fails."""
    with FaultSink() as plain:
        async with pool_to(plain) as (pool, dest):
            reply = await pool.send(dest, "a.test", "a@shop.test", "b@a.test", MESSAGE)
            assert reply.code == 250  # leaves an idle plain-text connection to the host
            required = dataclasses.replace(dest, require_tls=True)
            with pytest.raises(TransientDeliveryError, match="requires TLS"):
                await pool.send(required, "b.test", "a@shop.test", "b@b.test", MESSAGE)
        assert [m.rcpt_tos for m in plain.accepted()] == [("b@a.test",)]


async def test_opportunistic_tls_falls_back_to_plain_text_when_the_handshake_fails(
    raw_server: Callable[[Script], Awaitable[int]],
) -> None:
    attempts: list[str] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not attempts:
            attempts.append("tls")
            await greet(reader, writer, "STARTTLS")
            await reader.readline()
            writer.write(b"220 go ahead\r\n")
            writer.write(b"this is not a TLS server hello\r\n")  # a broken TLS stack
            await writer.drain()
            await asyncio.sleep(0.2)
            return
        attempts.append("plain")
        await greet(reader, writer, "STARTTLS")
        await reader.readline()  # QUIT

    port = await raw_server(script)
    with pytest.raises(SmtpTlsUnavailable, match="handshake"):
        await open_to(port, tls="required")
    attempts.clear()
    conn = await open_to(port)
    assert attempts == ["tls", "plain"] and not conn.tls
    await conn.quit()


# --- the pool ------------------------------------------------------------------------


@asynccontextmanager
async def pool_to(
    sink: FaultSink, *, per_domain: int = 20, messages_per_connection: int = 100
) -> AsyncIterator[tuple[SmtpPool, Destination]]:
    """A pool of two connections at most to the sink (as a relay), closed after."""
    pool = SmtpPool(
        ehlo_name="mta.sluice.test",
        timeout=5,
        per_host=2,
        per_domain=per_domain,
        messages_per_connection=messages_per_connection,
    )
    try:
        yield pool, Destination("127.0.0.1", "127.0.0.1", sink.port, False, "relay")
    finally:
        await pool.aclose()


async def test_pool_reconnects_at_once_when_the_server_dropped_an_idle_connection() -> None:
    with FaultSink(idle_timeout=0.3) as sink:
        async with pool_to(sink) as (pool, dest):
            for _ in range(2):
                reply = await pool.send(dest, "inbox.test", "a@shop.test", "b@inbox.test", MESSAGE)
                assert reply.code == 250
                await asyncio.sleep(0.8)  # the sink closes the idle connection
        assert len(sink.accepted()) == 2
        assert sink.connections_total == 2


async def test_deliveries_queued_for_a_host_each_get_a_connection_even_when_some_give_up() -> None:
    """Sixty deliveries for a host allowed two connections: each connection that comes back
    goes to one waiting delivery; a delivery cancelled while waiting (or just after being
    woken) passes its turn on, so none is left waiting with a connection idle. One cancelled
    after its envelope was pipelined on a connection costs that connection (a DATA the
    server accepted cannot be taken back but by closing): at most one more each."""
    with FaultSink() as sink:
        sink.set_rule("*", latency=0.01)
        async with pool_to(sink, per_domain=100, messages_per_connection=1000) as (pool, dest):

            async def send(i: int) -> int:
                rcpt = f"r{i}@inbox.test"
                return (await pool.send(dest, "inbox.test", "a@shop.test", rcpt, MESSAGE)).code

            tasks = [asyncio.create_task(send(i)) for i in range(60)]
            await asyncio.sleep(0.05)
            given_up = tasks[10:60:5]
            for task in given_up:
                task.cancel()
            async with asyncio.timeout(20):
                done = await asyncio.gather(*tasks, return_exceptions=True)
        delivered = [code for code in done if code == 250]
        assert all(code == 250 or isinstance(code, asyncio.CancelledError) for code in done)
        assert len(delivered) == len(sink.accepted()) >= 60 - len(given_up)
        assert sink.max_concurrent <= 2 and 2 <= sink.connections_total <= 2 + len(given_up)


async def test_the_step_a_reply_answered_decides_the_verdict(fault_sink: FaultSink) -> None:
    """The same "550 User unknown" is a dead address at RCPT TO and a filter's word after the
    message; "Host not found" about our HELO name and "User unknown" about our sender say
    nothing about the recipient."""

    async def verdict(sink: FaultSink, rcpt: str) -> tuple[str, bool]:
        async with pool_to(sink) as (pool, dest):
            with pytest.raises(PermanentDeliveryError) as refused:
                await pool.send(dest, "inbox.test", "a@shop.test", rcpt, MESSAGE)
        return refused.value.bounce_class, refused.value.hard

    fault_sink.set_rule("gone@inbox.test", rcpt_reply="550 User unknown")
    fault_sink.script("filtered@inbox.test", ["550 User unknown"])  # after the final dot
    assert await verdict(fault_sink, "gone@inbox.test") == ("bad-mailbox", True)
    assert await verdict(fault_sink, "filtered@inbox.test") == ("bad-mailbox", False)
    assert len(fault_sink.received()) == 1  # the filtered one: the other never got past RCPT

    fault_sink.set_rule("*", mail_reply="550 5.1.1 <a@shop.test>: User unknown")
    assert await verdict(fault_sink, "someone@inbox.test") == ("policy", False)
    fault_sink.set_rule("*", helo_reply="550 5.1.2 <mta.sluice.test>: Host not found")
    assert await verdict(fault_sink, "someone@inbox.test") == ("policy", False)
    assert fault_sink.counts["mail_rejected"] == 1 and fault_sink.counts["helo_rejected"] == 2


# --- the next envelope after the content ---------------------------------------------


def one_connection(port: int, messages_per_connection: int) -> tuple[SmtpPool, Destination]:
    """A pool of one connection to ``port`` (as a relay) and that destination."""
    pool = SmtpPool(
        ehlo_name="mta.sluice.test",
        timeout=5,
        per_host=1,
        per_domain=100,
        messages_per_connection=messages_per_connection,
    )
    return pool, Destination("127.0.0.1", "127.0.0.1", port, False, "relay")


async def through_one_connection(
    port: int, sends: list[tuple[str, bytes]], *, messages_per_connection: int = 100
) -> list[Reply | BaseException]:
    """Each (recipient, message) sent at once through a pool of one connection to ``port``
    (all but the first wait for it): each one's reply or error."""
    pool, dest = one_connection(port, messages_per_connection)
    try:
        return await asyncio.gather(
            *(pool.send(dest, "inbox.test", "a@shop.test", rcpt, m) for rcpt, m in sends),
            return_exceptions=True,
        )
    finally:
        await pool.aclose()


async def test_the_next_envelope_goes_out_with_the_content_before_it(
    raw_server: Callable[[Script], Awaitable[int]],
) -> None:
    """Three deliveries waiting for one connection: after the first message's content, the
    server already holds the second one's MAIL, RCPT and DATA before it has answered the
    first (RFC 2920: content may open a group), and so on; one connection, each message
    answered on its own."""
    chunks: list[list[bytes]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands = await take_envelope(reader, writer)
        for n in range(3):
            body = await read_data(reader)
            # what arrived with the content, before any answer to it
            early = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2 if n < 2 else 0.05):
                    early = [await reader.readline() for _ in range(3)]
            chunks.append([*commands, body])
            commands = early
            writer.write(f"250 queued {n}\r\n".encode())
            if early:
                writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await reader.readline()  # QUIT

    sends = [(f"r{i}@inbox.test", MESSAGE) for i in range(3)]
    replies = await through_one_connection(await raw_server(script), sends)
    assert [getattr(r, "text", r) for r in replies] == ["queued 0", "queued 1", "queued 2"]
    assert [c[1] for c in chunks] == [f"RCPT TO:<r{i}@inbox.test>\r\n".encode() for i in range(3)]
    assert all(c[3] == MESSAGE + b".\r\n" for c in chunks)


async def test_a_message_refused_after_its_content_does_not_hold_up_the_next(
    fault_sink: FaultSink,
) -> None:
    """The first message is refused at its final dot; the second's envelope already follows
    it on the connection: no RSET in between, and the second is delivered on it."""
    fault_sink.script("refused@inbox.test", ["550 5.7.1 content refused"])
    sends = [("refused@inbox.test", MESSAGE), ("fine@inbox.test", MESSAGE)]
    refused, fine = await through_one_connection(fault_sink.port, sends)
    assert isinstance(refused, PermanentDeliveryError)
    assert isinstance(fine, Reply) and fine.code == 250
    assert [m.rcpt_tos for m in fault_sink.accepted()] == [("fine@inbox.test",)]
    assert fault_sink.connections_total == 1


@pytest.mark.parametrize("outcome", ["drop", "421 4.3.2 closing"])
async def test_a_connection_lost_after_a_content_sends_the_next_message_on_a_new_one(
    fault_sink: FaultSink, outcome: str
) -> None:
    """The connection ends after the first message's content (dropped unanswered, or 421):
    the second's envelope went out on it but can have done nothing without its content; it
    is sent once, on a new connection."""
    fault_sink.script("lost@inbox.test", [outcome])
    sends = [("lost@inbox.test", MESSAGE), ("next@inbox.test", MESSAGE)]
    lost, sent = await through_one_connection(fault_sink.port, sends)
    assert isinstance(lost, TransientDeliveryError)
    assert isinstance(sent, Reply) and sent.code == 250
    assert [m.rcpt_tos for m in fault_sink.accepted()] == [("next@inbox.test",)]
    assert fault_sink.connections_total == 2


async def test_a_waiting_message_the_server_cannot_take_is_not_chained(
    fault_sink: FaultSink,
) -> None:
    """The longest waiter's message is over the server's SIZE: its envelope is not written
    after the content before it; it waits its turn and is refused without a byte sent, and
    the message after it still goes out."""
    fault_sink.set_extensions(size=len(MESSAGE) * 10)
    big = MESSAGE + b"x" * (len(MESSAGE) * 10) + b"\r\n"
    sends = [("first@inbox.test", MESSAGE), ("big@inbox.test", big), ("third@inbox.test", MESSAGE)]
    results = await through_one_connection(fault_sink.port, sends)
    assert isinstance(results[1], PermanentDeliveryError) and "5.3.4" in str(results[1])
    assert [m.rcpt_tos for m in fault_sink.accepted()] == [
        ("first@inbox.test",),
        ("third@inbox.test",),
    ]
    assert fault_sink.connections_total == 1


async def test_a_waiting_message_whose_envelope_cannot_be_written_strands_nobody(
    fault_sink: FaultSink,
) -> None:
    """An address no encoding carries (a lone surrogate) in the longest waiter: the message
    before it goes out whole, and the waiter is refused on its own turn, not left waiting."""
    fault_sink.set_extensions(smtputf8=True)
    sends = [("ok@inbox.test", MESSAGE), ("b\udc80@inbox.test", MESSAGE)]
    async with asyncio.timeout(10):
        ok, refused = await through_one_connection(fault_sink.port, sends)
    assert isinstance(ok, Reply) and ok.code == 250
    assert isinstance(refused, PermanentDeliveryError) and "5.1.3" in str(refused)


async def test_a_delivery_cancelled_while_its_connection_says_goodbye_passes_its_turn_on(
    raw_server: Callable[[Script], Awaitable[int]],
) -> None:
    """One connection a message: the first delivery's connection closes after it, and the
    server never answers its QUIT. The first delivery is cancelled right then; the waiting
    one still gets a connection (the goodbye's wake is not lost with the cancellation)."""
    quitting = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await take_envelope(reader, writer)
        await read_data(reader)
        writer.write(b"250 queued\r\n")
        await reader.readline()  # QUIT
        if quitting.is_set():  # the second connection says goodbye
            writer.write(b"221 bye\r\n")
            return
        quitting.set()
        await asyncio.sleep(30)  # the first never answers it

    pool, dest = one_connection(await raw_server(script), messages_per_connection=1)
    try:
        first = asyncio.create_task(
            pool.send(dest, "inbox.test", "a@shop.test", "r0@inbox.test", MESSAGE)
        )
        second = asyncio.create_task(
            pool.send(dest, "inbox.test", "a@shop.test", "r1@inbox.test", MESSAGE)
        )
        await asyncio.wait_for(quitting.wait(), 5)
        first.cancel()
        async with asyncio.timeout(4):
            assert (await second).text == "queued"
    finally:
        await pool.aclose()


async def test_a_connection_carries_no_more_than_its_messages_when_chained(
    fault_sink: FaultSink,
) -> None:
    sends = [(f"r{i}@inbox.test", MESSAGE) for i in range(7)]
    replies = await through_one_connection(fault_sink.port, sends, messages_per_connection=3)
    assert all(isinstance(r, Reply) and r.code == 250 for r in replies)
    by_connection = Counter(m.connection_id for m in fault_sink.accepted())
    assert sorted(by_connection.values()) == [1, 3, 3]


async def test_a_wake_is_passed_on_by_a_waiter_cancelled_before_it_could_use_it() -> None:
    host = HostState(limit=1)
    first = asyncio.create_task(host.wait())
    second = asyncio.create_task(host.wait())
    await asyncio.sleep(0)  # both wait
    host.wake()  # one connection came back: for the first
    first.cancel()  # ... which is cancelled before it runs
    await asyncio.wait({first, second}, timeout=1)
    assert first.cancelled()
    assert second.done() and not second.cancelled(), "the second got the first's turn"


async def test_each_sending_ip_says_its_own_ehlo_name(
    raw_server: Callable[[Script], Awaitable[int]],
) -> None:
    names: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw.test ESMTP\r\n")
        names.append(await reader.readline())
        writer.write(b"250 raw.test\r\n")
        await reader.readline()  # QUIT

    port = await raw_server(script)
    pool = SmtpPool(
        ehlo_name="mta.sluice.test",
        timeout=5,
        per_host=2,
        per_domain=2,
        messages_per_connection=10,
        ehlo_by_ip={"127.0.0.2": "mta2.example.com"},
    )
    dest = Destination("127.0.0.1", "127.0.0.1", port, False, "relay")
    for source in ("127.0.0.2", "127.0.0.3"):
        host = pool.host_state(dest, source)
        conn = await pool._connect(host, dest, source)
        await conn.smtp.quit()
    assert names == [b"EHLO mta2.example.com\r\n", b"EHLO mta.sluice.test\r\n"]


def test_sending_ips_with_pools_and_ehlo_names() -> None:
    from core.settings import SendingIp, parse_ips

    assert parse_ips("192.0.2.10, 192.0.2.11@warm=MTA2.example.com,2001:db8::5@warm") == (
        SendingIp("192.0.2.10", "default", None),
        SendingIp("192.0.2.11", "warm", "mta2.example.com"),
        SendingIp("2001:db8::5", "warm", None),
    )
    for bad in ("300.1.1.1", "192.0.2.1@bad pool", "192.0.2.1=not a name"):
        with pytest.raises(ValueError):
            parse_ips(bad)
