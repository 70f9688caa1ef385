"""DKIM: keys made by `sluice dkim keygen`, signatures checked by three independent verifiers.

dkimpy, Perl's Mail::DKIM and OpenDKIM's opendkim-testmsg each look the keys up in a
real DNS server on loopback serving exactly the records keygen printed. OpenDKIM only
reads /etc/resolv.conf, so it runs in a private mount namespace (``unshare -m``) where
that file names a loopback DNS server on port 53. `.ci/run` installs the Debian
packages; a missing tool fails the test unless SLUICE_ALLOW_MISSING_TOOLS=1.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest
from dkim.canonicalization import Relaxed
from hypothesis import given
from hypothesis import strategies as st

from loadtests.harness import PROJECT_ROOT, cart_reminder, fixture_message
from mta.dkim import OVERSIGNED, DkimSigner, relaxed_body, relaxed_headers, signed_fields
from mta.dkimkeys import KeyStore
from tests.conftest import Sink, need_tools, tool_missing
from tests.dnsserver import DNSServer
from tests.test_end_to_end import post, wait_status

PERL_VERIFIER = Path(__file__).parent / "tools" / "verify_dkim.pl"
DOMAIN = "shop.example.com"  # the fixture's From domain


def sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=60,
    )


def keygen(data_dir: Path, selector: str, algorithm: str = "rsa") -> tuple[str, str]:
    """Run keygen; (record name, rdata text) from the zone line it printed."""
    done = sluice(
        "dkim",
        "keygen",
        "--data-dir",
        str(data_dir),
        "--domain",
        DOMAIN,
        "--selector",
        selector,
        "--algorithm",
        algorithm,
    )
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stdout.splitlines() if " IN TXT " in x]
    match = re.fullmatch(r"(\S+)\. IN TXT \( (.+) \)", line)
    assert match, line
    strings = re.findall(r'"([^"]*)"', match.group(2))
    assert strings and all(len(s.encode()) <= 255 for s in strings)
    return match.group(1), match.group(2)


# --- keys and the command line --------------------------------------------------------


@pytest.mark.slow  # runs the CLI as processes
def test_keygen_prints_the_record_and_keeps_keys_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    name, rdata = keygen(data, "s2026")
    assert name == f"s2026._domainkey.{DOMAIN}"
    value = "".join(re.findall(r'"([^"]*)"', rdata))
    assert value.startswith("v=DKIM1; k=rsa; p=MII")
    assert len(re.findall(r'"', rdata)) == 4, "an RSA-2048 record needs two strings"
    key_file = data / "dkim" / DOMAIN / "s2026.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "dkim" / "keys.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "dkim").stat().st_mode) == 0o700

    _, ed_rdata = keygen(data, "e2026", "ed25519")
    assert re.fullmatch(r'"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}="', ed_rdata)
    keygen(data, "s2027")  # a new RSA key takes over; the old one stays, inactive
    listing = sluice("dkim", "list", "--data-dir", str(data))
    rows = {tuple(line.split()[1:3]): line.split()[-1] for line in listing.stdout.splitlines()[1:]}
    assert rows == {("e2026", "ed25519"): "yes", ("s2026", "rsa"): "no", ("s2027", "rsa"): "yes"}

    assert (
        sluice(
            "dkim", "activate", "--data-dir", str(data), "--domain", DOMAIN, "--selector", "s2026"
        ).returncode
        == 0
    )
    active = {k.selector for k in KeyStore(data).all_keys() if k.active}
    assert active == {"s2026", "e2026"}

    again = sluice(
        "dkim", "keygen", "--data-dir", str(data), "--domain", DOMAIN, "--selector", "s2026"
    )
    assert again.returncode == 2 and "already has a key with selector 's2026'" in again.stderr
    for bad in (
        ["--domain", "not a domain", "--selector", "x"],
        ["--domain", DOMAIN, "--selector", "a/../../b"],
        ["--domain", DOMAIN, "--selector", "s9", "--bits", "512"],
    ):
        refused = sluice("dkim", "keygen", "--data-dir", str(data), *bad)
        assert refused.returncode == 2 and refused.stderr.startswith("sluice: "), refused
        assert "Traceback" not in refused.stderr
    assert not list((data / "dkim").glob("*/a*")), "nothing written for a refused selector"


# --- the signature itself --------------------------------------------------------------


@given(st.lists(st.sampled_from([b" ", b"\t", b"\r\n", b"a", b"  ", b"\t \r\n"])).map(b"".join))
def test_relaxed_body_equals_dkimpy(body: bytes) -> None:
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


_HEADER_PIECES = [b" ", b"\t", b"\r\n", b"\n", b"\r", b"a", b"  ", b"\t \r\n", b"\x0b", b"\x0c"]


@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from([b"Subject", b"X-A ", b"FROM\t", b" b"])).map(b"".join),
            st.lists(st.sampled_from(_HEADER_PIECES)).map(b"".join),
        ),
        max_size=4,
    )
)
def test_relaxed_headers_equal_dkimpy(headers: list[tuple[bytes, bytes]]) -> None:
    assert relaxed_headers(headers) == Relaxed.canonicalize_headers(headers)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"From", b"to", b"Subject", b"DATE", b"Cc", b"X-A", b"Reply-To"]),
            st.sampled_from([b" a\r\n", b" b\r\n", b" c\r\n"]),
        ),
        max_size=12,
    )
)
def test_signed_fields_are_what_dkimpy_selects(headers: list[tuple[bytes, bytes]]) -> None:
    names, selected = signed_fields(headers)
    assert selected == dkim.select_headers(headers, names)
    for name in OVERSIGNED:  # once more than present: none can be added after signing
        present = sum(field.lower() == name for field, _ in headers)
        assert names.count(name) == present + 1


def _txt_lookup(dns_server: DNSServer) -> Any:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns_server.host]
    resolver.port = dns_server.port

    def lookup(name: bytes, timeout: float = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT", lifetime=timeout)
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[Path, DNSServer, dict[str, str]]]:
    """A data dir with an RSA and an Ed25519 key, the records keygen printed served on loopback."""
    data = tmp_path / "data"
    with DNSServer() as dns_server:
        records = {}
        for selector, algorithm in (("s2026", "rsa"), ("e2026", "ed25519")):
            name, rdata = keygen(data, selector, algorithm)
            dns_server.add(name, "TXT", rdata)
            records[name] = rdata
        yield data, dns_server, records


def test_signature_tags_oversigning_and_no_length(
    keyed: tuple[Path, DNSServer, dict[str, str]],
) -> None:
    data, dns_server, _ = keyed
    signed = DkimSigner(KeyStore(data)).sign(fixture_message(), DOMAIN)
    headers = signed.split(b"\r\n\r\n", 1)[0].decode()
    sigs = re.findall(r"^DKIM-Signature:([^\r\n]*(?:\r\n\t[^\r\n]*)*)", headers, re.M)
    assert len(sigs) == 2
    tags = [
        dict(t.strip().split("=", 1) for t in re.sub(r"\s", "", s).split(";") if t) for s in sigs
    ]
    assert [t["a"] for t in tags] == ["rsa-sha256", "ed25519-sha256"], "RSA first"
    for t in tags:
        assert t["c"] == "relaxed/relaxed" and t["d"] == DOMAIN and "l" not in t
        names = t["h"].split(":")
        for once_more in ("from", "to", "subject", "date", "message-id", "reply-to"):
            assert names.count(once_more) == 2, (once_more, names)
        for absent in ("list-unsubscribe", "list-unsubscribe-post"):
            assert names.count(absent) == 1, "absent headers are signed too: none may be added"
    lookup = _txt_lookup(dns_server)
    assert dkimpy_verdicts(signed, lookup) == [True, True]


# --- delivered messages, three verifiers -----------------------------------------------


def variants() -> dict[str, dict[str, Any]]:
    def one(**changes: Any) -> dict[str, Any]:
        body = cart_reminder()
        body["recipients"] = body["recipients"][:1]
        recipient = body["recipients"][0]
        recipient.update(changes.pop("recipient", {}))
        body.update(changes)
        return body

    long_word = "x" * 5000
    return {
        "fixture": one(),
        "non-ascii": one(
            subject="Grüße {{ first_name }}: Ihr Wärmekissen wartet 🎧 — ça va?",
            **{"from": {"email": f"news@{DOMAIN}", "name": "Bäckerei Müller & Söhne"}},
            recipient={"name": "Zoë Ångström-Ødegård"},
        ),
        "8-bit": one(
            text="Preis: 49 € — Straße, naïve café, 日本語のテキスト, emoji 🎉\n",
            html="<p>Preis: 49&nbsp;€ — Straße, naïve café, 日本語 🎉</p>",
        ),
        "long-lines": one(
            text=f"start {long_word} end\n" + "word " * 3000,
            html="<p>" + "<span>long line</span>" * 1500 + "</p>",
        ),
        "bare-lf": one(
            text="line one\nline two\rline three\r\n\n.starts with a dot\n..two dots\nlast",
            html="<p>one</p>\n<p>two</p>\r<p>three</p>\n.\n<p>end</p>",
        ),
    }


def dkimpy_verdicts(message: bytes, lookup: Any) -> list[bool]:
    """dkimpy's verdict on each signature (it raises on a body hash mismatch: that is False)."""
    verdicts = []
    for i in range(message.count(b"DKIM-Signature:")):
        try:
            verdicts.append(bool(dkim.DKIM(message).verify(idx=i, dnsfunc=lookup)))
        except dkim.DKIMException:
            verdicts.append(False)
    return verdicts


