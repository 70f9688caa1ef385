"""A small real DNS server on loopback serving fixture zones, for tests.

It speaks DNS over UDP and TCP on 127.0.0.1 (both on one port: a free one unless given),
answers authoritatively from in-memory zones, and runs its own asyncio loop in a thread,
so sync tests, async tests and subprocesses (``sluice serve --nameserver``) can all use it::

    with DNSServer({"example.test": '''
        @    300 IN MX 10 mx1
        mx1      IN A  192.0.2.10
    '''}) as dns_server:                                      # or .start() ... .stop()
        dns_server.add("shop.example.test", "MX", "10 mx1.shop.example.test.", ttl=300)
        dns_server.add("sel._domainkey.example.test", "TXT", txt_rdata("v=DKIM1; p=..."))
        dns_server.fail("broken.example.test", "SERVFAIL")
        run_sluice("--nameserver", dns_server.nameserver)   # "127.0.0.1:PORT"
        assert dns_server.count("example.test", "MX") == 1

Answers: NOERROR with the records, CNAMEs chased within the served zones; NODATA (NOERROR,
no answer, the zone's SOA in authority) when the name exists without that type; NXDOMAIN
with the SOA when it doesn't; REFUSED outside every zone. A UDP answer over 512 bytes (or
the query's EDNS payload size) is truncated with TC set, so clients retry over TCP. After
``stop()``, ``start()`` again listens on the same port, with the same zones.

Zone text is RFC 1035 master format relative to the zone's origin; it may start on the
opening-quote line and the other lines are dedented. ``$TTL 300`` applies unless the text
sets one; without a SOA one is made up (minimum, the negative-caching TTL, 60). ``add``
parses rdata likewise; a name outside every zone gets a new zone at its parent
(``shop.example.test`` -> ``example.test``). ``txt_rdata`` splits TXT values into 255-byte
strings.

Faults match a name exactly, and optionally one type: "TIMEOUT" never answers, an rcode
name ("SERVFAIL", "REFUSED", "NXDOMAIN", ...) answers with it; ``times=n`` limits a fault to
the next n matching queries. ``queries`` logs every query, faulted or not, as
``Query(name, type, transport)``: name lowercase without the final dot, "udp" or "tcp".
An exception while answering is appended to ``errors`` and answered SERVFAIL.
"""

from __future__ import annotations

import asyncio
import socket
import textwrap
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, NamedTuple, Self

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone

IN = dns.rdataclass.IN
MAX_CNAME_CHAIN = 8


class Query(NamedTuple):
    name: str  # lowercase, no final dot
    type: str  # "MX", "A", ...
    transport: str  # "udp" or "tcp"


def txt_rdata(value: str | bytes) -> str:
    """TXT rdata text for *value*: quoted strings of at most 255 bytes each."""
    raw = value.encode() if isinstance(value, str) else value
    chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    return " ".join('"' + "".join(map(_escape, chunk)) + '"' for chunk in chunks)


def _escape(byte: int) -> str:
    if byte in b'"\\':
        return "\\" + chr(byte)
    return chr(byte) if 32 <= byte < 127 else f"\\{byte:03d}"


def _dedent(text: str) -> str:
    first, newline, rest = text.partition("\n")
    if first.strip():  # the text starts on the opening-quote line
        return first.strip() + newline + textwrap.dedent(rest)
    return textwrap.dedent(text)


def _key(name: str | dns.name.Name) -> str:
    return str(name).lower().rstrip(".") or "."


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))


