"""``sluice tracking rotate-key``: seal new tracking links with a new key."""

from __future__ import annotations

import argparse
from typing import Any

from core.settings import load_settings
from gateway.cli.operator import where_options


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    tracking = commands.add_parser("tracking", parents=[common], help="tracking link keys")
    tracking_actions = tracking.add_subparsers(
        dest="tracking_command", required=True, metavar="ACTION"
    )
    tracking_actions.add_parser(
        "rotate-key",
        parents=[common, where_options(redis=False)],
        help="seal new tracking links with a new key; links already sent keep working",
    )


def run(args: argparse.Namespace) -> int:
    from tracking.tokens import rotate_key

    settings = load_settings({"data_dir": args.data_dir, "config": args.config})
    key_id = rotate_key(settings.data_dir)
    print(
        f"Tracking key {key_id} now seals new links; older keys still open earlier ones. "
        "Restart sluice serve to use it."
    )
    return 0
