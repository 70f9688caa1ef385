"""The ``sluice`` command line: one module per command, each with ``add_commands`` (its
argparse sub-commands) and ``run`` (what it does).

| command | module |
|---|---|
| ``sluice serve`` | ``gateway.cli.serve`` (the process: ``gateway.serve``) |
| ``sluice dkim keygen|list|record|activate|deactivate`` | ``gateway.cli.dkim`` |
| ``sluice suppress add|remove|show|list|import|export`` | ``gateway.cli.suppress`` |
| ``sluice stats``, ``sluice campaign list|report NAME``, ``sluice queue`` | ``gateway.cli.stats`` |
| ``sluice warmup plan|start|status|pause|resume|stop|report`` | ``gateway.cli.warmup`` |
| ``sluice preflight DOMAIN`` | ``gateway.cli.preflight`` |
| ``sluice bounce parse FILE...`` | ``gateway.cli.bounce`` |
| ``sluice tracking rotate-key`` | ``gateway.cli.tracking`` |

Operator commands reach the running gateway's Redis, or start the data dir's embedded
one for the length of the command (``gateway.cli.operator``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from core.errors import ClientError, ConfigurationError
from core.logs import setup_logging
from gateway.cli import bounce, dkim, preflight, serve, stats, suppress, tracking, warmup

__all__ = ["main"]

COMMANDS: dict[str, ModuleType] = {
    "serve": serve,
    "dkim": dkim,
    "bounce": bounce,
    "suppress": suppress,
    "warmup": warmup,
    "preflight": preflight,
    "tracking": tracking,
    "stats": stats,
    "campaign": stats,
    "queue": stats,
}


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
    for module in dict.fromkeys(COMMANDS.values()):  # a module may add several commands
        module.add_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # serve narrates; operator commands print their results and log only problems
    default_level = "INFO" if args.command == "serve" else "WARNING"
    setup_logging(getattr(logging, getattr(args, "log_level", default_level)))
    try:
        code: int = COMMANDS[args.command].run(args)
    except (ConfigurationError, ClientError) as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file named on the command line
        print(f"sluice: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return code
