"""``sluice preflight DOMAIN``: the pre-launch checklist for a sending domain.

Each check has a stable id, a status (``pass``, ``warn``, ``fail``, or ``error`` when
DNS itself failed: SERVFAIL or a timeout is "could not check", never "missing"),
a one-line summary, detail, and for anything but a pass a one-line fix. Exit code:
0 all pass, 1 warnings only, 2 any failure, 3 DNS could not be asked.

Libraries: dnspython for every lookup (``--nameserver`` points it anywhere, port
included); pyspf for RFC 7208 ``check_host`` and its lookup and void-lookup limits
(it shares dnspython's resolver); publicsuffixlist for organizational domains;
dkimpy to verify a probe message signed with Sluice's own key against the
published record. checkdmarc was not used: it cannot be pointed at a nameserver
on another port, which the tests need, and its DMARC parsing is a few lines here.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import dkim
import dns.exception
import dns.name
import dns.resolver
import dns.reversename
import spf
from cryptography.hazmat.primitives.serialization import load_der_public_key
from publicsuffixlist import PublicSuffixList

from core.settings import HostPort, Settings
from mta.dkim import DkimSigner, SigningKey, sign
from mta.dkimkeys import KeyStore

_PSL = PublicSuffixList()
PROBE_IP = "192.0.2.255"  # TEST-NET-1: never authorized, so check_host walks the whole tree


class DnsFailure(Exception):
    """The nameserver failed (SERVFAIL, timeout, refused): the answer is unknown."""


@dataclass
class Check:
    id: str
    status: str  # pass | warn | fail | error
    summary: str
    detail: str = ""
    fix: str = ""


def org_domain(name: str) -> str:
    return _PSL.privatesuffix(name.lower().rstrip(".")) or name.lower()


class Dns:
    def __init__(self, nameserver: HostPort | None, timeout: float = 5.0) -> None:
        self.resolver = dns.resolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            self.resolver.nameservers = [nameserver.host]
            self.resolver.port = nameserver.port
        self.resolver.lifetime = timeout
        self.resolver.retry_servfail = False
        dns.resolver.default_resolver = self.resolver  # pyspf asks through dnspython's default

    def query(self, name: str, rdtype: str) -> list[Any] | None:
        """The records, or None when the name or type does not exist."""
        try:
            return list(self.resolver.resolve(name, rdtype, raise_on_no_answer=False) or [])
        except dns.resolver.NXDOMAIN:
            return None
        except (
            dns.resolver.NoNameservers,
            dns.exception.Timeout,
            dns.resolver.LifetimeTimeout,
        ) as exc:
            raise DnsFailure(f"{name} {rdtype}: {exc.__class__.__name__}") from exc

    def txt(self, name: str) -> list[str]:
        return [
            b"".join(r.strings).decode("utf-8", "replace") for r in self.query(name, "TXT") or []
        ]

    def addresses(self, name: str) -> list[str]:
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            out += [r.address for r in self.query(name, rdtype) or []]
        return out


def _tags(record: str) -> dict[str, str]:
    out = {}
    for part in record.split(";"):
        key, _, value = part.strip().partition("=")
        if key:
            out[key.strip().lower()] = re.sub(r"\s+", "", value)
    return out


# --- SPF ------------------------------------------------------------------------------


def _spf_records(resolver: Dns, domain: str) -> list[str]:
    return [
        t
        for t in resolver.txt(domain)
        if t.lower().startswith("v=spf1") and (len(t) == 6 or t[6] == " ")
    ]


def _spf_loop(resolver: Dns, domain: str, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The first include/redirect chain that comes back to a name already on it."""
    if domain in path:
        return (*path, domain)
    if len(path) > 12:
        return None
    records = _spf_records(resolver, domain)
    if len(records) != 1:
        return None
    for term in records[0].split()[1:]:
        name = None
        if term.lower().lstrip("+-~?").startswith("include:"):
            name = term.split(":", 1)[1]
        elif term.lower().startswith("redirect="):
            name = term.split("=", 1)[1]
        if name and "%" not in name:
            found = _spf_loop(resolver, name.lower().rstrip("."), (*path, domain))
            if found:
                return found
    return None


