"""``sluice serve``: the options of the long-running gateway; the process itself is
``gateway.serve``. The flags, their help and their defaults come from the option
declarations in ``core/settings.py`` (each option with a ``metavar`` is a flag here)."""

from __future__ import annotations

import argparse
from typing import Any

from core.settings import load_settings, options


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="run the HTTP API, delivery workers and embedded Redis in the foreground",
    )
    for each in options():
        if each.flag is not None:
            # No argparse default: an unset flag must leave the environment and the file to speak.
            text = f"{each.help} (env {each.env}; default {each.default})"
            serve.add_argument(each.flag, metavar=each.metavar, help=text.replace("%", "%%"))


def run(args: argparse.Namespace) -> int:
    from gateway.serve import serve

    flags = {each.key: getattr(args, each.key) for each in options() if each.flag is not None}
    return serve(load_settings(flags))
