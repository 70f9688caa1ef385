"""``sluice stats`` (counts and rates per hour or day, grouped by dimension), ``sluice
campaign list|report NAME`` (the rollups, ``gateway/stats.py``) and ``sluice queue`` (what
waits and why, ``gateway/queues.py``): tables a person reads, or ``--json`` (what the API
answers)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from core import rollups, validate
from core.errors import NotFound
from core.settings import load_settings
from gateway import queues, stats
from gateway.cli.operator import operator_store, where_options


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    where = where_options()
    span = argparse.ArgumentParser(add_help=False)
    span.add_argument("--from", dest="start", help="a date, an ISO 8601 time or unix seconds")
    span.add_argument("--to", dest="end", help="default: now")
    span.add_argument("--json", action="store_true", help="the API's answer, as JSON")
    parser = commands.add_parser(
        "stats", parents=[common, where, span], help="counts and rates per hour or day"
    )
    parser.add_argument(
        "--group-by", default="", help=f"comma-separated: {', '.join(rollups.DIMENSIONS)}"
    )
    parser.add_argument("--resolution", choices=("hour", "day"), default="day")
    for name in rollups.DIMENSIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"only this {name}")
    campaign = commands.add_parser(
        "campaign", parents=[common], help="campaigns: the list, and one's report"
    )
    actions = campaign.add_subparsers(dest="campaign_command", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[common, where, span], help="campaigns in the range")
    report = actions.add_parser("report", parents=[common, where, span], help="one's report")
    report.add_argument("name", metavar="NAME")
    queue = commands.add_parser(
        "queue", parents=[common, where], help="what waits in the queue, and why"
    )
    queue.add_argument("--group-by", choices=queues.GROUPS, default="state")
    for name in queues.FILTERS:
        queue.add_argument(f"--{name}", help=f"only this {name}")
    queue.add_argument("--json", action="store_true", help="the API's answer, as JSON")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(
        {"data_dir": args.data_dir, "config": args.config, "redis_url": args.redis_url}
    )
    if args.command == "queue":
        filters = queues.filters_of(
            {n: getattr(args, n) for n in queues.FILTERS if getattr(args, n) is not None}
        )
        return asyncio.run(_queue(args, settings, filters))
    params = {"from": args.start, "to": args.end}
    if args.command == "stats":
        params |= {"resolution": args.resolution, "group_by": args.group_by}
        params |= {name: getattr(args, name) for name in rollups.DIMENSIONS}
    query = stats.query_of({k: v for k, v in params.items() if v})
    if args.command == "campaign" and args.campaign_command == "report":
        validate.campaign(args.name, "NAME")
    return asyncio.run(_run(args, settings, query))


async def _run(args: argparse.Namespace, settings: Any, query: stats.Query) -> int:
    async with operator_store(settings) as store:
        if args.command == "stats":
            answer = await stats.stats(store, query)
            lines = _table(answer["rows"], ["start", *query.group_by])
        elif args.campaign_command == "list":
            answer = await stats.campaigns(store, query)
            lines = _table(answer["campaigns"], ["campaign"])
        else:
            found = await stats.campaign_report(store, args.name, query)
            if found is None:
                raise NotFound(f"no messages of campaign {args.name!r} in this range")
            answer = found
            lines = _report(found)
    print(json.dumps(answer, indent=2) if args.json else "\n".join(lines))
    return 0


async def _queue(args: argparse.Namespace, settings: Any, filters: dict[str, str]) -> int:
    async with operator_store(settings) as store:
        answer = await queues.view(store, args.group_by, filters)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    groups = answer["groups"]
    if not groups:
        print("(nothing waits)")
        return 0
    width = max(len(args.group_by), *(len(g["key"] or "-") for g in groups))
    print(f"{args.group_by:<{width}}  {'messages':>9}  {'oldest':>9}  why")
    for group in groups:
        states = ", ".join(f"{name} {n:,}" for name, n in sorted(group["states"].items()))
        oldest = _age(group["oldest_age_seconds"])
        line = f"{group['key'] or '-':<{width}}  {group['count']:>9,}  {oldest:>9}  {states}"
        if group.get("last_reply"):
            line += f"  (last reply: {group['last_reply'][:80]})"
        print(line)
    if answer["truncated"]:
        print(f"(more than {queues.MAX_SCANNED:,} in a place: counted the first ones)")
    return 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


_COLUMNS = ("accepted", "delivered", "bounced", "bounced_hard", "complained", "opened", "clicked")


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f}%"


def _table(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    if not rows:
        return ["(nothing counted in this range)"]
    widths = [max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys]
    head = "  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))
    head += "".join(f"{c:>13}" for c in _COLUMNS) + f"{'delivery':>10}{'complaint':>10}"
    out = [head]
    for row in rows:
        line = "  ".join(str(row.get(k, "")).ljust(w) for k, w in zip(keys, widths, strict=True))
        line += "".join(f"{row['counts'][c]:>13,}" for c in _COLUMNS)
        line += f"{_percent(row['rates']['delivery']):>10}{_percent(row['rates']['complaint']):>10}"
        out.append(line + ("  (low volume)" if row["low_volume"] else ""))
    return out


def _report(report: dict[str, Any]) -> list[str]:
    rates = ", ".join(f"{name} {_percent(value)}" for name, value in report["rates"].items())
    out = [
        f"campaign {report['campaign']}, {report['from']} to {report['to']}",
        "funnel: " + " -> ".join(f"{s['step']} {s['messages']:,}" for s in report["funnel"]),
        f"rates: {rates}" + ("  (low volume)" if report["low_volume"] else ""),
        "",
        "by provider:",
        *_table(report["providers"], ["provider"]),
    ]
    if report["bounce_classes"]:
        out += ["", "bounces:"]
        for found in report["bounce_classes"]:
            out.append(f"  {found['class']:<16} {found['count']:>8,}")
            out += [f"      {sample}" for sample in found["samples"]]
    if report["links"]:
        out += ["", f"{'people':>8} {'machines':>8}  link"]
        out += [
            f"{link['human']:>8,} {link['machine']:>8,}  {link['url']}" for link in report["links"]
        ]
    return out
