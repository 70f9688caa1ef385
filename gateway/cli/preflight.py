"""``sluice preflight DOMAIN``: the pre-launch checklist (``gateway.preflight``) from the
command line; exit 0 all pass, 1 warnings only, 2 any failure, 3 could not run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core import validate
from core.addresses import AddressError, normalize_domain
from core.errors import ValidationError
from core.settings import load_settings, parse_hostport
from gateway.cli.operator import operator_store, where_options


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    preflight = commands.add_parser(
        "preflight",
        parents=[common, where_options(redis=False)],
        help="the pre-launch checklist for a sending domain (SPF, DKIM, DMARC, PTR, ...)",
    )
    preflight.add_argument("domain")
    preflight.add_argument("--selector", action="append", default=[], help="DKIM selector (repeat)")
    preflight.add_argument("--ip", action="append", default=[], help="sending IP (repeat)")
    preflight.add_argument("--nameserver", metavar="HOST[:PORT]", help="DNS server to ask")
    preflight.add_argument("--json", action="store_true")
    preflight.add_argument("--message", metavar="FILE.json", help="a /v1/messages body to check")
    preflight.add_argument(
        "--redis-url", metavar="URL", help="env SLUICE_REDIS_URL; default: embedded"
    )


def run(args: argparse.Namespace) -> int:
    from gateway import preflight

    settings = load_settings(
        {"data_dir": args.data_dir, "config": args.config, "redis_url": args.redis_url}
    )
    try:
        message = json.loads(Path(args.message).read_text()) if args.message else None
    except (OSError, ValueError) as exc:
        print(f"sluice: --message {args.message}: {exc}", file=sys.stderr)
        return 3
    try:
        domain = normalize_domain(args.domain)
        ips = [validate.ip(ip, "--ip") for ip in args.ip]
        nameserver = (
            parse_hostport(args.nameserver, default_port=53)
            if args.nameserver
            else settings.delivery.nameserver
        )
    except (AddressError, ValueError, ValidationError) as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 3
    checks = preflight.run_checks(
        settings,
        domain,
        args.selector,
        ips,
        nameserver,
        message=message,
        sluice_store=lambda: operator_store(settings),
    )
    if args.json:
        print(json.dumps(preflight.as_json(domain, checks), indent=2))
    else:
        print(preflight.render(domain, checks))
    return preflight.exit_code(checks)
