"""`sluice preflight` against a real DNS server on loopback: a good domain, and broken ones."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import preflight
from loadtests.harness import FIXTURE, PROJECT_ROOT
from mta.dkimkeys import KeyStore
from tests.conftest import make_settings
from tests.dnsserver import DNSServer, txt_rdata

DOMAIN = "example.test"
IP = "192.0.2.10"

GOOD = {
    "example.test": """
        @           IN TXT "v=spf1 ip4:192.0.2.10 include:_spf.example.test -all"
        _spf        IN TXT "v=spf1 ip4:192.0.2.11 -all"
        _dmarc      IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@example.test"
        @           IN MX 10 mx.example.test.
        mx          IN A 192.0.2.50
        mta1        IN A 192.0.2.10
        _mta-sts    IN TXT "v=STSv1; id=20261123"
        _smtp._tls  IN TXT "v=TLSRPTv1; rua=mailto:tls@example.test"
    """,
    "2.0.192.in-addr.arpa": "10 IN PTR mta1.example.test.",
    "reports.example": 'example.test._report._dmarc IN TXT "v=DMARC1"',
}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[DNSServer, Path]]:
    data = tmp_path / "data"
    key = KeyStore(data).generate(DOMAIN, "s1", "rsa", 2048)
    with DNSServer(GOOD) as server:
        server.add(key.record_name, "TXT", txt_rdata(key.txt_value()))
        yield server, data


def run(world: tuple[DNSServer, Path], **flags: Any) -> tuple[int, dict[str, preflight.Check]]:
    server, data = world
    settings = make_settings(data.parent, ips=f"{IP}={'mta1.example.test'}", **flags)
    checks = preflight.run_checks(
        settings, DOMAIN, [], [IP], preflight.HostPort(server.host, server.port)
    )
    return preflight.exit_code(checks), {c.id: c for c in checks}


def test_a_good_domain_passes_everything(world: tuple[DNSServer, Path]) -> None:
    code, checks = run(world)
    assert code == 0, [c for c in checks.values() if c.status != "pass"]
    for expected in (
        "spf.record",
        "spf.all",
        "spf.lookups",
        f"spf.authorizes_ip:{IP}",
        "dkim.record:s1",
        "dkim.key:s1",
        "dkim.matches_private_key:s1",
        "dmarc.record",
        "dmarc.policy",
        "dmarc.alignment",
        "mx.return_path",
        f"ptr.fcrdns:{IP}",
        "mta_sts",
        "tls_rpt",
        "sluice.dkim_key",
    ):
        assert checks[expected].status == "pass", checks[expected]
    assert checks["spf.lookups"].summary == "1 of 10 DNS-querying terms"


def _replace(name: str, rdtype: str, *rdata: str) -> Callable[[DNSServer, Path], None]:
    def change(server: DNSServer, data: Path) -> None:
        server.remove(name, rdtype)
        for value in rdata:
            server.add(name, rdtype, value)

    return change


def _spf(record: str) -> Callable[[DNSServer, Path], None]:
    def change(server: DNSServer, data: Path) -> None:
        server.remove(DOMAIN, "TXT")
        server.add(DOMAIN, "TXT", txt_rdata(record))

    return change


def _many_includes(server: DNSServer, data: Path) -> None:
    terms = " ".join(f"include:i{n}.example.test" for n in range(11))
    _spf(f"v=spf1 ip4:192.0.2.10 {terms} -all")(server, data)
    for n in range(11):
        server.add(f"i{n}.example.test", "TXT", '"v=spf1 -all"')


def _loop(server: DNSServer, data: Path) -> None:
    _spf("v=spf1 ip4:192.0.2.10 include:a.example.test -all")(server, data)
    server.add("a.example.test", "TXT", '"v=spf1 include:b.example.test -all"')
    server.add("b.example.test", "TXT", '"v=spf1 include:a.example.test -all"')


def _rsa_record(bits: int, extra: str = "") -> Callable[[DNSServer, Path], None]:
    def change(server: DNSServer, data: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        public = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        import base64

        server.remove(f"s1._domainkey.{DOMAIN}", "TXT")
        server.add(
            f"s1._domainkey.{DOMAIN}",
            "TXT",
            txt_rdata(f"v=DKIM1; k=rsa;{extra} p={base64.b64encode(der).decode()}"),
        )

    return change


def _t_flag(server: DNSServer, data: Path) -> None:
    key = KeyStore(data).key(DOMAIN, "s1")
    server.remove(key.record_name, "TXT")
    server.add(
        key.record_name, "TXT", txt_rdata(key.txt_value().replace("v=DKIM1;", "v=DKIM1; t=y;"))
    )


BROKEN: list[tuple[str, Callable[[DNSServer, Path], None], dict[str, str], str, str, int]] = [
    # (name, change, settings, check id, status, exit code)
    (
        "two SPF records",
        lambda s, d: s.add(DOMAIN, "TXT", '"v=spf1 -all"'),
        {},
        "spf.record",
        "fail",
        2,
    ),
    ("no SPF", _replace(DOMAIN, "TXT"), {}, "spf.record", "fail", 2),
    ("+all", _spf("v=spf1 ip4:192.0.2.10 +all"), {}, "spf.all", "fail", 2),
    ("?all", _spf("v=spf1 ip4:192.0.2.10 ?all"), {}, "spf.all", "warn", 1),
    ("no all", _spf("v=spf1 ip4:192.0.2.10"), {}, "spf.all", "warn", 1),
    ("ptr mechanism", _spf("v=spf1 ip4:192.0.2.10 ptr -all"), {}, "spf.ptr", "warn", 1),
    ("include loop", _loop, {}, "spf.loop", "fail", 2),
    ("11 lookups", _many_includes, {}, "spf.lookups", "fail", 2),
    (
        "void lookups",
        _spf("v=spf1 ip4:192.0.2.10 a:n1.example.test a:n2.example.test a:n3.example.test -all"),
        {},
        "spf.void_lookups",
        "fail",
        2,
    ),
    (
        "IP not authorized",
        _spf("v=spf1 ip4:198.51.100.1 -all"),
        {},
        f"spf.authorizes_ip:{IP}",
        "fail",
        2,
    ),
    ("SPF syntax", _spf("v=spf1 ip4:192.0.2.10 include -all"), {}, "spf.syntax", "fail", 2),
    ("no DMARC", _replace(f"_dmarc.{DOMAIN}", "TXT"), {}, "dmarc.record", "fail", 2),
    (
        "p=none",
        _replace(f"_dmarc.{DOMAIN}", "TXT", '"v=DMARC1; p=none; rua=mailto:d@example.test"'),
        {},
        "dmarc.policy",
        "warn",
        1,
    ),
    (
        "no rua",
        _replace(f"_dmarc.{DOMAIN}", "TXT", '"v=DMARC1; p=reject"'),
        {},
        "dmarc.rua",
        "warn",
        1,
    ),
    (
        "unauthorized external rua",
        lambda s, d: (
            s.add_zone("elsewhere.example"),
            _replace(
                f"_dmarc.{DOMAIN}", "TXT", '"v=DMARC1; p=reject; rua=mailto:d@elsewhere.example"'
            )(s, d),
        ),
        {},
        "dmarc.rua_authorized:elsewhere.example",
        "warn",  # the reports are lost, not the mail
        1,
    ),
    (
        "authorized external rua",
        _replace(f"_dmarc.{DOMAIN}", "TXT", '"v=DMARC1; p=reject; rua=mailto:d@reports.example"'),
        {},
        "dmarc.rua_authorized:reports.example",
        "pass",
        0,
    ),
    (
        "misaligned From",
        lambda s, d: (
            KeyStore(d).generate("other.example", "s9"),
            s.add_zone("other.example", "bounces IN MX 10 mx\nmx IN A 192.0.2.60"),
        ),
        {"dkim_domain": "other.example", "bounce_domain": "bounces.other.example"},
        "dmarc.alignment",
        "fail",
        2,
    ),
    ("weak key", _rsa_record(1024), {}, "dkim.key:s1", "warn", 2),  # also no longer Sluice's key
    (
        "revoked key",
        _replace(f"s1._domainkey.{DOMAIN}", "TXT", '"v=DKIM1; k=rsa; p="'),
        {},
        "dkim.key:s1",
        "fail",
        2,
    ),
    ("mismatched key", _rsa_record(2048), {}, "dkim.matches_private_key:s1", "fail", 2),
    ("t=y", _t_flag, {}, "dkim.testing:s1", "warn", 1),
    ("no DKIM record", _replace(f"s1._domainkey.{DOMAIN}", "TXT"), {}, "dkim.record:s1", "fail", 2),
    ("no PTR", _replace("10.2.0.192.in-addr.arpa", "PTR"), {}, f"ptr.fcrdns:{IP}", "fail", 2),
    (
        "PTR not confirmed",
        _replace(f"mta1.{DOMAIN}", "A", "192.0.2.99"),
        {},
        f"ptr.fcrdns:{IP}",
        "fail",
        2,
    ),
    (
        "PTR not the EHLO name",
        lambda s, d: (
            _replace("10.2.0.192.in-addr.arpa", "PTR", "mail.example.test.")(s, d),
            s.add(f"mail.{DOMAIN}", "A", IP),
        ),
        {},
        f"ptr.fcrdns:{IP}",
        "warn",
        1,
    ),
    (
        "no return-path MX",
        lambda s, d: (s.remove(DOMAIN, "MX"), s.remove(DOMAIN, "A")),
        {},
        "mx.return_path",
        "fail",
        2,
    ),
    ("no MTA-STS", _replace(f"_mta-sts.{DOMAIN}", "TXT"), {}, "mta_sts", "warn", 1),
    ("no TLS-RPT", _replace(f"_smtp._tls.{DOMAIN}", "TXT"), {}, "tls_rpt", "warn", 1),
    ("SERVFAIL", lambda s, d: s.fail(f"_dmarc.{DOMAIN}", "SERVFAIL"), {}, "dmarc.dns", "error", 3),
]


@pytest.mark.parametrize(
    ("name", "change", "flags", "check_id", "status", "code"), BROKEN, ids=[b[0] for b in BROKEN]
)
def test_broken_domains(
    world: tuple[DNSServer, Path],
    name: str,
    change: Callable[[DNSServer, Path], None],
    flags: dict[str, str],
    check_id: str,
    status: str,
    code: int,
) -> None:
    server, data = world
    change(server, data)
    got_code, checks = run(world, **flags)
    assert check_id in checks, (name, list(checks))
    assert checks[check_id].status == status, (name, checks[check_id])
    assert got_code == code, (name, [c for c in checks.values() if c.status != "pass"])
    if status != "pass":
        assert checks[check_id].fix, "every problem comes with a fix"


@pytest.mark.slow
def test_the_command_with_a_running_gateway(
    world: tuple[DNSServer, Path], serve_factory: Any
) -> None:
    server, data = world
    served = serve_factory(workers=0, data_dir=data)
    message = Path(data.parent / "message.json")
    body = json.loads(FIXTURE.read_text())
    body["from"]["email"] = f"news@{DOMAIN}"
    message.write_text(json.dumps(body))
    base = [
        sys.executable,
        "-m",
        "gateway.cli",
        "preflight",
        DOMAIN,
        "--ip",
        IP,
        "--nameserver",
        server.nameserver,
        "--data-dir",
        str(data),
        "--message",
        str(message),
    ]
    env = {
        "PATH": "/usr/bin:/bin",
        "SLUICE_IPS": f"{IP}=mta1.example.test",
        "SLUICE_PUBLIC_URL": served.url,
    }
    human = subprocess.run(base, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env)
    assert human.stdout.startswith(f"Preflight for {DOMAIN}"), human.stderr
    lines = {
        line.split()[1]: line.split()[0]
        for line in human.stdout.splitlines()[1:-1]
        if line.split() and line.split()[0] in ("PASS", "WARN", "FAIL", "ERROR")
    }
    # a loopback public URL is not under the domain, and the IP has no warmup: warnings only
    assert {k for k, v in lines.items() if v != "PASS"} == {
        "sluice.tracking_domain",
        f"sluice.warmup:{IP}",
    }
    assert human.returncode == 1
    for passed in (
        "sluice.tracking_roundtrip",
        "sluice.suppression_roundtrip",
        "content.template",
        "content.img_alt",
        "content.text_part",
        "content.html_size",
        "content.from_domain",
    ):
        assert lines[passed] == "PASS", (passed, human.stdout)

    server.remove(DOMAIN, "TXT")
    server.add(DOMAIN, "TXT", '"v=spf1 ip4:192.0.2.10 +all"')
    broken = subprocess.run(
        [*base, "--json"], capture_output=True, text=True, cwd=PROJECT_ROOT, env=env
    )
    assert broken.returncode == 2
    doc = json.loads(broken.stdout)
    assert doc["domain"] == DOMAIN
    [spf_all] = [c for c in doc["checks"] if c["id"] == "spf.all"]
    assert spf_all["status"] == "fail" and "-all" in spf_all["fix"]
    bad = subprocess.run(
        [*base[:4], "not a domain"], capture_output=True, text=True, cwd=PROJECT_ROOT, env=env
    )
    assert bad.returncode == 3 and "Traceback" not in bad.stderr


def test_content_checks() -> None:
    body = json.loads(FIXTURE.read_text())
    body["from"]["email"] = f"news@{DOMAIN}"
    good = {c.id: c.status for c in preflight.content_checks(DOMAIN, body)}
    assert set(good.values()) == {"pass"}, good
    broken = json.loads(FIXTURE.read_text())  # From shop.example.com, not example.test
    broken.pop("text")
    broken["html"] = (
        broken["html"].replace('alt="Example Shop"', "") + "<!--" + "x" * 110_000 + "-->"
    )
    found = {c.id: c for c in preflight.content_checks(DOMAIN, broken)}
    assert found["content.text_part"].status == "warn"
    assert (
        found["content.img_alt"].status == "warn" and "1 of 6" in found["content.img_alt"].summary
    )
    assert found["content.html_size"].status == "fail"
    assert found["content.from_domain"].status == "warn"
    assert "shop.example.com" in found["content.links"].detail
    broken["subject"] = "{{ first_name }}, {{ coupon_code }}"
    unresolved = {c.id: c for c in preflight.content_checks(DOMAIN, broken)}["content.template"]
    assert unresolved.status == "fail" and "coupon_code" in unresolved.detail
    refused = preflight.content_checks(DOMAIN, {"from": "x"})
    assert refused[0].id == "content.request" and refused[0].status == "fail"
