"""A scriptable, fault-injecting SMTP sink: the far end of the load tests, reused by the tests.

``FaultSink`` runs aiosmtpd on an event loop of its own in a background thread
(``start()``/``stop()`` or ``with FaultSink() as sink:``; port 0 picks a free
port, see ``.address`` and ``.relay``) and answers every transaction by *rules*
that can be changed while it runs, from any thread.

**Rules.** A ``Rule`` applies to a full recipient address, a domain, or ``"*"``
(the default); the most specific one set wins. ``set_rule(target, **fields)``
replaces one (``set_rule(t, sink.rule_for(t), ...)`` changes some fields of the
rule in force). The first recipient's rule decides for the whole message.

- ``p_drop``, ``p_421``, ``p_4xx``, ``p_5xx`` (summing to at most 1): one draw of
  the sink's ``random.Random(seed)`` per message, at the final dot; the rest is
  accepted with ``reply_ok``. *drop* reads the whole message with its final dot,
  records it, then closes the connection without a reply: the client cannot
  tell whether it was delivered, and a retry is a duplicate. *421* answers
  ``reply_421`` and closes, *4xx*/*5xx* answer ``reply_4xx``/``reply_5xx``.
- ``latency``: seconds to wait before the DATA reply (or the drop).
- ``stall``: stop answering at ``"connect"`` (no greeting), ``"ehlo"``,
  ``"mail"``, ``"rcpt"``, ``"data"`` (no 354) or ``"dot"`` (message recorded,
  no reply). No recipient is known before RCPT, so the first three come from
  the ``"*"`` rule. A stalled connection lasts until the client closes it,
  ``idle_timeout`` or ``stop()``.
- ``rcpt_reply``: refuse RCPT TO with this reply, e.g. ``"550 5.1.1 User unknown"``.
- ``helo_reply``, ``mail_reply``: refuse EHLO and HELO, or MAIL FROM, with this reply (from
  the ``"*"`` rule, like the stalls before RCPT).

Any reply starting with 421 closes the connection once sent (RFC 5321 3.8).
``script(address, [...])`` queues the outcomes of the next transactions to one
address, one per attempt, ahead of the rules: an SMTP reply, ``"drop"`` or
``"stall"`` (with several recipients, the first one with a script left
decides). Scripts draw no random numbers, and one client sending serially to
a sink with a ``seed`` gets the same outcomes on every run. Over
``max_connections`` open connections a new one is greeted with 421 and closed.
``Extensions`` sets what EHLO advertises (SMTPUTF8 and SIZE changes apply to new
connections); STARTTLS advertised without a ``tls_context`` answers 454.

**Observability.** ``received()`` lists every message as its final dot arrives
(before any latency), whatever the answer (``Received``: envelope, bytes after
dot-unstuffing, peer, listening address, connection id, the reply decided for
it, outcome); ``counts`` counts outcomes (``accepted``, ``4xx``, ``5xx``,
``421``, ``drop``, ``stall``) and events (``rcpt_rejected``, ``connect_421``,
``stall_<point>``); ``connections_total``, ``open_connections``,
``max_concurrent`` and ``max_concurrent_by_address`` (per listening
``host:port``; ``extra_hosts`` listen on the same port) count connections,
refused ones included; ``wait_for(count or predicate, timeout)`` blocks until
enough happened, ``reset_stats()`` starts over.

CLI for manual load tests against ``sluice serve`` (runs until Ctrl-C, then
prints the counters)::

    python -m loadtests.fault_sink --listen 127.0.0.1:2525 --p-4xx 0.1 --p-5xx 0.03 \\
        --p-drop 0.02 --latency 0.005 --seed 1 [--rule slow.test:latency=0.5,p_421=0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.message
import email.policy
import random
import signal
import ssl
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import TracebackType
from typing import Any, NoReturn

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

STALL_POINTS = ("connect", "ehlo", "mail", "rcpt", "data", "dot")
DROP, STALL = "drop", "stall"


@dataclass(frozen=True)
class Rule:
    p_4xx: float = 0.0
    p_5xx: float = 0.0
    p_421: float = 0.0
    p_drop: float = 0.0
    latency: float = 0.0
    stall: str | None = None
    rcpt_reply: str | None = None
    helo_reply: str | None = None
    mail_reply: str | None = None
    reply_ok: str = "250 2.0.0 OK"
    reply_4xx: str = "451 4.3.0 Temporary failure"
    reply_5xx: str = "550 5.1.1 No such user"
    reply_421: str = "421 4.7.0 Too many connections, try again later"

    def __post_init__(self) -> None:
        chances = (self.p_4xx, self.p_5xx, self.p_421, self.p_drop)
        if not all(0.0 <= p <= 1.0 for p in chances) or sum(chances) > 1.0 + 1e-9:
            raise ValueError(f"probabilities must be in [0, 1] and sum to at most 1: {self}")
        if self.latency < 0 or self.stall not in (None, *STALL_POINTS):
            raise ValueError(f"bad latency or stall (one of {STALL_POINTS}): {self}")

    def draw(self, x: float) -> str:
        """The outcome for ``x`` drawn uniformly from [0, 1): a reply or ``"drop"``."""
        for chance, outcome in (
            (self.p_drop, DROP),
            (self.p_421, self.reply_421),
            (self.p_4xx, self.reply_4xx),
            (self.p_5xx, self.reply_5xx),
        ):
            if x < chance:
                return outcome
            x -= chance
        return self.reply_ok


@dataclass(frozen=True)
class Extensions:
    """What EHLO advertises. ``starttls=None``: only with a ``tls_context``."""

    pipelining: bool = True
    eightbitmime: bool = True
    smtputf8: bool = True
    enhancedstatuscodes: bool = True
    starttls: bool | None = None
    size: int | None = 2**25
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # as received, after dot-unstuffing (CRLF line ends)
    peer: str  # "host:port" of the client
    local: str  # "host:port" the client connected to
    connection_id: int
    reply: str | None  # None: dropped or stalled
    outcome: str
    at: float = field(default_factory=time.time)

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


def outcome_of(reply: str) -> str:
    if reply in (DROP, STALL):
        return reply
    if reply.startswith("421"):
        return "421"
    return {"2": "accepted", "4": "4xx", "5": "5xx"}.get(reply[:1], "other")


def _hostport(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


async def _hang() -> NoReturn:
    """Wait until cancelled (the connection closes, times out, or the sink stops)."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