class DNSServer:
    """Authoritative DNS over UDP and TCP on loopback; see the module docstring."""

    def __init__(
        self, zones: Mapping[str, str] | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.host = host
        self._port = port
        self.queries: list[Query] = []
        self.errors: list[Exception] = []
        self._zones: dict[dns.name.Name, dns.zone.Zone] = {}
        self._faults: dict[tuple[dns.name.Name, int | None], tuple[str, int | None]] = {}
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: socket.socket | None = None
        self._setting_up: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Transport] = set()
        for origin, text in (zones or {}).items():
            self.add_zone(origin, text)

    @property
    def address(self) -> tuple[str, int]:
        if self._thread is None:
            raise RuntimeError("DNSServer is not running")
        return self.host, self._port

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def nameserver(self) -> str:
        """``HOST:PORT``, the form of Sluice's ``--nameserver``."""
        return f"{self.host}:{self.port}"

    def add_zone(self, origin: str, text: str = "") -> None:
        """Serve a zone from master-file *text*, replacing any zone with that origin."""
        name = dns.name.from_text(origin)
        zone = dns.zone.from_text(
            "$TTL 300\n" + _dedent(text), origin=name, relativize=False, check_origin=False
        )
        if zone.get_rdataset(name, "SOA") is None:
            host = "root-servers.test." if name == dns.name.root else name.to_text()
            soa = dns.rdata.from_text(IN, "SOA", f"ns.{host} hostmaster.{host} 1 3600 600 86400 60")
            zone.find_rdataset(name, "SOA", create=True).add(soa, 60)
        with self._lock:
            self._zones[name] = zone

    def add(self, name: str, rdtype: str, rdata: str, ttl: int = 300) -> None:
        """Add one record, e.g. ``add("example.test", "MX", "10 mx1", ttl=60)``."""
        owner = dns.name.from_text(name)
        with self._lock:
            zone = self._zone_for(owner)
            if zone is None:
                origin = owner.parent() if len(owner) > 2 else owner
                self.add_zone(origin.to_text())
                zone = self._zones[origin]
            record = dns.rdata.from_text(IN, rdtype, rdata, zone.origin, relativize=False)
            zone.find_rdataset(owner, record.rdtype, create=True).add(record, ttl)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove a name's records of one type, or all of them."""
        owner = dns.name.from_text(name)
        with self._lock:
            zone = self._zone_for(owner)
            if zone is not None and rdtype is not None:
                zone.delete_rdataset(owner, rdtype)
            elif zone is not None:
                zone.delete_node(owner)

    def fail(
        self, name: str, fault: str, rdtype: str | None = None, times: int | None = None
    ) -> None:
        """Answer queries for *name* (of *rdtype*, else any type) with *fault*."""
        action = fault.upper()
        if action != "TIMEOUT":
            dns.rcode.from_text(action)  # raises UnknownRcode on a misspelt fault
        qtype = None if rdtype is None else int(dns.rdatatype.from_text(rdtype))
        with self._lock:
            self._faults[dns.name.from_text(name), qtype] = (action, times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(
        self, name: str | None = None, rdtype: str | None = None, transport: str | None = None
    ) -> int:
        """How many logged queries match; ``None`` matches anything."""
        want = (_key(name) if name else None, rdtype and rdtype.upper(), transport)
        return sum(
            all(w is None or w == got for w, got in zip(want, query, strict=True))
            for query in list(self.queries)
        )

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("DNSServer is already running")
        udp, tcp = self._bind()
        self._port = udp.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"dns-server-{self._port}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._listen(udp, tcp))
        except BaseException:
            self.stop()
            udp.close()
            tcp.close()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._close())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        for _ in range(50):  # a free UDP port whose TCP twin is free too
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                udp.bind((self.host, self._port))
                tcp.bind((self.host, udp.getsockname()[1]))
                tcp.listen(64)
                return udp, tcp
            except OSError:
                udp.close()
                tcp.close()
                if self._port:
                    raise
        raise OSError("no port free for both UDP and TCP")

    async def _listen(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self, tcp=False), sock=udp
        )
        # Not loop.create_server: on 3.11 a connection accepted as Server.close() runs
        # fails an assertion in Server._attach and its socket leaks.
        tcp.setblocking(False)
        loop.add_reader(tcp.fileno(), self._accept, tcp)
        self._tcp = tcp

    def _accept(self, tcp: socket.socket) -> None:
        try:
            conn, _ = tcp.accept()
        except OSError:  # nothing to accept after all, or the client already gave up
            return
        task = asyncio.get_running_loop().create_task(self._connect(conn))
        self._setting_up.add(task)
        task.add_done_callback(self._setting_up.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            loop = asyncio.get_running_loop()
            await loop.connect_accepted_socket(lambda: _Protocol(self, tcp=True), conn)
        except BaseException:
            conn.close()
            raise

    async def _close(self) -> None:
        assert self._loop is not None
        if self._tcp is not None:
            self._loop.remove_reader(self._tcp.fileno())
            self._tcp.close()  # connections still in its backlog are reset
        if self._udp is not None:
            self._udp.close()
        await asyncio.gather(*self._setting_up, return_exceptions=True)
        for connection in list(self._connections):
            connection.abort()
        await asyncio.sleep(0)  # let the transports' connection_lost close their sockets
        self._udp = self._tcp = None

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one query in wire format, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        try:
            with self._lock:
                if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
                    response.set_rcode(dns.rcode.NOTIMP if query.question else dns.rcode.FORMERR)
                elif (fault := self._log(query.question[0], transport)) == "TIMEOUT":
                    return None
                elif fault is not None:
                    response.set_rcode(dns.rcode.from_text(fault))
                else:
                    self._resolve(response, query.question[0].name, query.question[0].rdtype)
            limit = (
                65535 if transport == "tcp" else 512 if query.edns < 0 else max(512, query.payload)
            )
            return response.to_wire(max_size=limit, prefer_truncation=True)
        except Exception as exc:  # a bug here must not look like a timeout
            self.errors.append(exc)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()

    def _log(self, question: dns.rrset.RRset, transport: str) -> str | None:
        """Log a query; the fault it meets, if any."""
        qname, qtype = question.name, question.rdtype
        self.queries.append(Query(_key(qname), dns.rdatatype.to_text(qtype), transport))
        key = (qname, int(qtype)) if (qname, qtype) in self._faults else (qname, None)
        if (fault := self._faults.get(key)) is None:
            return None
        action, times = fault
        if times is not None and times <= 1:
            del self._faults[key]
        elif times is not None:
            self._faults[key] = (action, times - 1)
        return action

    def _resolve(
        self, response: dns.message.Message, qname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> None:
        zone = self._zone_for(qname)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            node = zone.get_node(name)
            if node is None:
                if not any(other.is_subdomain(name) for other in zone.nodes):
                    response.set_rcode(dns.rcode.NXDOMAIN)  # else an empty non-terminal
                break
            found = node.get_rdataset(IN, qtype)
            if found is not None:
                response.answer.append(_rrset(name, found))
                return
            cname = node.get_rdataset(IN, dns.rdatatype.CNAME)
            if cname is None or qtype == dns.rdatatype.CNAME:
                break  # NODATA
            response.answer.append(_rrset(name, cname))
            name = cname[0].target
            next_zone = self._zone_for(name)
            if next_zone is None:
                return  # the client resolves the rest elsewhere
            zone = next_zone
        else:
            response.set_rcode(dns.rcode.SERVFAIL)  # a CNAME loop
            return
        origin = zone.origin or dns.name.root
        soa = zone.get_rdataset(origin, "SOA")
        if soa is not None:
            negative = _rrset(origin, soa)
            negative.ttl = min(soa.ttl, soa[0].minimum)
            response.authority.append(negative)

    def _zone_for(self, name: dns.name.Name) -> dns.zone.Zone | None:
        with self._lock:
            while name not in self._zones:
                if name == dns.name.root:  # a root zone ("." added) answers for everything
                    return None
                name = name.parent()
            return self._zones[name]


class _Protocol(asyncio.DatagramProtocol, asyncio.Protocol):
    """UDP datagrams, or TCP streams of two-byte length-prefixed messages."""

    def __init__(self, server: DNSServer, tcp: bool) -> None:
        self.server, self.tcp = server, tcp
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.tcp:
            self.server._connections.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self.transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if (reply := self.server.answer(data, "udp")) is not None:
            self.transport.sendto(reply, addr)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2 and len(self.buffer) >= 2 + int.from_bytes(self.buffer[:2]):
            size = int.from_bytes(self.buffer[:2])
            wire, self.buffer = self.buffer[2 : 2 + size], self.buffer[2 + size :]
            if (reply := self.server.answer(wire, "tcp")) is not None:
                self.transport.write(len(reply).to_bytes(2) + reply)