def perl_verdicts(message: bytes, dns_server: DNSServer) -> dict[str, str]:
    done = subprocess.run(
        ["perl", str(PERL_VERIFIER), dns_server.host, str(dns_server.port)],
        input=message,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = {}
    for line in done.stdout.decode().splitlines():
        result, _domain, _selector, algorithm = line.split(" ", 4)[:4]
        out[algorithm] = result if result != "invalid" else line.split(" ", 4)[4]
    return out


class OpenDkim:
    """opendkim-testmsg, its resolver pointed at a loopback DNS server on port 53."""

    def __init__(self, resolv_conf: Path) -> None:
        self.resolv_conf = resolv_conf

    def verify(self, message: bytes) -> tuple[int, str]:
        script = f"mount --bind {self.resolv_conf} /etc/resolv.conf && exec opendkim-testmsg"
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c", script], input=message, capture_output=True, timeout=60
        )
        return done.returncode, done.stderr.decode().strip()


@pytest.fixture
def opendkim(tmp_path: Path) -> Iterator[tuple[OpenDkim, DNSServer]]:
    need_tools("opendkim-testmsg", "unshare")
    host = "127.0.0.153"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    try:
        server = DNSServer(host=host, port=53).start()
    except OSError as exc:
        server = None
        reason = f"cannot listen on {host}:53: {exc}"
    if probe.returncode != 0 or server is None:
        reason = reason if server is None else f"unshare -m: {probe.stderr.decode().strip()}"
        tool_missing(f"OpenDKIM needs root for its loopback resolver: {reason}")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {host}\noptions attempts:2 timeout:2\n")
    try:
        yield OpenDkim(resolv), server
    finally:
        server.stop()


