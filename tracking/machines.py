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

from core.settings import TrustedProxies

APPLE = ipaddress.ip_network("17.0.0.0/8")
SCANNERS = (
    "barracuda",
    "mimecast",
    "proofpoint",
    "urldefense",
    "safelinks",
    "symantec",
    "messagelabs",
    "trendmicro",
    "fireeye",
    "forcepoint",
    "zscaler",
    "sophos",
    "ironport",
    "cisco",
    "checkpoint",
    "bitdefender",
    "kaspersky",
    "mcafee",
    "paloalto",
    "vadesecure",
    "spamtitan",
    "libwww",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "curl/",
    "wget/",
    "go-http-client",
    "okhttp",
    "java/",
    "headlesschrome",
    "phantomjs",
    "bingpreview",
    "slackbot",
    "facebookexternalhit",
    "twitterbot",
    "linkedinbot",
    "whatsapp",
    "skypeuripreview",
    "discordbot",
    "bot;",
    "spider",
    "crawler",
)
CLICK_WINDOW_SECONDS = 10.0  # a click this soon after delivery is a scanner's


def client_ip(remote: str | None, forwarded_for: str | None, trusted: TrustedProxies) -> str | None:
    """The client's address: the rightmost hop that no trusted proxy added.

    ``X-Forwarded-For`` is written by whoever sends the request, so only the entries a
    trusted proxy appended mean anything: walking from the peer leftwards, each hop that
    is a trusted proxy (one of the ``count`` nearest, or an address in ``networks``)
    vouches for the entry to its left; the first hop that is not one is the client. No
    trusted proxies (the default): the peer address, whatever the header says.
    """
    if remote is None or not (trusted.count or trusted.networks):
        return remote
    hops = [h.strip() for h in (forwarded_for or "").split(",") if h.strip()]
    hops.append(remote)
    if trusted.count:
        return hops[max(0, len(hops) - 1 - trusted.count)]
    for index in range(len(hops) - 1, -1, -1):
        if index == 0 or not _in(hops[index], trusted.networks):
            return hops[index]
    return remote


def _in(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # not an address: nobody we trust wrote it
    return any(ip in network for network in networks)


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
