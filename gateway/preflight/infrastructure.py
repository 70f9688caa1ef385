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
