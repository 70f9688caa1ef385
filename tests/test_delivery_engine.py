"""The delivery engine against a real DNS server and a scriptable SMTP sink on loopback.

Two MX hosts are two loopback addresses of one fault sink (127.0.0.1 and 127.0.0.2 on
the same port, ``SLUICE_MX_PORT``); the zones live in a real DNS server that
``sluice serve`` queries through ``SLUICE_NAMESERVER``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from loadtests.fault_sink import FaultSink
from loadtests.harness import Served, fixture_batch
from tests.conftest import Sink
from tests.dnsserver import DNSServer
from tests.test_end_to_end import get, post, wait_status

pytestmark = pytest.mark.slow

ZONE = """
@        IN MX 10 mx1
@        IN MX 20 mx2
mx1      IN A  127.0.0.1
mx2      IN A  127.0.0.2
mx3      IN A  127.0.0.3
"""


@pytest.fixture
def fault_sink() -> Iterator[FaultSink]:
    with FaultSink(extra_hosts=["127.0.0.2"], seed=7) as sink:
        yield sink


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer({"shop.test": ZONE}) as server:
        yield server


@pytest.fixture
def engine(serve_factory: Any, fault_sink: FaultSink, dns_server: DNSServer) -> Any:
    """Start `sluice serve` delivering by MX into the fault sink."""

    def start(workers: int = 1, **env: str) -> Served:
        return serve_factory(
            workers=workers,
            extra_env={
                "SLUICE_NAMESERVER": dns_server.nameserver,
                "SLUICE_MX_PORT": str(fault_sink.port),
                "SLUICE_SMTP_TIMEOUT": "2s",
                "SLUICE_THROTTLE_BACKOFF": "1s",
                **env,
            },
        )

    return start


def send(served: Served, count: int = 1, domain: str = "shop.test", start: int = 0) -> list[str]:
    status, answer = post(served, "/v1/messages", fixture_batch(count, start=start, domain=domain))
    assert status == 202, answer
    return [r["message_id"] for r in answer["results"]]


def events(served: Served, message_id: str) -> list[dict[str, Any]]:
    return get(served, f"/v1/messages/{message_id}")["events"]  # type: ignore[no-any-return]


def test_mx_preference_then_fallback(
    engine: Any, fault_sink: FaultSink, dns_server: DNSServer
) -> None:
    served = engine()
    [first] = send(served)
    assert wait_status(served, first, "delivered")["status"] == "delivered"
    assert fault_sink.received()[0].local.startswith("127.0.0.1:"), "lowest preference first"

    # mx1 now points at an address nothing listens on: the next MX takes the mail
    dns_server.remove("mx1.shop.test", "A")
    dns_server.add("mx1.shop.test", "A", "127.0.0.3", ttl=1)
    time.sleep(1.5)  # let the cached answer (TTL 1 s... the zone's 300 s for mx1) expire
    [second] = send(served, start=1)
    found = wait_status(served, second, "delivered", timeout=30)
    assert found["status"] == "delivered"


def test_null_mx_and_nxdomain_bounce_as_bad_domain(engine: Any, dns_server: DNSServer) -> None:
    dns_server.add_zone("nomail.test", "@ IN MX 0 .")
    served = engine()
    [null_mx] = send(served, domain="nomail.test")
    [nxdomain] = send(served, domain="nowhere.shop.test")
    for message_id, code in ((null_mx, 556), (nxdomain, 550)):
        found = wait_status(served, message_id, "bounced")
        assert found["status"] == "bounced"
        last = found["events"][-1]
        assert last["bounce_class"] == "bad-domain" and last["smtp_code"] == code


def test_servfail_is_retried_not_bounced(
    engine: Any, fault_sink: FaultSink, dns_server: DNSServer
) -> None:
    dns_server.fail("shop.test", "SERVFAIL", "MX")
    served = engine()
    [message_id] = send(served)
    found = wait_status(served, message_id, "deferred")
    assert found["status"] == "deferred"
    assert "MX lookup" in found["events"][-1]["reason"]
    dns_server.clear_faults()
    assert wait_status(served, message_id, "delivered", timeout=30)["status"] == "delivered"


def test_4xx_then_delivered(engine: Any, fault_sink: FaultSink) -> None:
    fault_sink.script("user0@shop.test", ["451 4.3.0 Temporary local problem", "250 OK"])
    served = engine()
    [message_id] = send(served)
    assert wait_status(served, message_id, "delivered", timeout=30)["status"] == "delivered"
    types = [e["type"] for e in events(served, message_id)]
    assert types == ["queued", "deferred", "delivered"]
    assert events(served, message_id)[-1]["attempt"] == 2


def test_5xx_user_unknown_bounces_hard_and_suppresses(engine: Any, fault_sink: FaultSink) -> None:
    fault_sink.script(
        "user0@shop.test", ["550 5.1.1 The email account that you tried to reach does not exist"]
    )
    fault_sink.script(
        "user1@shop.test", ["550 5.7.1 Service unavailable, Client host blocked using Spamhaus"]
    )
    served = engine()
    gone, blocked = send(served, 2)
    found = wait_status(served, gone, "bounced")
    last = found["events"][-1]
    assert (last["bounce_class"], last["hard"], last["smtp_code"], last["status"]) == (
        "bad-mailbox",
        True,
        550,
        "5.1.1",
    )
    found = wait_status(served, blocked, "bounced")
    last = found["events"][-1]
    assert last["hard"] is False and last["bounce_class"] in ("policy", "spam")
    assert last["status"] == "5.7.1"

    # the dead address is suppressed: a new message to it is not sent; the blocked one is
    again_gone, again_blocked = send(served, 2)
    found = wait_status(served, again_gone, "suppressed")
    assert found["events"][-1]["reason"] == "hard_bounce"
    assert wait_status(served, again_blocked, "delivered")["status"] == "delivered"
    assert [r.rcpt_tos[0] for r in fault_sink.received()].count("user0@shop.test") == 1


def test_421_slows_the_whole_destination(engine: Any, fault_sink: FaultSink) -> None:
    fault_sink.script("user0@shop.test", ["421 4.7.0 Too many connections, try again later"])
    served = engine()
    [throttled] = send(served)
    found = wait_status(served, throttled, "deferred")
    assert found["events"][-1]["smtp_code"] == 421
    # the destination host is backing off with a smaller connection limit
    hosts = get(served, "/v1/destinations")["hosts"]
    mx1 = next(h for h in hosts if h["address"] == "127.0.0.1") if hosts else None
    deadline = time.monotonic() + 5
    while (mx1 is None or mx1["limit"] >= 10) and time.monotonic() < deadline:
        time.sleep(0.2)
        hosts = get(served, "/v1/destinations")["hosts"]
        mx1 = next((h for h in hosts if h["address"] == "127.0.0.1"), None)
    assert mx1 is not None and mx1["limit"] < 10, hosts
    assert any(r["code"] == 421 for r in mx1["recent_replies"])
    # other mail for the destination waits for the backoff instead of hammering it
    [other] = send(served, start=1)
    assert wait_status(served, other, "delivered", timeout=30)["status"] == "delivered"
    assert wait_status(served, throttled, "delivered", timeout=30)["status"] == "delivered"
    domains = get(served, "/v1/destinations")["domains"]
    assert all(d["domain"] != "shop.test" for d in domains), "nothing pending any more"


def test_drop_after_final_dot_is_retried(engine: Any, fault_sink: FaultSink) -> None:
    fault_sink.script("user0@shop.test", ["drop", "250 OK"])
    served = engine()
    [message_id] = send(served)
    assert wait_status(served, message_id, "delivered", timeout=30)["status"] == "delivered"
    got = [r for r in fault_sink.received() if r.rcpt_tos == ("user0@shop.test",)]
    assert len(got) == 2, "the dropped attempt arrived too: a duplicate, as at-least-once allows"


def test_stalled_server_times_out_and_is_retried(
    engine: Any, fault_sink: FaultSink, dns_server: DNSServer
) -> None:
    # One MX only: with two, a timeout at the first moves on to the second at once.
    dns_server.add_zone("single.test", "@ IN MX 10 mx1.shop.test.")
    fault_sink.script("user0@single.test", ["stall", "250 OK"])
    served = engine()
    [message_id] = send(served, domain="single.test")
    assert wait_status(served, message_id, "delivered", timeout=30)["status"] == "delivered"
    timeline = events(served, message_id)
    assert [e["type"] for e in timeline] == ["queued", "deferred", "delivered"]
    assert "did not answer within" in timeline[1]["reason"], timeline[1]


def test_1000_messages_to_one_domain_respect_the_connection_limit(
    engine: Any, fault_sink: FaultSink
) -> None:
    fault_sink.set_rule("*", latency=0.01)
    served = engine(workers=2)
    ids = send(served, 1000)
    fault_sink.wait_for(1000, timeout=120)
    assert wait_status(served, ids[-1], "delivered")["status"] == "delivered"
    print(
        f"\nconnections_total={fault_sink.connections_total} max_concurrent={fault_sink.max_concurrent}"
    )
    # 10 connections per MX host in all (SLUICE_MAX_CONNECTIONS_PER_HOST), each reused
    assert fault_sink.max_concurrent <= 10 + 2, fault_sink.summary()
    assert fault_sink.connections_total <= 10 + 2, fault_sink.summary()


def test_2000_messages_into_a_faulty_sink_all_end_delivered_or_bounced(
    engine: Any, fault_sink: FaultSink, record_property: Any
) -> None:
    fault_sink.set_rule("*", p_4xx=0.10, p_5xx=0.03, p_drop=0.02)
    served = engine(workers=2, SLUICE_RETRY_SCHEDULE="1s")
    ids = send(served, 1000) + send(served, 1000, start=1000)
    deadline = time.monotonic() + 240
    statuses: Counter[str] = Counter()
    while time.monotonic() < deadline:
        pending = get(served, "/v1/destinations")["domains"]
        if not pending:
            break
        time.sleep(1)
    for message_id in ids:
        statuses[get(served, f"/v1/messages/{message_id}")["status"]] += 1
    received = Counter(r.rcpt_tos[0] for r in fault_sink.accepted())
    attempts = Counter(r.rcpt_tos[0] for r in fault_sink.received())
    # A dropped message arrived whole (only the reply was lost): it counts as a copy.
    copies = Counter(
        r.rcpt_tos[0] for r in fault_sink.received() if r.outcome in ("accepted", "drop")
    )
    duplicates = sum(n - 1 for n in copies.values() if n > 1)
    table = {
        "delivered": statuses["delivered"],
        "bounced": statuses["bounced"],
        "other": sum(n for s, n in statuses.items() if s not in ("delivered", "bounced")),
        "attempts": sum(attempts.values()),
        "sink_4xx": fault_sink.counts.get("4xx", 0),
        "sink_5xx": fault_sink.counts.get("5xx", 0),
        "sink_drop": fault_sink.counts.get("drop", 0),
        "duplicates": duplicates,
    }
    print("\n" + "  ".join(f"{k}={v}" for k, v in table.items()))
    for key, value in table.items():
        record_property(key, value)
    assert statuses["delivered"] + statuses["bounced"] == 2000, statuses
    assert statuses["delivered"] == len(received), "every delivered message reached the sink"
    assert 30 <= statuses["bounced"] <= 100  # ~3% of 2,000, with retries of 4xx drawing again


def test_transport_map_required_tls_and_sending_ip(
    serve_factory: Any, fault_sink: FaultSink, dns_server: DNSServer, sink: Sink, tmp_path: Any
) -> None:
    # partner.test goes through a relay (the plain sink), vault.test must use TLS (the fault
    # sink offers no STARTTLS), everything else by MX from the sending address 127.0.0.5.
    config = tmp_path / "sluice.toml"
    config.write_text(
        "[transport]\n"
        f'"partner.test" = "relay {sink.relay}"\n'
        f'"vault.test" = "relay {fault_sink.relay} tls=required"\n'
    )
    served = serve_factory(
        workers=1,
        args=["--config", str(config)],
        extra_env={
            "SLUICE_NAMESERVER": dns_server.nameserver,
            "SLUICE_MX_PORT": str(fault_sink.port),
            "SLUICE_IPS": "127.0.0.5",
        },
    )
    [by_relay] = send(served, domain="partner.test")
    [by_mx] = send(served, domain="shop.test")
    [needs_tls] = send(served, domain="vault.test")
    assert wait_status(served, by_relay, "delivered")["status"] == "delivered"
    assert [r.rcpt_tos[0] for r in sink.snapshot()] == ["user0@partner.test"]
    assert wait_status(served, by_mx, "delivered")["status"] == "delivered"
    [at_mx] = [r for r in fault_sink.received() if r.rcpt_tos == ("user0@shop.test",)]
    assert at_mx.peer.startswith("127.0.0.5:"), "sent from the configured sending IP"

    found = wait_status(served, needs_tls, "deferred")
    assert found["status"] == "deferred"
    assert "STARTTLS" in found["events"][-1]["reason"]
    assert not [r for r in fault_sink.received() if r.rcpt_tos == ("user0@vault.test",)], (
        "never sent in plain text to a route that requires TLS"
    )
