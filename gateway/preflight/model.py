"""What every preflight check shares: the ``Check`` result, the DNS resolver wrapper and the
organizational domain.

A check has a stable id, a status (``pass``, ``warn``, ``fail``, or ``error`` when DNS
itself failed: SERVFAIL or a timeout is "could not check", never "missing"), a one-line
summary, detail, and for anything but a pass a one-line fix.

``Dns`` asks through dnspython (``--nameserver`` points it anywhere, port included) and
turns a nameserver failure into ``DnsFailure``. It also becomes dnspython's default
resolver, because pyspf asks through that one. Organizational domains (RFC 7489 3.2) come
from publicsuffixlist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.resolver
from publicsuffixlist import PublicSuffixList

from core.settings import HostPort

_PSL = PublicSuffixList()


class DnsFailure(Exception):
    """The nameserver failed (SERVFAIL, timeout, refused): the answer is unknown."""


@dataclass
class Check:
    id: str
    status: str  # pass | warn | fail | error
    summary: str
    detail: str = ""
    fix: str = ""


def org_domain(name: str) -> str:
    return _PSL.privatesuffix(name.lower().rstrip(".")) or name.lower()


def record_tags(record: str) -> dict[str, str]:
    """The ``tag=value`` pairs of a DKIM or DMARC record, tags lowercase, values unspaced."""
    out = {}
    for part in record.split(";"):
        key, _, value = part.strip().partition("=")
        if key:
            out[key.strip().lower()] = re.sub(r"\s+", "", value)
    return out


class Dns:
    def __init__(self, nameserver: HostPort | None, timeout: float = 5.0) -> None:
        self.resolver = dns.resolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            self.resolver.nameservers = [nameserver.host]
            self.resolver.port = nameserver.port
        self.resolver.lifetime = timeout
        self.resolver.retry_servfail = False
        dns.resolver.default_resolver = self.resolver  # pyspf asks through dnspython's default

    def dkim_txt(self, qname: bytes, timeout: float = 5) -> bytes:
        """dkimpy's ``dnsfunc``: the TXT record at ``qname``, its strings joined."""
        return "".join(self.txt(qname.decode().rstrip("."))).encode()

    def query(self, name: str, rdtype: str) -> list[Any] | None:
        """The records, or None when the name or type does not exist."""
        try:
            return list(self.resolver.resolve(name, rdtype, raise_on_no_answer=False) or [])
        except dns.resolver.NXDOMAIN:
            return None
        except (
            dns.resolver.NoNameservers,
            dns.exception.Timeout,
            dns.resolver.LifetimeTimeout,
        ) as exc:
            raise DnsFailure(f"{name} {rdtype}: {exc.__class__.__name__}") from exc

    def txt(self, name: str) -> list[str]:
        return [
            b"".join(r.strings).decode("utf-8", "replace") for r in self.query(name, "TXT") or []
        ]

    def addresses(self, name: str) -> list[str]:
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            out += [r.address for r in self.query(name, rdtype) or []]
        return out