def split_signatures(message: bytes) -> list[bytes]:
    """One copy of ``message`` per DKIM-Signature, keeping only that one."""
    blocks = re.findall(rb"DKIM-Signature:.*?\r\n(?=[^\t ])", message, re.DOTALL)
    rest = message
    for block in blocks:
        rest = rest.replace(block, b"", 1)
    return [block + rest for block in blocks]


def tampered(message: bytes) -> dict[str, bytes]:
    head, body = message.split(b"\r\n\r\n", 1)
    i = body.index(b"Noise")
    return {
        "body byte": head + b"\r\n\r\n" + body[:i] + b"M" + body[i + 1 :],
        "subject": re.sub(rb"\r\nSubject: [^\r]*", b"\r\nSubject: You won a prize", message),
        "second From": b"From: Example Shop <security@evil.example>\r\n" + message,
    }


@pytest.mark.slow
def test_delivered_messages_verify_with_three_implementations_and_tampering_fails(
    serve_factory: Any,
    sink: Sink,
    keyed: tuple[Path, DNSServer, dict[str, str]],
    opendkim: tuple[OpenDkim, DNSServer],
) -> None:
    need_tools("perl")
    data, dns_server, records = keyed
    checker, dns53 = opendkim
    for name, rdata in records.items():  # the same records on the port-53 server
        dns53.add(name, "TXT", rdata)

    served = serve_factory(relay=sink.relay, workers=1, data_dir=data)
    cases = variants()
    ids = {}
    for case, body in cases.items():
        status, answer = post(served, "/v1/messages", body)
        assert status == 202, answer
        ids[case] = answer["results"][0]["message_id"]
    for case, message_id in ids.items():
        assert wait_status(served, message_id, "delivered")["status"] == "delivered", case
    received = {
        case: next(r for r in sink.wait_for(len(cases)) if ids[case] in r.data.decode("ascii"))
        for case in cases
    }
    lookup = _txt_lookup(dns_server)
    for case, got in received.items():
        raw = got.data
        assert raw.count(b"DKIM-Signature:") == 2, case
        assert dkimpy_verdicts(raw, lookup) == [True, True], case
        verdicts = perl_verdicts(raw, dns_server)
        assert verdicts["rsa-sha256"] == "pass", (case, verdicts)
        # Debian's Mail::DKIM (1.20230212) predates Ed25519: it must say so, not pass or fail.
        assert "unsupported algorithm" in verdicts["ed25519-sha256"], (case, verdicts)
        for single in split_signatures(raw):
            assert checker.verify(single) == (0, ""), (case, single[:120])

    for what, bad in tampered(received["fixture"].data).items():
        assert dkimpy_verdicts(bad, lookup) == [False, False], what
        assert perl_verdicts(bad, dns_server)["rsa-sha256"] == "fail", what
        for single in split_signatures(bad):
            code, detail = checker.verify(single)
            # A changed byte: "Bad signature"; a second From: refused as a syntax error.
            assert code != 0 and ("Bad signature" in detail or "Syntax error" in detail), (
                what,
                code,
                detail,
            )


@pytest.mark.slow
def test_keys_created_while_serving_are_used_within_seconds(
    serve_factory: Any, sink: Sink, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    served = serve_factory(relay=sink.relay, workers=1, data_dir=data)
    body = variants()["fixture"]
    status, answer = post(served, "/v1/messages", body)
    assert status == 202
    assert wait_status(served, answer["results"][0]["message_id"], "delivered")
    assert b"DKIM-Signature:" not in sink.wait_for(1)[0].data, "no key yet: unsigned"
    assert "no active DKIM key for shop.example.com" in served.log()

    keygen(data, "s2026")
    time.sleep(1.5)  # workers re-read the key index at most once a second
    status, answer = post(served, "/v1/messages", body)
    assert wait_status(served, answer["results"][0]["message_id"], "delivered")
    assert sink.wait_for(2)[1].data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
