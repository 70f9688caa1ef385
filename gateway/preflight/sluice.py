"""Checks of Sluice's own setup (``sluice.*``): it signs the domain's mail, tracking links are
served under the domain, each sending IP has a warmup schedule, and round trips through
the running gateway work: a suppressed probe address is refused, and a probe click on a
tracked link through the public URL is redirected and recorded as an event.

These read Sluice's state (the data dir's DKIM keys and tracking keys, its Redis through
typed ``Store`` methods) and its public URL, never DNS. The caller says how to reach the
Redis (``OpenStore``): the command line opens the running gateway's, or the data dir's
embedded one for the length of the command. When the Redis cannot be reached, the checks
that need it give way to one warning (``sluice.store``).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import aiohttp

from core.errors import ConfigurationError
from core.settings import Settings
from core.store import Store, StoreError
from gateway.preflight.model import Check, org_domain
from tracking.tokens import Tokens, load_keys
from warmup.gate import load_ips, utc_day

OpenStore = Callable[[], AbstractAsyncContextManager[Store]]


def signing_key_check(domain: str, dkim_domain: str | None) -> Check:
    """``sluice.dkim_key``: Sluice holds an active key to sign the domain's mail with."""
    return Check(
        "sluice.dkim_key",
        "pass" if dkim_domain else "fail",
        f"Sluice signs {domain} mail as d={dkim_domain}"
        if dkim_domain
        else f"Sluice holds no active DKIM key for {domain}",
        "",
        "" if dkim_domain else f"sluice dkim keygen --domain {domain} --selector s1",
    )


async def sluice_checks(
    settings: Settings, domain: str, ips: list[str], open_store: OpenStore
) -> list[Check]:
    """Tracking domain, warmup schedules, and round trips through Sluice's own store and endpoints."""
    checks = [
        Check(
            "sluice.one_click_unsubscribe",
            "pass",
            "marketing mail carries List-Unsubscribe and List-Unsubscribe-Post (RFC 8058)",
        )
    ]
    host = re.sub(r"^https?://([^/:]+).*$", r"\1", settings.http.public_url).lower()
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    aligned = not literal and org_domain(host) == org_domain(domain)
    checks.append(
        Check(
            "sluice.tracking_domain",
            "pass" if aligned else "warn",
            f"tracking links on {host}" + ("" if aligned else f", not under {org_domain(domain)}"),
            settings.http.public_url,
            "" if aligned else f"serve tracking at e.g. https://links.{domain} (--public-url)",
        )
    )
    probe = f"preflight-probe@{domain}"
    probe_id = f"preflight-{secrets.token_hex(4)}"
    try:
        async with open_store() as store:
            warming = await load_ips(store)
            today = utc_day(time.time())
            for ip in ips or [s.ip for s in settings.delivery.ips]:
                config = warming.get(ip)
                if config is None:
                    checks.append(
                        Check(
                            f"sluice.warmup:{ip}",
                            "warn",
                            f"{ip} has no warmup schedule",
                            "fine only if it already sends at full volume",
                            f"sluice warmup start {ip} --schedule standard-30d",
                        )
                    )
                else:
                    checks.append(
                        Check(
                            f"sluice.warmup:{ip}",
                            "pass",
                            f"{ip} warming, day {config.day(today)} of {len(config.schedule)}",
                        )
                    )
            await store.suppressions.add(probe, reason="manual", source="preflight")
            found = await store.suppressions.check(probe, None)
            await store.suppressions.remove(probe)
            checks.append(
                Check(
                    "sluice.suppression_roundtrip",
                    "pass" if found else "fail",
                    "a suppressed probe address is refused"
                    if found
                    else "a suppressed probe address was not found",
                    "",
                    "" if found else "check the Redis Sluice uses",
                )
            )
            checks.append(await _click_probe(settings, domain, probe_id, store))
            return checks
    except (ConfigurationError, StoreError, OSError) as exc:
        checks.append(
            Check(
                "sluice.store",
                "warn",
                "could not reach Sluice's Redis",
                str(exc),
                "run preflight on the gateway's host or give --redis-url",
            )
        )
    checks.append(await _click_probe(settings, domain, probe_id, None))
    return checks


async def _click_probe(
    settings: Settings, domain: str, probe_id: str, store: Store | None
) -> Check:
    """A click on a tracked link through the public URL: redirected, and (with the store) recorded."""
    target = f"https://{domain}/?preflight=1"
    token = Tokens(load_keys(settings.data_dir)).seal("click", probe_id, target)
    url = f"{settings.http.public_url.rstrip('/')}/t/c/{token}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(
                url, allow_redirects=False, headers={"User-Agent": "Sluice-Preflight/1"}
            ) as answer,
        ):
            status, location = answer.status, answer.headers.get("Location")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Check(
            "sluice.tracking_roundtrip",
            "warn",
            "the public URL did not answer",
            f"{settings.http.public_url}: {exc}",
            "start sluice serve, or set --public-url to where recipients reach it",
        )
    if status != 302 or location != target:
        return Check(
            "sluice.tracking_roundtrip",
            "fail",
            f"the public URL answered {status}, not Sluice's redirect",
            url[:80],
            "point --public-url at this gateway",
        )
    if store is None:
        return Check(
            "sluice.tracking_roundtrip", "pass", "a probe click was redirected (event not checked)"
        )
    recent = await store.latest_events(500)
    recorded = any(event.get("message_id") == probe_id for event in recent)
    return Check(
        "sluice.tracking_roundtrip",
        "pass" if recorded else "fail",
        "a probe click came back through the public URL and was recorded"
        if recorded
        else "the probe click was redirected but no event was recorded",
        url[:80],
        "" if recorded else "the public URL reaches another gateway or Redis",
    )
