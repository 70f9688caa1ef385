"""The fixture DNS server (``tests/dnsserver.py``) answers real resolvers correctly."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from loadtests.harness import free_port
from tests.dnsserver import DNSServer, Query, txt_rdata

ZONE = """
    @        300 IN MX   10 mx1
             300 IN MX   20 mx2.example.test.
    mx1      600 IN A    192.0.2.10
    mx1      600 IN AAAA 2001:db8::10
    mx2          IN A    192.0.2.20
    www          IN CNAME mx1
    far          IN CNAME mail.elsewhere.invalid.
    a.b.deep     IN A    192.0.2.99
"""


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer({"example.test": ZONE}) as server:
        yield server
    assert server.errors == []


def sync_resolver(server: DNSServer, lifetime: float = 2.0) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    resolver.lifetime = lifetime
    return resolver


def async_resolver(server: DNSServer, lifetime: float = 2.0) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port
    resolver.lifetime = lifetime
    return resolver


def ask(server: DNSServer, name: str, rdtype: str, payload: int = 0) -> dns.message.Message:
    """One raw query over UDP (with EDNS when *payload* is given), to look at the reply."""
    query = dns.message.make_query(
        name, rdtype, use_edns=0 if payload else None, payload=payload or None
    )
    return dns.query.udp(query, server.host, timeout=2, port=server.port)


def test_mx_answers_with_preferences_and_ttls(dns_server: DNSServer) -> None:
    answer = sync_resolver(dns_server).resolve("example.test", "MX")
    assert sorted((mx.preference, mx.exchange.to_text()) for mx in answer) == [
        (10, "mx1.example.test."),
        (20, "mx2.example.test."),
    ]
    assert answer.rrset is not None and answer.rrset.ttl == 300
    assert answer.response.flags & dns.flags.AA
    assert dns_server.queries == [Query("example.test", "MX", "udp")]
    assert dns_server.address == ("127.0.0.1", dns_server.port)
    assert dns_server.nameserver == f"127.0.0.1:{dns_server.port}"


async def test_a_and_aaaa_through_the_async_resolver(dns_server: DNSServer) -> None:
    resolver = async_resolver(dns_server)
    a = await resolver.resolve("mx1.example.test", "A")
    aaaa = await resolver.resolve("MX1.Example.Test.", "AAAA")
    assert [r.address for r in a] == ["192.0.2.10"] and a.rrset and a.rrset.ttl == 600
    assert [r.address for r in aaaa] == ["2001:db8::10"]
    default_ttl = await resolver.resolve("mx2.example.test", "A")
    assert default_ttl.rrset and default_ttl.rrset.ttl == 300
    assert dns_server.count("mx1.example.test") == 2 and dns_server.count(rdtype="AAAA") == 1


async def test_nxdomain_carries_the_soa(dns_server: DNSServer) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        await async_resolver(dns_server).resolve("nope.example.test", "MX")
    reply = ask(dns_server, "nope.example.test", "MX")
    assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.answer
    [soa] = reply.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 60


def test_nodata_is_noerror_with_empty_answer_and_soa(dns_server: DNSServer) -> None:
    with pytest.raises(dns.resolver.NoAnswer):
        sync_resolver(dns_server).resolve("mx2.example.test", "MX")
    for name in ("mx2.example.test", "b.deep.example.test"):  # the second has only children
        reply = ask(dns_server, name, "MX")
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
        assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]


def test_names_outside_the_zones_are_refused(dns_server: DNSServer) -> None:
    reply = ask(dns_server, "example.org", "A")
    assert reply.rcode() == dns.rcode.REFUSED and not reply.flags & dns.flags.AA
    with pytest.raises(dns.resolver.NoNameservers):
        sync_resolver(dns_server).resolve("example.org", "A")


def test_cnames_are_chased_within_the_zones(dns_server: DNSServer) -> None:
    answer = sync_resolver(dns_server).resolve("www.example.test", "A")
    assert [r.address for r in answer] == ["192.0.2.10"]
    assert answer.canonical_name.to_text() == "mx1.example.test."
    reply = ask(dns_server, "far.example.test", "A")  # target outside: just the CNAME
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME]
    cname = ask(dns_server, "www.example.test", "CNAME")
    assert [rrset.rdtype for rrset in cname.answer] == [dns.rdatatype.CNAME]


def test_add_records_and_zones_later(dns_server: DNSServer) -> None:
    dns_server.add("shop.example.test", "MX", "10 mx1.shop.example.test.", ttl=120)
    dns_server.add("shop.example.test", "MX", "20 mx1")  # relative to the zone's origin
    dns_server.add("shop.example.test", "A", "192.0.2.40")
    dns_server.add("mail.other.test", "A", "192.0.2.50")  # new zone other.test
    dns_server.add_zone("third.test", "@ IN TXT hello")
    resolver = sync_resolver(dns_server)
    answer = resolver.resolve("shop.example.test", "MX")
    assert sorted(mx.to_text() for mx in answer) == [
        "10 mx1.shop.example.test.",
        "20 mx1.example.test.",
    ]
    assert answer.rrset and answer.rrset.ttl == 120
    assert [r.address for r in resolver.resolve("mail.other.test", "A")] == ["192.0.2.50"]
    assert ask(dns_server, "x.other.test", "A").rcode() == dns.rcode.NXDOMAIN
    assert [r.strings for r in resolver.resolve("third.test", "TXT")] == [(b"hello",)]
    dns_server.remove("shop.example.test", "MX")
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("shop.example.test", "MX")
    dns_server.remove("mail.other.test")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("mail.other.test", "A")


def test_bad_zone_text_raises_at_once() -> None:
    with pytest.raises(dns.exception.SyntaxError):
        DNSServer({"example.test": "@ IN MX not-a-number mx1"})


def test_servfail_and_refused_faults(dns_server: DNSServer) -> None:
    resolver = sync_resolver(dns_server)
    dns_server.fail("example.test", "SERVFAIL")
    dns_server.fail("mx1.example.test", "refused", rdtype="AAAA")
    with pytest.raises(dns.resolver.NoNameservers, match="SERVFAIL"):
        resolver.resolve("example.test", "MX")
    with pytest.raises(dns.resolver.NoNameservers, match="REFUSED"):
        resolver.resolve("mx1.example.test", "AAAA")
    assert ask(dns_server, "mx1.example.test", "A").answer  # other types still answer
    dns_server.clear_faults()
    assert len(resolver.resolve("example.test", "MX")) == 2
    dns_server.fail("example.test", "SERVFAIL", times=1)
    with pytest.raises(dns.resolver.NoNameservers):
        resolver.resolve("example.test", "MX")
    assert len(resolver.resolve("example.test", "MX")) == 2
    with pytest.raises(dns.rcode.UnknownRcode):
        dns_server.fail("example.test", "EXPLODE")


async def test_timeout_fault_never_answers(dns_server: DNSServer) -> None:
    dns_server.fail("example.test", "TIMEOUT", rdtype="MX")
    resolver = async_resolver(dns_server, lifetime=0.5)
    with pytest.raises(dns.resolver.LifetimeTimeout):
        await resolver.resolve("example.test", "MX")
    assert dns_server.count("example.test", "MX") >= 1
    assert (await resolver.resolve("mx1.example.test", "A"))[0].address == "192.0.2.10"
    with pytest.raises(dns.exception.Timeout):  # over TCP too
        dns.query.tcp(
            dns.message.make_query("example.test", "MX"), "127.0.0.1", 0.3, dns_server.port
        )


async def test_long_multi_string_txt_round_trips(dns_server: DNSServer) -> None:
    value = "v=DKIM1; k=rsa; p=" + "".join(chr(ord("A") + i % 26) for i in range(582))
    assert len(value) == 600
    dns_server.add("sel._domainkey.example.test", "TXT", txt_rdata(value))
    dns_server.add("example.test", "TXT", '"v=spf1 " "ip4:192.0.2.0/24 -all"')
    resolver = async_resolver(dns_server)
    [dkim] = await resolver.resolve("sel._domainkey.example.test", "TXT")
    assert [len(s) for s in dkim.strings] == [255, 255, 90]
    assert b"".join(dkim.strings).decode() == value
    [spf] = await resolver.resolve("example.test", "TXT")
    assert spf.strings == (b"v=spf1 ", b"ip4:192.0.2.0/24 -all")
    assert txt_rdata(b'say "hi"\\\x00') == '"say \\"hi\\"\\\\\\000"'
    dns_server.add("odd.example.test", "TXT", txt_rdata(b'say "hi"\\\x00'))
    [odd] = await resolver.resolve("odd.example.test", "TXT")
    assert odd.strings == (b'say "hi"\\\x00',)


@pytest.mark.parametrize("use_async", [False, True])
async def test_big_answers_are_truncated_on_udp_and_complete_over_tcp(
    dns_server: DNSServer, use_async: bool
) -> None:
    for i in range(40):
        dns_server.add("big.example.test", "A", f"192.0.2.{i + 1}")
    udp = ask(dns_server, "big.example.test", "A")
    assert udp.flags & dns.flags.TC and len(udp.to_wire()) <= 512
    edns = ask(dns_server, "big.example.test", "A", payload=4096)
    assert not edns.flags & dns.flags.TC and len(edns.answer[0]) == 40
    small = ask(dns_server, "big.example.test", "A", payload=600)  # EDNS, but too small
    assert small.flags & dns.flags.TC and not small.answer  # RRsets are never cut in half
    if use_async:
        answer = await async_resolver(dns_server).resolve("big.example.test", "A")
    else:
        answer = sync_resolver(dns_server).resolve("big.example.test", "A")
    assert len(answer) == 40
    assert dns_server.count("big.example.test", "A", "tcp") == 1


def test_query_log_shows_a_caching_resolver_asks_once(dns_server: DNSServer) -> None:
    resolver = sync_resolver(dns_server)
    resolver.cache = dns.resolver.Cache()
    for _ in range(3):
        resolver.resolve("example.test", "MX")
    assert dns_server.count("example.test", "MX") == 1
    dns_server.queries.clear()
    uncached = sync_resolver(dns_server)
    uncached.resolve("example.test", "MX")
    uncached.resolve("example.test", "MX")
    assert dns_server.queries == [Query("example.test", "MX", "udp")] * 2


def test_tcp_connection_serves_several_queries_and_garbage_is_ignored(
    dns_server: DNSServer,
) -> None:
    with socket.create_connection(dns_server.address, timeout=2) as sock:
        for name in ("mx1.example.test", "mx2.example.test"):
            dns.query.send_tcp(sock, dns.message.make_query(name, "A"))
            reply, _ = dns.query.receive_tcp(sock, expiration=None)
            assert reply.answer[0].name.to_text() == f"{name}."
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00\x01garbage", dns_server.address)
    assert ask(dns_server, "mx1.example.test", "A").answer


def test_cname_loops_and_internal_errors_answer_servfail(
    dns_server: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dns_server.add_zone("loop.test", "a IN CNAME b\nb IN CNAME a")
    assert ask(dns_server, "a.loop.test", "A").rcode() == dns.rcode.SERVFAIL

    def broken(*args: object) -> None:
        raise ValueError("bug")

    monkeypatch.setattr(dns_server, "_resolve", broken)
    assert ask(dns_server, "example.test", "MX").rcode() == dns.rcode.SERVFAIL
    assert [str(error) for error in dns_server.errors] == ["bug"]
    dns_server.errors.clear()


def test_fixed_port_stop_and_restart() -> None:
    port = free_port()
    server = DNSServer({"example.test": ZONE}, port=port)
    server.start()
    try:
        assert server.address == ("127.0.0.1", port)
        assert len(sync_resolver(server).resolve("example.test", "MX")) == 2
    finally:
        server.stop()
    server.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = server.address
    with server:  # the same port again, zones kept
        assert len(sync_resolver(server).resolve("example.test", "MX")) == 2
        idle = socket.create_connection(server.address, timeout=2)
    with idle:  # stop() closed the idle TCP connection too
        assert idle.recv(10) == b""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # sockets released
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_a_subprocess_can_use_it(dns_server: DNSServer) -> None:
    host, _, port = dns_server.nameserver.partition(":")
    code = (
        "import sys, dns.resolver\n"
        "r = dns.resolver.Resolver(configure=False)\n"
        "r.nameservers = [sys.argv[1]]; r.port = int(sys.argv[2])\n"
        "print(sorted(mx.preference for mx in r.resolve('example.test', 'MX')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, host, port], capture_output=True, text=True, timeout=10
    )
    assert out.stdout.strip() == "[10, 20]", out.stderr
