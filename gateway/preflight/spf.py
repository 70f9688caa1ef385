"""SPF checks (``spf.*``): exactly one record, its size, include/redirect loops, how it ends
(``-all``), the deprecated ``ptr``, the RFC 7208 lookup and void-lookup limits, and whether
each sending IP is authorized.

pyspf runs ``check_host`` (RFC 7208 4), limits included, through dnspython's default
resolver, which ``model.Dns`` points at the nameserver; ``tests/test_spf_rfc7208.py``
checks that evaluation against the RFC's test suite. The record-level checks (size,
loop, ``all``, ``ptr``) read the published text, because pyspf stops at the first error.
"""

from __future__ import annotations

import spf

from gateway.preflight.model import Check, Dns

PROBE_IP = "192.0.2.255"  # TEST-NET-1: never authorized, so check_host walks the whole tree


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
    checks.append(_all_check(record, terms))
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
    checks.append(_limits_check(domain))
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


def _all_check(record: str, terms: list[str]) -> Check:
    """``spf.all``: what the record says about every host it does not list."""
    all_term = next((t for t in terms if t.lstrip("+-~?") == "all"), None)
    if all_term in ("all", "+all"):
        return Check(
            "spf.all",
            "fail",
            "+all authorizes every host on the internet",
            record,
            "end the record with -all (or ~all)",
        )
    if all_term == "?all":
        return Check(
            "spf.all",
            "warn",
            "?all is neutral: unlisted senders are not refused",
            record,
            "end the record with -all (or ~all)",
        )
    if all_term is None and not any(t.startswith("redirect=") for t in terms):
        return Check(
            "spf.all",
            "warn",
            "no all mechanism: unlisted senders are neutral",
            record,
            "end the record with -all (or ~all)",
        )
    return Check("spf.all", "pass", f"ends with {all_term or 'a redirect'}")


def _limits_check(domain: str) -> Check:
    """``check_host`` for an address nobody authorizes: the lookup limits, and the syntax."""
    query = spf.query(i=PROBE_IP, s=f"postmaster@{domain}", h=domain, querytime=20)
    result, _, explanation = query.check()
    if result == "temperror":
        return Check("spf.lookups", "error", "SPF evaluation hit a DNS failure", explanation)
    if result == "permerror" and "lookup" in explanation.lower() and "void" in explanation.lower():
        return Check(
            "spf.void_lookups",
            "fail",
            "more than 2 void lookups",
            explanation,
            "remove includes and names that do not exist",
        )
    if result == "permerror" and "lookups" in explanation.lower():
        return Check(
            "spf.lookups",
            "fail",
            "more than 10 DNS-querying terms",
            explanation,
            "flatten includes into ip4:/ip6: ranges",
        )
    if result == "permerror":
        return Check(
            "spf.syntax", "fail", "the record does not parse", explanation, "fix the SPF syntax"
        )
    return Check(
        "spf.lookups",
        "pass",
        f"{query.lookups} of 10 DNS-querying terms",
        f"{query.void_lookups} void lookups",
    )
