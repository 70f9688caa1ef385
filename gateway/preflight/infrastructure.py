"""Infrastructure checks: the return-path domain receives mail (``mx.return_path``: bounces
and complaints come back), each sending IP has forward-confirmed reverse DNS matching its
EHLO name (``ptr.fcrdns``), and the domain publishes MTA-STS (``mta_sts``) and TLS-RPT
(``tls_rpt``).
"""

from __future__ import annotations

import dns.reversename

from gateway.preflight.model import Check, Dns


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
    checks.append(
        _published(
            resolver,
            "mta_sts",
            f"_mta-sts.{domain}",
            "v=STSv1",
            ("MTA-STS published", "no MTA-STS policy"),
            "publish _mta-sts TXT and the policy file",
        )
    )
    checks.append(
        _published(
            resolver,
            "tls_rpt",
            f"_smtp._tls.{domain}",
            "v=TLSRPTv1",
            ("TLS-RPT published", "no TLS-RPT record"),
            f'publish TXT _smtp._tls.{domain}: "v=TLSRPTv1; rua=mailto:tls@{domain}"',
        )
    )
    return checks


def _published(
    resolver: Dns, check: str, name: str, version: str, texts: tuple[str, str], fix: str
) -> Check:
    """A record that is recommended, not required: pass if a TXT at ``name`` starts with
    ``version``, else a warning with ``fix``."""
    found = any(t.startswith(version) for t in resolver.txt(name))
    return Check(
        check,
        "pass" if found else "warn",
        texts[0] if found else texts[1],
        "",
        "" if found else fix,
    )