def spf_checks(resolver: Dns, domain: str, ips: list[str]) -> list[Check]:
    records = _spf_records(resolver, domain)
    if not records:
        return [
            Check(
                "spf.record",
                "fail",
                "no SPF record",
                f"no TXT record starting v=spf1 at {domain}",
                f'publish TXT at {domain}: "v=spf1 ip4:<your sending IPs> -all"',
            )
        ]
    if len(records) > 1:
        return [
            Check(
                "spf.record",
                "fail",
                f"{len(records)} SPF records (must be exactly one)",
                " | ".join(records),
                "merge them into one v=spf1 record",
            )
        ]
    record = records[0]
    checks = [Check("spf.record", "pass", "one SPF record", record)]
    if len(record) > 450:
        checks.append(
            Check(
                "spf.size",
                "warn",
                f"the record is {len(record)} bytes",
                "over 450 bytes risks DNS answers over UDP limits",
                "flatten or shorten it",
            )
        )
    loop = _spf_loop(resolver, domain.lower())
    if loop:
        checks.append(
            Check(
                "spf.loop",
                "fail",
                "include/redirect loop",
                " -> ".join(loop),
                "remove the include that points back",
            )
        )
    terms = [t.lower() for t in record.split()[1:]]
    all_term = next((t for t in terms if t.lstrip("+-~?") == "all"), None)
    if all_term in ("all", "+all"):
        checks.append(
            Check(
                "spf.all",
                "fail",
                "+all authorizes every host on the internet",
                record,
                "end the record with -all (or ~all)",
            )
        )
    elif all_term == "?all":
        checks.append(
            Check(
                "spf.all",
                "warn",
                "?all is neutral: unlisted senders are not refused",
                record,
                "end the record with -all (or ~all)",
            )
        )
    elif all_term is None and not any(t.startswith("redirect=") for t in terms):
        checks.append(
            Check(
                "spf.all",
                "warn",
                "no all mechanism: unlisted senders are neutral",
                record,
                "end the record with -all (or ~all)",
            )
        )
    else:
        checks.append(Check("spf.all", "pass", f"ends with {all_term or 'a redirect'}"))
    if any(t.lstrip("+-~?").startswith("ptr") for t in terms):
        checks.append(
            Check(
                "spf.ptr",
                "warn",
                "the ptr mechanism is deprecated (RFC 7208 5.5)",
                record,
                "list the addresses with ip4:/ip6: instead",
            )
        )
    query = spf.query(i=PROBE_IP, s=f"postmaster@{domain}", h=domain, querytime=20)
    result, _, explanation = query.check()
    if result == "temperror":
        checks.append(
            Check("spf.lookups", "error", "SPF evaluation hit a DNS failure", explanation)
        )
    elif (
        result == "permerror" and "lookup" in explanation.lower() and "void" in explanation.lower()
    ):
        checks.append(
            Check(
                "spf.void_lookups",
                "fail",
                "more than 2 void lookups",
                explanation,
                "remove includes and names that do not exist",
            )
        )
    elif result == "permerror" and "lookups" in explanation.lower():
        checks.append(
            Check(
                "spf.lookups",
                "fail",
                "more than 10 DNS-querying terms",
                explanation,
                "flatten includes into ip4:/ip6: ranges",
            )
        )
    elif result == "permerror":
        checks.append(
            Check(
                "spf.syntax", "fail", "the record does not parse", explanation, "fix the SPF syntax"
            )
        )
    else:
        checks.append(
            Check(
                "spf.lookups",
                "pass",
                f"{query.lookups} of 10 DNS-querying terms",
                f"{query.void_lookups} void lookups",
            )
        )
    for ip in ips:
        result, _, explanation = spf.query(i=ip, s=f"postmaster@{domain}", h=domain).check()
        status = {"pass": "pass", "temperror": "error"}.get(result, "fail")
        checks.append(
            Check(
                f"spf.authorizes_ip:{ip}",
                status,
                f"check_host({ip}) = {result}",
                explanation,
                "" if status == "pass" else f"add ip4:{ip} to the record",
            )
        )
    return checks


# --- DKIM -------------------------------------------------------------------------------


