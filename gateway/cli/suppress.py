"""``sluice suppress``: add, remove, show, list, import and export suppressed addresses.

Import and export stream CSV (``suppression/transfer.py``); invalid lines are
skipped and reported with their line numbers, valid ones are imported.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
from typing import Any

from core import validate
from core.addresses import AddressError, normalize_address
from core.errors import ValidationError
from core.settings import load_settings
from core.store import Store
from core.suppressions import REASONS, Suppression
from gateway.cli.operator import operator_store, where_options
from suppression import transfer


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    suppress = commands.add_parser(
        "suppress", parents=[common], help="manage the suppression list (who is never mailed)"
    )
    actions = suppress.add_subparsers(dest="suppress_command", required=True, metavar="ACTION")
    where = where_options()
    scope = argparse.ArgumentParser(add_help=False)
    scope.add_argument("--category", help="only this category (an unsubscribe group); default: all")
    entry = argparse.ArgumentParser(add_help=False)
    entry.add_argument("--reason", choices=sorted(REASONS), default="manual")
    entry.add_argument("--source", help="where the entry comes from (up to 48 characters)")

    add = actions.add_parser(
        "add", parents=[common, where, scope, entry], help="suppress addresses"
    )
    add.add_argument("emails", nargs="+", metavar="EMAIL")
    remove = actions.add_parser("remove", parents=[common, where, scope], help="lift suppressions")
    remove.add_argument("emails", nargs="+", metavar="EMAIL")
    show = actions.add_parser("show", parents=[common, where], help="every entry for an address")
    show.add_argument("email", metavar="EMAIL")
    listing = actions.add_parser("list", parents=[common, where], help="entries, a page at a time")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--cursor", type=int, default=0, help="'next' of the previous page")
    listing.add_argument("--json", action="store_true")
    load = actions.add_parser(
        "import",
        parents=[common, where, scope, entry],
        help="import a CSV (or one address per line)",
    )
    load.add_argument("file", metavar="FILE", help="path, or - for standard input")
    dump = actions.add_parser("export", parents=[common, where], help="write every entry as CSV")
    dump.add_argument("file", metavar="FILE", nargs="?", default="-", help="path; default stdout")


def _address(text: str) -> str:
    try:
        return normalize_address(text.strip())
    except AddressError as exc:
        raise ValidationError(f"{text.strip()[:80]!r} is not a valid address: {exc}") from exc


def _category(value: str | None) -> str | None:
    return None if value is None else validate.category(value, "--category")


def _source(value: str | None, default: str) -> str:
    return validate.source(default if value is None else value, "--source")


def _line(entry: Suppression) -> str:
    scope = entry.category or "(all)"
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry.at))
    return f"{entry.email:<40} {scope:<20} {entry.reason:<17} {stamp}  {entry.source or ''}"


def run(args: argparse.Namespace) -> int:
    settings = load_settings(
        {"data_dir": args.data_dir, "config": args.config, "redis_url": args.redis_url}
    )
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Any) -> int:
    action = args.suppress_command
    # Check what can be checked before starting or reaching Redis.
    category = _category(getattr(args, "category", None))
    if action in ("add", "remove"):
        emails = [_address(e) for e in args.emails]
    source = _source(getattr(args, "source", None), "cli" if action == "add" else "import")
    async with operator_store(settings) as store:
        if action == "add":
            new = await store.suppressions.add_many(
                [(e, category, args.reason, source) for e in emails]
            )
            scope = f" for {category}" if category else ""
            print(f"Suppressed {len(emails)} address(es){scope} ({new} new, reason {args.reason}).")
            return 0
        if action == "remove":
            removed = [e for e in emails if await store.suppressions.remove(e, category)]
            for e in sorted(set(emails) - set(removed)):
                print(
                    f"{e} was not suppressed{' for ' + category if category else ''}",
                    file=sys.stderr,
                )
            print(f"Lifted {len(removed)} suppression(s).")
            return 0 if len(removed) == len(emails) else 1
        if action == "show":
            found = await store.suppressions.of(_address(args.email))
            if not found:
                print(f"{args.email} is not suppressed.")
                return 1
            for entry in found:
                print(_line(entry))
            return 0
        if action == "list":
            if not 1 <= args.limit <= 10_000 or not args.cursor >= 0:
                raise ValidationError("--limit 1 to 10000, --cursor from an earlier page")
            entries, after = await store.suppressions.page(args.cursor, args.limit)
            total = await store.suppressions.count()
            if args.json:
                print(
                    json.dumps(
                        {
                            "suppressions": [e.as_json() for e in entries],
                            "next": after,
                            "total": total,
                        },
                        indent=2,
                    )
                )
                return 0
            for entry in entries:
                print(_line(entry))
            more = f"; next page: --cursor {after}" if after is not None else ""
            print(f"({len(entries)} shown of {total}{more})")
            return 0
        if action == "import":
            return await _import(store, args, category, source)
        return await _export(store, args.file)


async def _import(store: Store, args: argparse.Namespace, category: str | None, source: str) -> int:
    started = time.monotonic()
    handle = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8-sig", newline="")  # noqa: SIM115, ASYNC230 (a CLI: one task)
    try:
        report = await transfer.import_csv(
            store, handle, reason=args.reason, category=category, source=source
        )
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValidationError(f"{args.file}: not a UTF-8 CSV file ({exc})") from exc
    finally:
        if handle is not sys.stdin:
            handle.close()
    elapsed = time.monotonic() - started
    print(
        f"Imported {report.imported:,} entries ({report.new:,} new) in {elapsed:.1f} s; "
        f"{report.skipped:,} line(s) skipped."
    )
    for line in report.problems:
        print(f"  skipped {line}", file=sys.stderr)
    return 0 if report.skipped == 0 else 1


async def _export(store: Store, path: str) -> int:
    handle = sys.stdout if path == "-" else open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115, ASYNC230
    try:
        count = await transfer.export_csv(store, handle)
    finally:
        if handle is not sys.stdout:
            handle.close()
    if path != "-":
        print(f"Exported {count:,} entries to {path}.")
    return 0
