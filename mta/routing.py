"""Where a recipient domain's mail goes: a relay from the transport map, or its MX hosts.

MX lookups use dnspython's async resolver (nameserver configurable, so tests use
a real DNS server on loopback) with a cache that honours each answer's TTL. MX
hosts are tried in preference order, in random order among equal preferences;
with no MX record the domain itself is the implicit MX (RFC 5321 5.1). A null MX
(RFC 7505) and NXDOMAIN are permanent failures; SERVFAIL and timeouts are worth
a retry. MX host names are resolved to addresses here too (A, then AAAA), so the
connection pools are keyed by the address actually connected to.
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass
from itertools import groupby

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from core.errors import PermanentDeliveryError, TransientDeliveryError
from core.settings import DeliverySettings, Route

NEGATIVE_TTL = 60.0  # how long "no MX" and "no address" answers are cached
MAX_TTL = 3600.0


@dataclass(frozen=True)
class Destination:
    """One place to try delivering to."""

    host: str  # MX or relay host name, for logs and the pools' limits
    address: str  # what to connect to (an IP address, or a relay host name)
    port: int
    require_tls: bool
    via: str  # "mx" | "relay"

    def __str__(self) -> str:
        return f"{self.host}[{self.address}]:{self.port}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Router:
    def __init__(self, settings: DeliverySettings) -> None:
        self.routes = settings.routes
        self.mx_port = settings.mx_port
        self.resolver = dns.asyncresolver.Resolver(configure=settings.nameserver is None)
        if settings.nameserver is not None:
            self.resolver.nameservers = [settings.nameserver.host]
            self.resolver.port = settings.nameserver.port
        self.resolver.lifetime = 10.0
        self._cache: dict[tuple[str, str], tuple[float, list[tuple[int, str]]]] = {}

    def route_for(self, domain: str) -> Route:
        for route in self.routes:
            if route.domain in ("*", domain) or (
                route.domain.startswith(".") and domain.endswith(route.domain)
            ):
                return route
        return self.routes[-1]

    async def destinations(self, domain: str) -> list[Destination]:
        """Every address to try for this domain, best first; raises DeliveryError."""
        route = self.route_for(domain)
        if route.kind == "relay":
            assert route.relay is not None
            relay = route.relay
            return [Destination(relay.host, relay.host, relay.port, route.require_tls, "relay")]
        out: list[Destination] = []
        for host in await self.mx_hosts(domain):
            for address in await self._addresses(host):
                out.append(Destination(host, address, self.mx_port, route.require_tls, "mx"))
        if not out:
            raise TransientDeliveryError(f"no address found for any MX host of {domain}")
        return out

    async def mx_hosts(self, domain: str) -> list[str]:
        records = await self._lookup(domain, "MX", missing_ok=True)
        if not records:
            return [domain]  # implicit MX
        if any(name in ("", ".") for _, name in records):
            raise PermanentDeliveryError(
                f"{domain} accepts no mail (null MX, RFC 7505)",
                smtp_code=556,
                host=domain,
                bounce_class="bad-domain",
                hard=True,
            )
        ordered: list[str] = []
        for _, group in groupby(sorted(records), key=lambda r: r[0]):
            names = [name for _, name in group]
            random.shuffle(names)  # spread load among equal preferences
            ordered.extend(names)
        return ordered

    async def _addresses(self, host: str) -> list[str]:
        if _is_ip(host):
            return [host]
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                found += [name for _, name in await self._lookup(host, rdtype, missing_ok=True)]
            except (PermanentDeliveryError, TransientDeliveryError):
                continue  # this MX host is unusable; the others may not be
        return found

    async def _lookup(self, name: str, rdtype: str, *, missing_ok: bool) -> list[tuple[int, str]]:
        """(preference, target) for MX; (0, address) for A/AAAA. Cached by TTL."""
        key = (name.lower(), rdtype)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            answer = await self.resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as exc:
            raise PermanentDeliveryError(
                f"{name} does not exist (NXDOMAIN)",
                smtp_code=550,
                host=name,
                bounce_class="bad-domain",
                hard=True,
            ) from exc
        except dns.resolver.NoAnswer:
            if not missing_ok:
                raise TransientDeliveryError(f"no {rdtype} record for {name}") from None
            self._cache[key] = (now + NEGATIVE_TTL, [])
            return []
        except (dns.exception.DNSException, OSError) as exc:
            # SERVFAIL, timeouts, refused: the domain may be fine a minute from now.
            raise TransientDeliveryError(f"{rdtype} lookup for {name} failed: {exc}") from exc
        if rdtype == "MX":
            result = [
                (r.preference, "" if r.exchange == dns.name.root else r.exchange.to_text(True))
                for r in answer
            ]
        else:
            result = [(0, r.to_text()) for r in answer]
        ttl = min(float(answer.rrset.ttl if answer.rrset is not None else 0), MAX_TTL)
        self._cache[key] = (now + ttl, result)
        return result
