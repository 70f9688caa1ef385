"""``sluice dkim``: create, list, show and switch the DKIM signing keys of the data dir."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from core.settings import load_settings
from gateway.cli.operator import where_options
from mta.dkimkeys import DkimKey, KeyStore


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    dkim = commands.add_parser("dkim", parents=[common], help="manage DKIM signing keys")
    actions = dkim.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    where = where_options(redis=False)
    where.add_argument("--json", action="store_true", help="machine-readable output")
    which = argparse.ArgumentParser(add_help=False)
    which.add_argument("--domain", required=True, help="the signing domain (d=)")
    which.add_argument("--selector", required=True, help="the selector (s=), e.g. s2026")

    keygen = actions.add_parser(
        "keygen",
        parents=[common, where, which],
        help="create a key, make it the active one for its algorithm, print its DNS record",
    )
    keygen.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    actions.add_parser("list", parents=[common, where], help="keys, and which are active")
    actions.add_parser("record", parents=[common, where, which], help="print a key's DNS record")
    actions.add_parser(
        "activate", parents=[common, where, which], help="sign with this key from now on"
    )
    actions.add_parser(
        "deactivate", parents=[common, where, which], help="stop signing with this key"
    )


def _describe(key: DkimKey) -> dict[str, Any]:
    return {
        "domain": key.domain,
        "selector": key.selector,
        "algorithm": key.algorithm,
        "bits": key.bits,
        "created": datetime.datetime.fromtimestamp(key.created, datetime.UTC).isoformat(
            timespec="seconds"
        ),
        "active": key.active,
        "record_name": key.record_name,
        "record_strings": key.txt_strings(),
    }


def _print_record(key: DkimKey) -> None:
    print(f"Publish this TXT record at {key.record_name} (one record; its value split into")
    print("strings of at most 255 bytes, which DNS joins back together):")
    print()
    print(key.zone_line())
    print()
    print(f"Then check it: sluice preflight {key.domain} --selector {key.selector}")


def run(args: argparse.Namespace) -> int:
    settings = load_settings({"data_dir": args.data_dir, "config": args.config})
    store = KeyStore(settings.data_dir)
    action = args.dkim_command
    if action == "list":
        keys = store.all_keys()
        if args.json:
            print(json.dumps([_describe(k) for k in keys], indent=2))
        elif not keys:
            print(
                f"No DKIM keys in {settings.data_dir}; create one with "
                "`sluice dkim keygen --domain D --selector S`"
            )
        else:
            print(
                f"{'DOMAIN':<32} {'SELECTOR':<16} {'ALGORITHM':<9} {'BITS':>5}  CREATED     ACTIVE"
            )
            for k in keys:
                created = _describe(k)["created"][:10]
                print(
                    f"{k.domain:<32} {k.selector:<16} {k.algorithm:<9} {k.bits:>5}  {created}  "
                    f"{'yes' if k.active else 'no'}"
                )
        return 0
    if action == "keygen":
        key = store.generate(args.domain, args.selector, args.algorithm, args.bits)
        if args.json:
            print(json.dumps(_describe(key), indent=2))
            return 0
        size = f"-{key.bits}" if key.algorithm == "rsa" else ""
        print(
            f"Created {key.algorithm}{size} key {key.selector!r} for {key.domain}, active for "
            f"{key.algorithm} signing; stored in {key.path} (mode 0600)."
        )
        print()
        _print_record(key)
        return 0
    if action == "record":
        key = store.key(args.domain, args.selector)
    elif action == "activate":
        key = store.activate(args.domain, args.selector)
    else:
        key = store.deactivate(args.domain, args.selector)
    if args.json:
        print(json.dumps(_describe(key), indent=2))
    elif action == "record":
        _print_record(key)
    else:
        state = "active" if key.active else "not active"
        print(f"{key.selector}._domainkey.{key.domain} ({key.algorithm}) is {state}.")
    return 0
