"""Casts: the text of a flag, a ``SLUICE_*`` variable or a ``sluice.toml`` value -> a typed value.

Each cast takes the text exactly as the user wrote it and returns the value the
settings tree holds, or raises ``ValueError`` with a short reason; the settings
loader turns that into ``ConfigurationError("Config SLUICE_X is invalid: <reason>")``
naming where the text came from. The small value types they produce (``HostPort``,
``Route``, ``SendingIp``, ``TrustedProxies``, the masked ``Secret``) live here too,
so option defaults in ``core/settings.py`` can be written through the same casts
(``text="72h"``) and a default can never disagree with what the option accepts.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from core import validate


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # Worker processes receive settings by pickling.
        return (Secret, (self._value,))


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TrustedProxies:
    """Reverse proxies whose ``X-Forwarded-For`` is believed: the client is the rightmost
    address not added by one of them. ``count``: that many hops nearest Sluice are
    proxies; ``networks``: proxies are the addresses in these networks. Neither: the
    peer address is the client and the header is ignored."""

    count: int = 0
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class Route:
    """Where mail for a domain goes: ``relay`` to one host, or ``mx`` lookup."""

    domain: str  # a domain, ".example.com" for its subdomains too, or "*"
    kind: str  # "relay" | "mx"
    relay: HostPort | None = None
    require_tls: bool = False


@dataclass(frozen=True)
class SendingIp:
    ip: str
    pool: str = "default"
    ehlo_name: str | None = None  # None: the global SLUICE_EHLO_NAME (match the IP's PTR)


# --- numbers, durations, switches ---------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"5m"``, ``"72h"``, ``"1d"`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 72h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_schedule(text: str) -> tuple[float, ...]:
    steps = tuple(parse_duration(part) for part in text.split(",") if part.strip())
    if not steps:
        raise ValueError("the retry schedule is empty")
    return steps


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def shard_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 256 or value & (value - 1):
        raise ValueError(f"must be a power of two from 1 to 256, got {value}")
    return value


def rate(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 < value <= 1:
        raise ValueError(f"expected a rate such as 0.1% or 0.001, got {text!r}")
    return value


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def unsubscribe_scope(text: str) -> str:
    if text not in ("category", "global"):
        raise ValueError(f"expected category or global, got {text!r}")
    return text


# --- addresses and names ----------------------------------------------------------


def parse_hostport(text: str, *, default_port: int | None = None) -> HostPort:
    text = text.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)|([^:\[\]\s]+)", text)
    if not match:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if match.group(1):
        host, port = match.group(1), int(match.group(2))
    elif match.group(3):
        host, port = match.group(3), int(match.group(4))
    elif default_port is not None:
        host, port = match.group(5), default_port
    else:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return HostPort(host, port)


def nameserver(text: str) -> HostPort:
    """``HOST[:PORT]``, port 53 when left out."""
    return parse_hostport(text, default_port=53)


def listener_or_off(text: str) -> HostPort | None:
    """``HOST:PORT``, or ``off`` (also ``none``, ``0``) for no listener."""
    return None if text.lower() in ("off", "none", "0") else parse_hostport(text)


def domain_name(text: str) -> str:
    if not re.fullmatch(r"(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z0-9-]{2,63}", text):
        raise ValueError(f"expected a domain name, got {text!r}")
    return text.lower()


def url(text: str) -> str:
    if not re.match(r"^https?://[^\s/]+", text):
        raise ValueError(f"expected an http(s) URL, got {text!r}")
    return text.rstrip("/")


def parse_route(domain: str, text: str) -> Route:
    """``"mx"``, ``"relay HOST:PORT"``, optionally followed by ``tls=required``."""
    words = text.split()
    require_tls = False
    if words and words[-1] in ("tls=required", "tls=opportunistic"):
        require_tls = words.pop() == "tls=required"
    if words == ["mx"]:
        return Route(domain.lower(), "mx", None, require_tls)
    if len(words) == 2 and words[0] == "relay":
        return Route(
            domain.lower(), "relay", parse_hostport(words[1], default_port=25), require_tls
        )
    raise ValueError(f"expected 'mx' or 'relay HOST:PORT' [tls=required], got {text!r}")


def relay_route(text: str) -> Route:
    """``HOST[:PORT] [tls=required]``: the catch-all route through one relay (port 25 if left out)."""
    return parse_route("*", f"relay {text}")


def parse_ips(text: str) -> tuple[SendingIp, ...]:
    """``"192.0.2.10,192.0.2.11@warm=mta2.example.com"``: sending addresses, each optionally
    ``@pool`` and ``=EHLO name`` (the name its PTR record gives, for forward-confirmed rDNS)."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        item, _, ehlo = item.partition("=")
        ip, _, pool = item.partition("@")
        try:
            ipaddress.ip_address(ip)
        except ValueError as exc:
            raise ValueError(f"{ip!r} is not an IP address") from exc
        if ehlo:
            ehlo = domain_name(ehlo)
        if pool and not validate.NAME.fullmatch(pool):
            raise ValueError(f"pool {pool!r} must be {validate.NAME_RULE}")
        out.append(SendingIp(ip, pool or "default", ehlo or None))
    return tuple(out)


def parse_trusted_proxies(text: str) -> TrustedProxies:
    """``"1"`` (one proxy in front) or ``"10.0.0.0/8,192.168.1.5"`` (proxies' addresses)."""
    text = text.strip()
    if text.isdigit():
        return TrustedProxies(count=int(text))
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError as exc:
                raise ValueError(f"{part!r} is neither a count nor an address or CIDR") from exc
    return TrustedProxies(networks=tuple(networks))


# --- files and secrets --------------------------------------------------------------


def directory(text: str) -> Path:
    """A directory Sluice may create, made absolute against the working directory."""
    return Path(text).resolve()


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"{text!r} is not a file")
    return path


def executable(text: str) -> str:
    if not (Path(text).is_file() and os.access(text, os.X_OK)):
        raise ValueError(f"{text!r} is not an executable file")
    return text


def webhook_secret(text: str) -> Secret:
    """Standard Webhooks' form: ``whsec_`` and the base64 of at least 24 random bytes."""
    body = text.removeprefix("whsec_")
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("expected whsec_<base64>") from exc
    if len(raw) < 24:
        raise ValueError("the secret must be at least 24 bytes (whsec_<base64 of them>)")
    return Secret(text)
