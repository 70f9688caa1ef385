"""Where a recipient domain's mail goes: the relay, or the domain's MX hosts.

MX lookups use dnspython's async resolver: preference order, implicit MX
(the domain's own address) when there is no MX record (RFC 5321 5.1), null MX
(RFC 7505) and NXDOMAIN are permanent, everything else is worth a retry.
"""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.resolver

from core.errors import PermanentDeliveryError, TransientDeliveryError
from core.settings import HostPort


class Router:
    def __init__(self, relay: HostPort | None, nameserver: HostPort | None = None) -> None:
        self.relay = relay
        self.resolver = dns.asyncresolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            self.resolver.nameservers = [nameserver.host]
            self.resolver.port = nameserver.port
        self.resolver.lifetime = 10.0

    async def route(self, domain: str) -> list[HostPort]:
        if self.relay is not None:
            return [self.relay]
        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN as exc:
            raise PermanentDeliveryError(
                f"{domain} does not exist (NXDOMAIN)", smtp_code=550
            ) from exc
        except dns.resolver.NoAnswer:
            return [HostPort(domain, 25)]  # implicit MX
        except (dns.exception.DNSException, OSError) as exc:
            raise TransientDeliveryError(f"MX lookup for {domain} failed: {exc}") from exc
        records = sorted(answer, key=lambda r: r.preference)
        hosts = [r.exchange.to_text(omit_final_dot=True) for r in records]
        if hosts == [""] or hosts == ["."]:
            raise PermanentDeliveryError(f"{domain} accepts no mail (null MX)", smtp_code=556)
        return [HostPort(h, 25) for h in hosts if h not in ("", ".")]
