"""Telling machine opens and clicks from people's, to flag them (``machine: true``), not drop them.

- Apple Mail Privacy Protection fetches every image through Apple's proxies
  (addresses in 17.0.0.0/8, a bare ``Mozilla/5.0`` user agent) whether or not
  the message is read.
- Security gateways and link scanners (Proofpoint, Mimecast, Microsoft Safe Links,
  Barracuda, ...) fetch every link, with their own user agents or generic HTTP
  clients.
- ``HEAD`` requests come from scanners and link previewers, not from a person.
- A click within seconds of delivery is a scanner (checked against the delivery
  time in the engagement script).
"""

from __future__ import annotations

import ipaddress

APPLE = ipaddress.ip_network("17.0.0.0/8")
SCANNERS = (
    "barracuda", "mimecast", "proofpoint", "urldefense", "safelinks", "symantec", "messagelabs",
    "trendmicro", "fireeye", "forcepoint", "zscaler", "sophos", "ironport", "cisco", "checkpoint",
    "bitdefender", "kaspersky", "mcafee", "paloalto", "vadesecure", "spamtitan", "libwww",
    "python-requests", "python-urllib", "aiohttp", "curl/", "wget/", "go-http-client", "okhttp",
    "java/", "headlesschrome", "phantomjs", "bingpreview", "slackbot", "facebookexternalhit",
    "twitterbot", "linkedinbot", "whatsapp", "skypeuripreview", "discordbot", "bot;", "spider",
    "crawler",
)  # fmt: skip
CLICK_WINDOW_SECONDS = 10.0  # a click this soon after delivery is a scanner's


def client_ip(remote: str | None, forwarded_for: str | None) -> str | None:
    """The client address; ``X-Forwarded-For``'s first hop only when a proxy on a private
    or loopback address (a reverse proxy in front of Sluice) sent the request."""
    if remote and forwarded_for:
        try:
            proxy = ipaddress.ip_address(remote)
        except ValueError:
            return remote
        if proxy.is_private or proxy.is_loopback:
            return forwarded_for.split(",")[0].strip() or remote
    return remote


def machine_reason(method: str, user_agent: str, ip: str | None) -> str | None:
    if method == "HEAD":
        return "head-request"
    agent = user_agent.strip().lower()
    if ip is not None:
        try:
            if ipaddress.ip_address(ip) in APPLE:
                return "apple-privacy-proxy"
        except ValueError:
            pass
    if agent == "mozilla/5.0":
        return "apple-privacy-proxy"
    if not agent:
        return "no-user-agent"
    for marker in SCANNERS:
        if marker in agent:
            return "link-scanner"
    return None
