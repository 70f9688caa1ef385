"""The ``sluice`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from core.addresses import AddressError, normalize_domain
from core.errors import ConfigurationError, ValidationError
from core.logs import setup_logging
from core.settings import load_settings
from gateway import bounce_cmd, dkim_cmd, suppress_cmd, warmup_cmd
from gateway.operator import where_options


def _parser() -> argparse.ArgumentParser:
    # --log-level works before or after the command name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser = argparse.ArgumentParser(
        prog="sluice", description="Email delivery and deliverability gateway", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    dkim_cmd.add_commands(commands, common)
    bounce_cmd.add_commands(commands, common)
    suppress_cmd.add_commands(commands, common)
    warmup_cmd.add_commands(commands, common)
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
    tracking = commands.add_parser("tracking", parents=[common], help="tracking link keys")
    tracking_actions = tracking.add_subparsers(
        dest="tracking_command", required=True, metavar="ACTION"
    )
    tracking_actions.add_parser(
        "rotate-key",
        parents=[common, where_options(redis=False)],
        help="seal new tracking links with a new key; links already sent keep working",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # serve narrates; operator commands print their results and log only problems
    default_level = "INFO" if args.command == "serve" else "WARNING"
    setup_logging(getattr(logging, getattr(args, "log_level", default_level)))
    try:
        if args.command == "serve":
            from gateway.serve import serve

            flags = {k: v for k, v in vars(args).items() if k not in ("command", "log_level")}
            return serve(load_settings(flags))
        if args.command == "dkim":
            return dkim_cmd.run(args)
        if args.command == "bounce":
            return bounce_cmd.run(args)
        if args.command == "suppress":
            return suppress_cmd.run(args)
        if args.command == "warmup":
            return warmup_cmd.run(args)
        if args.command == "preflight":
            return _preflight(args)
        if args.command == "tracking":
            from tracking.tokens import rotate_key

            settings = load_settings({"data_dir": args.data_dir, "config": args.config})
            key_id = rotate_key(settings.data_dir)
            print(
                f"Tracking key {key_id} now seals new links; older keys still open earlier ones. "
                "Restart sluice serve to use it."
            )
            return 0
    except (ConfigurationError, ValidationError) as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file named on the command line
        print(f"sluice: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 2


def _preflight(args: argparse.Namespace) -> int:
    import json

    from core.settings import parse_hostport
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
        ips = [preflight.valid_ip(ip) for ip in args.ip]
        nameserver = (
            parse_hostport(args.nameserver, default_port=53)
            if args.nameserver
            else settings.delivery.nameserver
        )
    except (AddressError, ValueError) as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 3
    checks = preflight.run_checks(
        settings, domain, args.selector, ips, nameserver, message=message, own_setup=True
    )
    if args.json:
        print(json.dumps(preflight.as_json(domain, checks), indent=2))
    else:
        print(preflight.render(domain, checks))
    return preflight.exit_code(checks)


if __name__ == "__main__":
    sys.exit(main())
