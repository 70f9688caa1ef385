"""DMARC checks (``dmarc.*``): one record at ``_dmarc`` of the domain or of its
organizational domain, its policy (``p=``, or ``sp=`` when the record is the parent's),
aggregate report addresses (``rua``) and, for those in another organization, their
authorization record (RFC 7489 7.1: without it the reports are lost, not the mail, so a
warning), and whether Sluice's DKIM signature and return path
align with the From domain (relaxed or strict, as ``adkim``/``aspf`` say).

Parsed here rather than with checkdmarc: it cannot be pointed at a nameserver on another
port, which the tests need, and the parsing is a few lines.
"""

from __future__ import annotations

from gateway.preflight.model import Check, Dns, org_domain, record_tags


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
    tags = record_tags(records[0])
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
        # Without the grant, receivers send no aggregate reports to that address (RFC 7489
        # 7.1): the reports are lost, the mail is not (DMARC itself still applies), so a
        # warning, not a failure.
        checks.append(
            Check(
                f"dmarc.rua_authorized:{target}",
                "pass" if ok else "warn",
                f"external report address at {target}"
                + ("" if ok else " is not authorized: receivers send it no reports"),
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