def dkim_checks(resolver: Dns, domain: str, selectors: list[str], store: KeyStore) -> list[Check]:
    held = {(k.domain, k.selector): k for k in store.all_keys()}
    if not selectors:
        selectors = [k.selector for k in store.all_keys() if k.domain == domain and k.active]
    if not selectors:
        return [
            Check(
                "dkim.key",
                "fail",
                f"no DKIM selector to check for {domain}",
                "Sluice holds no active key for it and no --selector was given",
                f"sluice dkim keygen --domain {domain} --selector s1, publish the record",
            )
        ]
    checks = []
    for selector in selectors:
        name = f"{selector}._domainkey.{domain}"
        records = [t for t in resolver.txt(name) if "p=" in t]
        if not records:
            checks.append(
                Check(
                    f"dkim.record:{selector}",
                    "fail",
                    f"no DKIM record at {name}",
                    "",
                    f"publish it: sluice dkim record --domain {domain} --selector {selector}",
                )
            )
            continue
        tags = _tags(records[0])
        if tags.get("v", "DKIM1") != "DKIM1" or len(records) > 1:
            checks.append(
                Check(
                    f"dkim.record:{selector}",
                    "fail",
                    "malformed DKIM record",
                    records[0][:200],
                    "publish exactly one v=DKIM1 record",
                )
            )
            continue
        checks.append(Check(f"dkim.record:{selector}", "pass", f"record at {name}"))
        if not tags.get("p"):
            checks.append(
                Check(
                    f"dkim.key:{selector}",
                    "fail",
                    "the key is revoked (empty p=)",
                    "",
                    "publish the current key or use another selector",
                )
            )
            continue
        algorithm = tags.get("k", "rsa")
        try:
            raw = base64.b64decode(tags["p"])
        except ValueError:
            checks.append(
                Check(
                    f"dkim.key:{selector}", "fail", "p= is not base64", "", "republish the record"
                )
            )
            continue
        if algorithm == "ed25519":
            checks.append(
                Check(
                    f"dkim.key:{selector}",
                    "pass" if len(raw) == 32 else "fail",
                    "Ed25519 key" if len(raw) == 32 else "bad Ed25519 key",
                )
            )
        else:
            try:
                bits = load_der_public_key(raw).key_size  # type: ignore[union-attr]
            except (ValueError, AttributeError):
                checks.append(
                    Check(
                        f"dkim.key:{selector}",
                        "fail",
                        "p= is not an RSA public key",
                        "",
                        "republish the record",
                    )
                )
                continue
            status = "pass" if bits >= 2048 else "warn" if bits >= 1024 else "fail"
            checks.append(
                Check(
                    f"dkim.key:{selector}",
                    status,
                    f"RSA-{bits}",
                    "",
                    "" if status == "pass" else "rotate to a 2048-bit key",
                )
            )
        if "y" in tags.get("t", "").split(":"):
            checks.append(
                Check(
                    f"dkim.testing:{selector}",
                    "warn",
                    "t=y: receivers may ignore failures",
                    "",
                    "remove t=y once signatures verify",
                )
            )
        key = held.get((domain, selector))
        if key is None:
            checks.append(
                Check(
                    f"dkim.matches_private_key:{selector}",
                    "warn",
                    "Sluice holds no private key for this selector",
                    "",
                    "sign with a selector Sluice holds (sluice dkim list)",
                )
            )
            continue
        probe = (
            f"From: preflight@{domain}\r\nTo: probe@{domain}\r\nSubject: preflight\r\n"
            "Date: Mon, 23 Nov 2026 00:00:00 +0000\r\nMessage-ID: <p@x>\r\n\r\nprobe\r\n"
        ).encode()
        signed = sign(probe, [SigningKey.of(key, key.load())])

        def lookup(qname: bytes, timeout: float = 5) -> bytes:
            return "".join(resolver.txt(qname.decode().rstrip("."))).encode()

        try:
            good = bool(dkim.DKIM(signed).verify(dnsfunc=lookup))
        except dkim.DKIMException:
            good = False
        checks.append(
            Check(
                f"dkim.matches_private_key:{selector}",
                "pass" if good else "fail",
                "a probe signed with Sluice's key verifies against the record"
                if good
                else "the published key is not Sluice's key for this selector",
                "",
                ""
                if good
                else f"publish: sluice dkim record --domain {domain} --selector {selector}",
            )
        )
    return checks


# --- DMARC -------------------------------------------------------------------------------


def _dmarc_record(resolver: Dns, domain: str) -> tuple[str | None, list[str]]:
    for name in dict.fromkeys([domain, org_domain(domain)]):
        records = [t for t in resolver.txt(f"_dmarc.{name}") if t.upper().startswith("V=DMARC1")]
        if records:
            return name, records
    return None, []


def _aligned(a: str, b: str, mode: str) -> bool:
    return a.lower() == b.lower() if mode == "s" else org_domain(a) == org_domain(b)


