"""``sluice serve``: the options of the long-running gateway (their environment variables and
``sluice.toml`` keys are in ``core/settings.py``); the process itself is ``gateway.serve``."""

from __future__ import annotations

import argparse
from typing import Any

from core.settings import load_settings


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="run the HTTP API, delivery workers and embedded Redis in the foreground",
    )
    for flag, meta, text in (
        (
            "--config",
            "PATH",
            "sluice.toml to read (env SLUICE_CONFIG; default ./sluice.toml if present)",
        ),
        (
            "--data-dir",
            "DIR",
            "where Redis, keys and the API key live (env SLUICE_DATA_DIR; default ./sluice-data)",
        ),
        (
            "--redis-url",
            "URL",
            "use this Redis >= 6.2 instead of the embedded one (env SLUICE_REDIS_URL)",
        ),
        (
            "--listen",
            "HOST:PORT",
            "HTTP listen address (env SLUICE_LISTEN; default 127.0.0.1:8025)",
        ),
        (
            "--public-url",
            "URL",
            "base of tracking links (env SLUICE_PUBLIC_URL; default http://<listen>)",
        ),
        (
            "--relay",
            "HOST:PORT",
            "deliver everything through this SMTP relay (env SLUICE_RELAY; default: by MX)",
        ),
        (
            "--workers",
            "N",
            "delivery worker processes; 0 accepts without delivering (env SLUICE_WORKERS)",
        ),
        (
            "--submission",
            "HOST:PORT",
            "SMTP submission listener, AUTH with the API key (env SLUICE_SUBMISSION; default off)",
        ),
    ):
        serve.add_argument(flag, metavar=meta, help=text)


def run(args: argparse.Namespace) -> int:
    from gateway.serve import serve

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "log_level")}
    return serve(load_settings(flags))