class _Connection(SMTP):
    """aiosmtpd's protocol, one per connection, with connection-level faults."""

    def __init__(self, sink: FaultSink, **kwargs: Any) -> None:
        super().__init__(_Handler(sink), **kwargs)
        self.sink = sink
        self.conn_id = 0
        self.peer = self.local = ""
        self.refused = self.is_open = False
        self.raw_transport: asyncio.BaseTransport | None = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.conn_id:  # not again after STARTTLS
            self.sink._opened(self, transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._closed(self)
        super().connection_lost(error)

    async def answer(self, reply: str) -> str:
        """``reply`` for aiosmtpd to send; a 421 is sent here, then the connection closed."""
        if reply.startswith("421"):
            await self.push(reply)
            self.close()
            await _hang()
        return reply

    async def stall(self, point: str) -> NoReturn:
        self.sink._count(f"stall_{point}")
        await _hang()

    async def _handle_client(self) -> None:  # aiosmtpd 1.4 has no hook before the greeting
        try:
            if self.refused:
                self.sink._count("connect_421")
                await self.answer(self.sink.rule_for(None).reply_421)
            if self.sink.rule_for(None).stall == "connect":
                await self.stall("connect")
        except asyncio.CancelledError:
            self.close()
            raise
        await super()._handle_client()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        rcpts = self.envelope.rcpt_tos if self.envelope else []
        if rcpts and self.sink.rule_for(rcpts[0]).stall == "data":
            await self.stall("data")
        await super().smtp_DATA(arg)


class _Handler:
    """aiosmtpd's hooks: the faults that depend on the envelope."""

    def __init__(self, sink: FaultSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: _Connection, session: Session, envelope: Envelope, name: str, _: list[str]
    ) -> list[str]:
        rule = self.sink.rule_for(None)
        if rule.stall == "ehlo":
            await server.stall("ehlo")
        if rule.helo_reply:
            self.sink._count("helo_rejected")
            return [await server.answer(rule.helo_reply)]
        session.host_name = name
        return self.sink._ehlo_lines(server)

    async def handle_HELO(
        self, server: _Connection, session: Session, envelope: Envelope, name: str
    ) -> Any:
        reply = self.sink.rule_for(None).helo_reply
        if reply:
            self.sink._count("helo_rejected")
            return await server.answer(reply)
        return MISSING  # aiosmtpd's own answer

    async def handle_MAIL(
        self,
        server: _Connection,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        rule = self.sink.rule_for(None)
        if rule.stall == "mail":
            await server.stall("mail")
        if rule.mail_reply:
            self.sink._count("mail_rejected")
            return await server.answer(rule.mail_reply)
        if "BODY=8BITMIME" in options and not self.sink.extensions.eightbitmime:
            return "555 5.5.4 BODY=8BITMIME not supported"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: _Connection,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        rule = self.sink.rule_for(address)
        if rule.stall == "rcpt":
            await server.stall("rcpt")
        if rule.rcpt_reply:
            self.sink._count("rcpt_rejected")
            return await server.answer(rule.rcpt_reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _Connection, session: Session, envelope: Envelope) -> str:
        rule, reply = self.sink._decide(envelope.rcpt_tos)
        self.sink._record(server, envelope, reply)  # received, whether or not answered
        if rule.latency and reply != STALL:
            await asyncio.sleep(rule.latency)
        if reply == DROP:
            server.close()
        if reply in (DROP, STALL):
            await _hang()
        return await server.answer(reply)


class FaultSink:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        extra_hosts: Sequence[str] = (),  # also listen on these, same port (e.g. 127.0.0.2)
        default: Rule | None = None,
        rules: Mapping[str, Rule] | None = None,
        seed: int | None = None,
        extensions: Extensions | None = None,
        max_connections: int | None = None,
        idle_timeout: float = 300.0,
        hostname: str = "fault-sink.test",
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.extra_hosts = host, port, tuple(extra_hosts)
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        self.hostname, self.tls_context = hostname, tls_context
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._rules = {"*": default or Rule(), **{k.lower(): v for k, v in (rules or {}).items()}}
        self._scripts: dict[str, deque[str]] = {}
        self._rng = random.Random(seed)
        self.extensions = extensions or Extensions()
        self._transports: set[asyncio.BaseTransport] = set()  # the sink's loop only
        self._ids = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.open_connections = 0
        self._open_by: Counter[str] = Counter()
        self.reset_stats()

    # --- lifecycle -------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def relay(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FaultSink:
        if self._thread is not None:
            raise RuntimeError("the fault sink is already running")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fault-sink")
        self._thread.start()
        ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread, error, self._error = None, self._error, None
            raise error
        return self

    def stop(self) -> None:
        """Close the listeners and every connection (stalled ones too), end the thread."""
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> FaultSink:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:
            self._error = exc
        finally:
            ready.set()
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        servers: list[asyncio.Server] = []
        try:
            for host in (self.host, *self.extra_hosts):
                servers.append(await loop.create_server(self._factory, host, self.port))
                self.port = servers[0].sockets[0].getsockname()[1]
            ready.set()
            await self._stopping.wait()
        finally:
            for server in servers:
                server.close()
            for transport in list(self._transports):
                (transport.abort if isinstance(transport, asyncio.Transport) else transport.close)()
            for _ in range(100):  # connection_lost() runs soon after abort()
                if not self._transports:
                    break
                await asyncio.sleep(0.01)
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for server in servers:
                await server.wait_closed()

    def _factory(self) -> _Connection:
        ext = self.extensions
        starttls = self.tls_context is not None if ext.starttls is None else ext.starttls
        return _Connection(
            self,
            hostname=self.hostname,
            decode_data=False,
            enable_SMTPUTF8=ext.smtputf8,
            data_size_limit=ext.size,
            timeout=self.idle_timeout,
            tls_context=self.tls_context if starttls else None,
        )

    def _ehlo_lines(self, server: _Connection) -> list[str]:
        ext = self.extensions
        starttls = self.tls_context is not None if ext.starttls is None else ext.starttls
        words = [
            *([f"SIZE {server.data_size_limit}"] if server.data_size_limit else []),
            *(["8BITMIME"] if ext.eightbitmime else []),
            *(["SMTPUTF8"] if server.enable_SMTPUTF8 else []),
            *(["PIPELINING"] if ext.pipelining else []),
            *(["ENHANCEDSTATUSCODES"] if ext.enhancedstatuscodes else []),
            *(["STARTTLS"] if starttls and not (server.session and server.session.ssl) else []),
            *ext.extra,
        ]
        lines = [self.hostname, *words]
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    # --- rules -----------------------------------------------------------------

    def set_rule(self, target: str = "*", rule: Rule | None = None, **fields: Any) -> Rule:
        """Make ``rule`` (else ``Rule()``) with ``fields`` the rule of an address, a domain
        or ``"*"``, e.g. ``set_rule("x.test", p_4xx=0.1, latency=0.01)``."""
        with self._lock:
            self._rules[target.lower()] = replaced = replace(rule or Rule(), **fields)
            return replaced

    def clear_rule(self, target: str) -> None:
        with self._lock:
            self._rules.pop(target.lower(), None)
            self._rules.setdefault("*", Rule())

    def rule_for(self, address: str | None) -> Rule:
        with self._lock:
            if address:
                for key in (address.lower(), address.rpartition("@")[2].lower()):
                    if key in self._rules:
                        return self._rules[key]
            return self._rules["*"]

    def script(self, address: str, outcomes: Iterable[str]) -> None:
        """The outcomes of the next transactions to ``address``: replies, "drop", "stall"."""
        steps = deque(outcomes)
        for step in steps:
            if step not in (DROP, STALL) and not (step[:3].isdigit() and step[0] in "2345"):
                raise ValueError(f"not an SMTP reply, {DROP!r} or {STALL!r}: {step!r}")
        with self._lock:
            self._scripts[address.lower()] = steps

    def set_extensions(self, **changes: Any) -> Extensions:
        with self._lock:
            self.extensions = replace(self.extensions, **changes)
            return self.extensions

    def _decide(self, rcpt_tos: Sequence[str]) -> tuple[Rule, str]:
        with self._lock:
            for rcpt in rcpt_tos:
                steps = self._scripts.get(rcpt.lower())
                if steps:
                    return self.rule_for(rcpt), steps.popleft()
            rule = self.rule_for(rcpt_tos[0])
            return rule, STALL if rule.stall == "dot" else rule.draw(self._rng.random())

    # --- observability ---------------------------------------------------------

    def reset_stats(self) -> None:
        with self._changed:
            self._messages: list[Received] = []
            self._counts: Counter[str] = Counter()
            self.connections_total = 0
            self.max_concurrent = self.open_connections
            self._max_by = {k: v for k, v in self._open_by.items() if v}
            self._changed.notify_all()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def accepted(self) -> list[Received]:
        return [m for m in self.received() if m.outcome == "accepted"]

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def max_concurrent_by_address(self) -> dict[str, int]:
        with self._lock:
            return dict(self._max_by)

    def wait_for(
        self, what: int | Callable[[FaultSink], bool], timeout: float = 10.0
    ) -> list[Received]:
        """Block until ``what`` messages were received, or ``what(sink)`` is true."""
        done = what if callable(what) else lambda sink: len(sink._messages) >= what
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fault sink: timed out waiting: {self.summary()}")
                self._changed.wait(min(left, 0.05))
            return list(self._messages)

    async def async_wait_for(
        self, what: int | Callable[[FaultSink], bool], seconds: float = 10.0
    ) -> list[Received]:
        return await asyncio.to_thread(self.wait_for, what, seconds)

    def summary(self) -> str:
        with self._lock:
            counts = "".join(f" {k}={v}" for k, v in sorted(self._counts.items()))
            return (
                f"messages={len(self._messages)}{counts} | connections={self.connections_total}"
                f" open={self.open_connections} max_concurrent={self.max_concurrent}"
                f" by_address={self._max_by}"
            )

    def _count(self, what: str) -> None:
        with self._changed:
            self._counts[what] += 1
            self._changed.notify_all()

    def _opened(self, conn: _Connection, transport: asyncio.BaseTransport) -> None:
        self._transports.add(transport)
        conn.raw_transport = transport
        conn.local = _hostport(transport.get_extra_info("sockname"))
        conn.peer = _hostport(transport.get_extra_info("peername"))
        with self._changed:
            self._ids += 1
            conn.conn_id, conn.is_open = self._ids, True
            self.connections_total += 1
            self.open_connections += 1
            self._open_by[conn.local] += 1
            self.max_concurrent = max(self.max_concurrent, self.open_connections)
            here = self._open_by[conn.local]
            self._max_by[conn.local] = max(self._max_by.get(conn.local, 0), here)
            limit = self.max_connections
            conn.refused = limit is not None and self.open_connections > limit
            self._changed.notify_all()

    def _closed(self, conn: _Connection) -> None:
        if conn.raw_transport is not None:
            self._transports.discard(conn.raw_transport)
        with self._changed:
            if conn.is_open:
                conn.is_open = False
                self.open_connections -= 1
                self._open_by[conn.local] -= 1
            self._changed.notify_all()

    def _record(self, conn: _Connection, envelope: Envelope, reply: str) -> None:
        data, rcpts = bytes(envelope.original_content or b""), tuple(envelope.rcpt_tos)
        answer = None if reply in (DROP, STALL) else reply
        where = (conn.peer, conn.local, conn.conn_id)
        message = Received(envelope.mail_from or "", rcpts, data, *where, answer, outcome_of(reply))
        with self._changed:
            self._messages.append(message)
            self._counts[message.outcome] += 1
            self._changed.notify_all()


def _parse_rule(spec: str) -> tuple[str, dict[str, Any]]:
    """``"x.test:p_4xx=0.5,latency=0.1"`` -> ``("x.test", {"p_4xx": 0.5, "latency": 0.1})``."""
    target, _, settings = spec.partition(":")
    names = {f.name for f in fields(Rule)}
    changes: dict[str, Any] = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        if key not in names:
            raise argparse.ArgumentTypeError(f"unknown rule field {key!r} (one of {sorted(names)})")
        changes[key] = float(value) if key.startswith("p_") or key == "latency" else value
    return target, changes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.fault_sink", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--listen", default="127.0.0.1:2525", help="host:port")
    parser.add_argument("--extra-host", action="append", default=[], help="same port")
    for name in ("p_4xx", "p_5xx", "p_421", "p_drop", "latency"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=0.0)
    parser.add_argument("--stall", choices=STALL_POINTS)
    parser.add_argument("--rcpt-reply")
    parser.add_argument("--helo-reply")
    parser.add_argument("--mail-reply")
    parser.add_argument("--rule", action="append", default=[], type=_parse_rule, metavar="SPEC")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--max-connections", type=int)
    parser.add_argument("--no-pipelining", action="store_true")
    parser.add_argument("--report-every", type=float, default=0.0, help="seconds")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    names = (
        "p_4xx",
        "p_5xx",
        "p_421",
        "p_drop",
        "latency",
        "stall",
        "rcpt_reply",
        "helo_reply",
        "mail_reply",
    )
    default = Rule(**{name: getattr(args, name) for name in names})
    options = {"seed": args.seed, "max_connections": args.max_connections}
    sink = FaultSink(host or "127.0.0.1", int(port), extra_hosts=args.extra_host, **options)
    sink.set_rule("*", default)
    sink.set_extensions(pipelining=not args.no_pipelining)
    for target, changes in args.rule:
        sink.set_rule(target, **changes)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with sink:
        print(f"fault sink listening on {sink.relay} {default}", flush=True)
        # Short waits: a signal the kernel hands to the sink's server thread only runs its
        # handler when this (main) thread next runs Python, which a wait without timeout
        # would never do (seen as a CLI that ignored Ctrl-C under load).
        reported = time.monotonic()
        while not stop.wait(0.2):
            if args.report_every and time.monotonic() - reported >= args.report_every:
                print(sink.summary(), flush=True)
                reported = time.monotonic()
    print(sink.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
