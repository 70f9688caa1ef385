"""Preflight checks of the message (``--message``) and of Sluice's own setup."""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from typing import Any

from core.settings import Settings
from gateway.preflight import Check, org_domain

# --- content (--message) ---------------------------------------------------------------------

_IMG = re.compile(r"<img\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*>", re.IGNORECASE)
_ALT = re.compile(r"\salt\s*=", re.IGNORECASE)
GMAIL_CLIP_BYTES = 102 * 1024


def content_checks(domain: str, body: Any) -> list[Check]:
    """The message as ``POST /v1/messages`` would take it, rendered for each sample recipient."""
    from core.errors import ValidationError
    from gateway.schemas import parse_send_request
    from mta.render import RenderError, TemplateError, Templates
    from tracking.links import rewrite_links

    try:
        request = parse_send_request(body, now=0.0)
        templates = Templates(request.subject, request.html, request.text)
    except (ValidationError, TemplateError) as exc:
        return [
            Check(
                "content.request",
                "fail",
                "the message would be refused",
                str(exc),
                "fix the field named above",
            )
        ]
    checks = [Check("content.request", "pass", f"{len(request.recipients)} sample recipient(s)")]
    html_sizes, unresolved, domains = [], [], set()
    for r in request.recipients:
        try:
            rendered = templates.render(r.data)
        except RenderError as exc:
            unresolved.append(f"{r.email}: {exc.field}: {exc.detail}")
            continue
        if rendered.html is not None:
            html_sizes.append(len(rendered.html.encode()))
            _, urls = rewrite_links(rendered.html, lambda url: url)
            domains |= {re.sub(r"^https?://([^/:?#]+).*$", r"\1", u).lower() for u in urls}
    checks.append(
        Check(
            "content.template",
            "fail" if unresolved else "pass",
            f"{len(unresolved)} recipient(s) with unresolved variables"
            if unresolved
            else "every template variable resolves for the sample data",
            "; ".join(unresolved[:3]),
            "give the missing data or a | default(...)",
        )
    )
    checks.append(
        Check(
            "content.text_part",
            "pass" if request.text else "warn",
            "a text part is present" if request.text else "HTML only: no text part",
            "",
            "" if request.text else "add a text version (spam filters and screen readers)",
        )
    )
    images = _IMG.findall(request.html or "")
    missing_alt = [i for i in images if not _ALT.search(i)]
    checks.append(
        Check(
            "content.img_alt",
            "warn" if missing_alt else "pass",
            f"{len(missing_alt)} of {len(images)} images without alt text"
            if missing_alt
            else f"all {len(images)} images have alt text",
            missing_alt[0][:120] if missing_alt else "",
            'describe every image with alt="..." (alt="" for decoration)',
        )
    )
    biggest = max(html_sizes, default=len((request.html or "").encode()))  # else the template
    checks.append(
        Check(
            "content.html_size",
            "fail" if biggest > GMAIL_CLIP_BYTES else "pass",
            f"HTML is {biggest / 1024:.0f} KB"
            + (" (Gmail clips over 102 KB)" if biggest > GMAIL_CLIP_BYTES else ""),
            "",
            "trim the HTML under 102 KB: Gmail hides the rest and the open pixel",
        )
    )
    checks.append(
        Check(
            "content.links",
            "pass",
            f"links to {len(domains)} domain(s)",
            ", ".join(sorted(domains)),
        )
    )
    sender = request.sender.email.rpartition("@")[2]
    aligned = org_domain(sender) == org_domain(domain)
    checks.append(
        Check(
            "content.from_domain",
            "pass" if aligned else "warn",
            f"From {request.sender.email}" + ("" if aligned else f" is not under {domain}"),
            "",
            "" if aligned else f"send from an address at {domain}",
        )
    )
    return checks


# --- Sluice's own setup -----------------------------------------------------------------------


async def sluice_checks(settings: Settings, domain: str, ips: list[str]) -> list[Check]:
    """Tracking domain, warmup schedules, and round trips through Sluice's own store and endpoints."""

    from core.errors import ConfigurationError
    from core.store import StoreError
    from gateway.cli.operator import operator_store
    from warmup.gate import load_ips, utc_day

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
        async with operator_store(settings) as store:
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


async def _click_probe(settings: Settings, domain: str, probe_id: str, store: Any) -> Check:
    """A click on a tracked link through the public URL: redirected, and (with the store) recorded."""
    import aiohttp

    from tracking.tokens import Tokens, load_keys

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