def dmarc_checks(
    resolver: Dns, domain: str, dkim_domain: str | None, return_domain: str
) -> list[Check]:
    where, records = _dmarc_record(resolver, domain)
    if not records:
        return [
            Check(
                "dmarc.record",
                "fail",
                "no DMARC record",
                f"nothing at _dmarc.{domain} or _dmarc.{org_domain(domain)}",
                f'publish TXT at _dmarc.{domain}: "v=DMARC1; p=none; rua=mailto:dmarc@{domain}"',
            )
        ]
    if len(records) > 1:
        return [
            Check(
                "dmarc.record",
                "fail",
                "more than one DMARC record",
                " | ".join(records),
                "keep exactly one",
            )
        ]
    tags = _tags(records[0])
    checks = [Check("dmarc.record", "pass", f"record at _dmarc.{where}", records[0])]
    policy = tags.get("sp" if where != domain and "sp" in tags else "p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        checks.append(
            Check("dmarc.policy", "fail", "no valid p= tag", records[0], "add p=none to start")
        )
    elif policy == "none":
        checks.append(
            Check(
                "dmarc.policy",
                "warn",
                "p=none: failing mail is delivered anyway",
                "",
                "move to p=quarantine once reports look clean",
            )
        )
    else:
        checks.append(Check("dmarc.policy", "pass", f"p={policy}"))
    rua = [u for u in tags.get("rua", "").split(",") if u.lower().startswith("mailto:")]
    if not rua:
        checks.append(
            Check(
                "dmarc.rua",
                "warn",
                "no rua: you get no aggregate reports",
                "",
                f"add rua=mailto:dmarc@{domain}",
            )
        )
    for uri in rua:
        target = uri[7:].split("!")[0].rpartition("@")[2].lower()
        if org_domain(target) == org_domain(domain):
            checks.append(Check(f"dmarc.rua:{target}", "pass", f"reports to {target}"))
            continue
        grant = f"{domain}._report._dmarc.{target}"
        ok = any(t.upper().startswith("V=DMARC1") for t in resolver.txt(grant))
        checks.append(
            Check(
                f"dmarc.rua_authorized:{target}",
                "pass" if ok else "fail",
                f"external report address at {target}" + ("" if ok else " is not authorized"),
                grant,
                "" if ok else f'{target} must publish TXT "v=DMARC1" at {grant}',
            )
        )
    adkim, aspf = tags.get("adkim", "r").lower(), tags.get("aspf", "r").lower()
    dkim_ok = dkim_domain is not None and _aligned(dkim_domain, domain, adkim)
    spf_ok = _aligned(return_domain, domain, aspf)
    detail = f"DKIM d={dkim_domain or '(none)'} ({adkim}), return path {return_domain} ({aspf})"
    status = "pass" if dkim_ok and spf_ok else "warn" if dkim_ok or spf_ok else "fail"
    checks.append(
        Check(
            "dmarc.alignment",
            status,
            {
                "pass": "DKIM and SPF both align with the From domain",
                "warn": "only one of DKIM and SPF aligns with the From domain",
                "fail": "neither DKIM nor SPF aligns: DMARC fails",
            }[status],
            detail,
            ""
            if status == "pass"
            else "sign with a key of the From domain and use a return-path domain under it",
        )
    )
    return checks


# --- infrastructure ------------------------------------------------------------------------


def infrastructure_checks(
    resolver: Dns, domain: str, return_domain: str, ips: list[str], ehlo: dict[str, str]
) -> list[Check]:
    checks = []
    mx = resolver.query(return_domain, "MX")
    if mx or resolver.addresses(return_domain):
        checks.append(Check("mx.return_path", "pass", f"{return_domain} receives mail (bounces)"))
    else:
        checks.append(
            Check(
                "mx.return_path",
                "fail",
                f"{return_domain} has no MX or address",
                "bounces and complaints cannot come back",
                f"publish an MX for {return_domain} that reaches sluice --inbound",
            )
        )
    for ip in ips:
        names = [
            r.target.to_text().rstrip(".").lower()
            for r in resolver.query(dns.reversename.from_address(ip).to_text(), "PTR") or []
        ]
        if not names:
            checks.append(
                Check(
                    f"ptr.fcrdns:{ip}",
                    "fail",
                    f"{ip} has no PTR record",
                    "",
                    f"ask the IP's owner for a PTR naming your MTA ({ehlo.get(ip, 'mta.' + domain)})",
                )
            )
            continue
        confirmed = [n for n in names if ip in resolver.addresses(n)]
        if not confirmed:
            checks.append(
                Check(
                    f"ptr.fcrdns:{ip}",
                    "fail",
                    f"PTR {names[0]} does not resolve back to {ip}",
                    "",
                    f"publish A/AAAA {names[0]} -> {ip}",
                )
            )
            continue
        expected = ehlo.get(ip)
        if expected and expected not in confirmed:
            checks.append(
                Check(
                    f"ptr.fcrdns:{ip}",
                    "warn",
                    f"PTR {confirmed[0]} is not the EHLO name {expected}",
                    "",
                    f"set --ips {ip}={confirmed[0]} or fix the PTR",
                )
            )
        else:
            checks.append(Check(f"ptr.fcrdns:{ip}", "pass", f"{ip} <-> {confirmed[0]}"))
    sts = [t for t in resolver.txt(f"_mta-sts.{domain}") if t.startswith("v=STSv1")]
    checks.append(
        Check(
            "mta_sts",
            "pass" if sts else "warn",
            "MTA-STS published" if sts else "no MTA-STS policy",
            "",
            "" if sts else "publish _mta-sts TXT and the policy file",
        )
    )
    rpt = [t for t in resolver.txt(f"_smtp._tls.{domain}") if t.startswith("v=TLSRPTv1")]
    checks.append(
        Check(
            "tls_rpt",
            "pass" if rpt else "warn",
            "TLS-RPT published" if rpt else "no TLS-RPT record",
            "",
            ""
            if rpt
            else f'publish TXT _smtp._tls.{domain}: "v=TLSRPTv1; rua=mailto:tls@{domain}"',
        )
    )
    return checks


