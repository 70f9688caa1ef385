"""``sluice preflight DOMAIN``: the pre-launch checklist for a sending domain.

``run_checks`` runs the sections below in this order; each check has a stable id, a
status (``pass``, ``warn``, ``fail``, or ``error`` when DNS itself failed), a one-line
summary, detail, and for anything but a pass a one-line fix (``model.Check``). The exit
code: 0 all pass, 1 warnings only, 2 any failure, 3 something could not be checked.

| module | checks | asks |
|---|---|---|
| ``spf`` | ``spf.*``: one record, size, loops, ``all``, ``ptr``, lookup limits, IPs authorized | DNS (pyspf) |
| ``dkim`` | ``dkim.*`` per selector: record, key strength, ``t=y``, matches Sluice's key | DNS, the data dir's DKIM keys |
| ``dmarc`` | ``dmarc.*``: record, policy, report addresses, DKIM/SPF alignment | DNS |
| ``infrastructure`` | ``mx.return_path``, ``ptr.fcrdns:IP``, ``mta_sts``, ``tls_rpt`` | DNS |
| ``content`` | ``content.*`` (``--message``): accepted, renders, text part, alt text, size, links, From | nothing outside |
| ``sluice`` | ``sluice.*``: tracking domain, warmup, suppression and click round trips, signing key | Sluice's Redis, public URL, data dir |
| ``report`` | the exit code, the text and the ``--json`` document | |

``model`` holds what they share (``Check``, ``DnsFailure``, the ``Dns`` resolver wrapper,
``org_domain``); each check module imports it and nothing else of the package, and
nothing in the package imports this one.

A DNS section that meets a nameserver failure (SERVFAIL, timeout, refused) stops and
reports one ``<section>.dns`` error, "could not check", never "missing".

Libraries: dnspython for every lookup (``--nameserver`` points it anywhere, port
included); pyspf for RFC 7208 ``check_host`` and its lookup and void-lookup limits (it
shares dnspython's resolver); publicsuffixlist for organizational domains; dkimpy to
verify a probe message signed with Sluice's own key against the published record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from core.settings import HostPort, Settings
from gateway.preflight.content import content_checks
from gateway.preflight.dkim import dkim_checks
from gateway.preflight.dmarc import dmarc_checks
from gateway.preflight.infrastructure import infrastructure_checks
from gateway.preflight.model import Check, Dns, DnsFailure
from gateway.preflight.report import as_json, exit_code, render
from gateway.preflight.sluice import OpenStore, signing_key_check, sluice_checks
from gateway.preflight.spf import spf_checks
from mta.dkim import DkimSigner
from mta.dkimkeys import KeyStore

__all__ = [
    "Check",
    "HostPort",
    "OpenStore",
    "as_json",
    "content_checks",
    "exit_code",
    "render",
    "run_checks",
]


def run_checks(
    settings: Settings,
    domain: str,
    selectors: list[str],
    ips: list[str],
    nameserver: HostPort | None,
    *,
    message: Any = None,
    sluice_store: OpenStore | None = None,
) -> list[Check]:
    """Every check for *domain*, in the order the report lists them.

    *message* is a ``POST /v1/messages`` body to check too. With *sluice_store* (how to
    open Sluice's Redis), Sluice's own setup is checked as well: warmup, round trips
    through the running gateway, tracking domain.
    """
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
    if sluice_store is not None:
        checks += asyncio.run(sluice_checks(settings, domain, ips, sluice_store))
    checks.append(signing_key_check(domain, dkim_domain))
    return checks