# --- all of it ---------------------------------------------------------------------------------


def run_checks(
    settings: Settings,
    domain: str,
    selectors: list[str],
    ips: list[str],
    nameserver: HostPort | None,
    *,
    message: Any = None,
    own_setup: bool = False,
) -> list[Check]:
    resolver = Dns(nameserver)
    store = KeyStore(settings.data_dir)
    signer = DkimSigner(store, signing_domain=settings.delivery.dkim_domain)
    keys = signer.keys_for(domain)
    dkim_domain = keys[0].domain if keys else None
    return_domain = settings.delivery.bounce_domain or domain
    ehlo = {s.ip: s.ehlo_name or settings.delivery.ehlo_name for s in settings.delivery.ips}
    checks: list[Check] = []
    sections: tuple[Callable[[], list[Check]], ...] = (
        lambda: spf_checks(resolver, domain, ips),
        lambda: dkim_checks(resolver, domain, selectors, store),
        lambda: dmarc_checks(resolver, domain, dkim_domain, return_domain),
        lambda: infrastructure_checks(resolver, domain, return_domain, ips, ehlo),
    )
    for name, section in zip(("spf", "dkim", "dmarc", "infrastructure"), sections, strict=True):
        try:
            checks += section()
        except DnsFailure as exc:
            checks.append(
                Check(
                    f"{name}.dns",
                    "error",
                    "could not check: DNS failed",
                    str(exc),
                    "check the nameserver and run preflight again",
                )
            )
    if message is not None:
        checks += content_checks(domain, message)
    if own_setup:
        checks += asyncio.run(sluice_checks(settings, domain, ips))
    checks.append(
        Check(
            "sluice.dkim_key",
            "pass" if keys else "fail",
            f"Sluice signs {domain} mail as d={dkim_domain}"
            if keys
            else f"Sluice holds no active DKIM key for {domain}",
            "",
            "" if keys else f"sluice dkim keygen --domain {domain} --selector s1",
        )
    )
    return checks


def exit_code(checks: list[Check]) -> int:
    statuses = {c.status for c in checks}
    return 3 if "error" in statuses else 2 if "fail" in statuses else 1 if "warn" in statuses else 0


def render(domain: str, checks: list[Check]) -> str:
    lines = [f"Preflight for {domain}"]
    width = max(len(c.id) for c in checks)
    for c in checks:
        lines.append(f"  {c.status.upper():<5} {c.id:<{width}}  {c.summary}")
        if c.status != "pass" and c.fix:
            lines.append(f"  {'':<5} {'':<{width}}  fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "warn", "fail", "error")}
    lines.append(
        f"{counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed, "
        f"{counts['error']} could not be checked"
    )
    return "\n".join(lines)


def as_json(domain: str, checks: list[Check]) -> dict[str, Any]:
    return {"domain": domain, "checks": [asdict(c) for c in checks]}


def valid_ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def content_checks(domain: str, body: Any) -> list[Check]:
    from gateway.preflight_sluice import content_checks as checks_of

    return checks_of(domain, body)


async def sluice_checks(settings: Settings, domain: str, ips: list[str]) -> list[Check]:
    from gateway.preflight_sluice import sluice_checks as checks_of

    return await checks_of(settings, domain, ips)
