"""``sluice warmup``: plan, start, status, pause, resume and stop IP warmups."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from core import validate
from core.errors import ValidationError
from core.settings import load_settings
from gateway.cli.operator import operator_store, where_options
from warmup import actions
from warmup.gate import status, utc_day
from warmup.report import history, write_report
from warmup.schedules import BUILT_IN, PROVIDERS, plan


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    warmup = commands.add_parser("warmup", parents=[common], help="IP warmup ramps")
    actions = warmup.add_subparsers(dest="warmup_command", required=True, metavar="ACTION")
    where = where_options()
    show = actions.add_parser("plan", parents=[common], help="a schedule's budgets, day by day")
    show.add_argument(
        "--schedule",
        default="standard-30d",
        help=f"{', '.join(sorted(BUILT_IN))} or daily limits: 50,100,200,...",
    )
    start = actions.add_parser("start", parents=[common, where], help="start warming up an IP")
    start.add_argument("ip")
    start.add_argument("--schedule", default="standard-30d")
    start.add_argument(
        "--pool", default=None, help="default: the pool --ips gives it, else default"
    )
    start.add_argument(
        "--start-date", type=date.fromisoformat, default=None, help="YYYY-MM-DD; default today"
    )
    state = actions.add_parser("status", parents=[common, where], help="where every warmup stands")
    state.add_argument("--json", action="store_true")
    report = actions.add_parser(
        "report",
        parents=[common, where],
        help="chart of planned versus actual volume per day per provider, rates beneath",
    )
    report.add_argument("ip")
    report.add_argument("--out", required=True, type=Path, help="FILE.html or FILE.png")
    for name, text in (
        ("pause", "hold an IP at its current day"),
        ("resume", "continue a paused warmup"),
        ("stop", "treat the IP as warm from now on"),
    ):
        action = actions.add_parser(name, parents=[common, where], help=text)
        action.add_argument("ip")


def _schedule(text: str) -> str | list[int]:
    """``--schedule``: a built-in name, or daily limits separated by commas."""
    if not (text and text[0].isdigit()):
        return text
    try:
        return [int(x) for x in text.split(",")]
    except ValueError as exc:
        raise ValidationError(f"--schedule: {text!r} is not a list of whole numbers") from exc


def run(args: argparse.Namespace) -> int:
    if args.warmup_command == "plan":
        schedule = actions.schedule_of(_schedule(args.schedule), "--schedule")
        print(
            f"{'day':>4} {'daily':>9} {'hourly':>7}   per provider group ({', '.join(PROVIDERS)})"
        )
        for row in plan(schedule):
            print(f"{row['day']:>4} {row['daily']:>9,} {row['hourly']:>7,}")
        print(f"then warm: no limit (total over the ramp {sum(schedule):,} per provider)")
        return 0
    settings = load_settings(
        {"data_dir": args.data_dir, "config": args.config, "redis_url": args.redis_url}
    )
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Any) -> int:
    action = args.warmup_command
    async with operator_store(settings) as store:
        now = time.time()
        today = utc_day(now)
        if action == "start":
            ip = validate.ip(args.ip, "ip")
            pools = {s.ip: s.pool for s in settings.delivery.ips}
            config = await actions.start(
                store,
                ip,
                schedule=_schedule(args.schedule),
                pool=validate.pool(args.pool or pools.get(ip, "default"), "--pool"),
                started_on=args.start_date,
                now=now,
            )
            done = config.started_on + timedelta(days=len(config.schedule))
            print(
                f"{ip} warms up on {args.schedule} from {config.started_on} (day "
                f"{config.day(today)} today); full volume on {done}."
            )
            return 0
        if action == "status":
            doc = await status(store)
            if args.json:
                print(json.dumps(doc, indent=2))
                return 0
            if not doc["ips"]:
                print(
                    "No IP is warming up. Start one: sluice warmup start IP --schedule standard-30d"
                )
                return 0
            for ip in doc["ips"]:
                state = "warm" if ip["warm"] else ("PAUSED" if ip["paused"] else "warming")
                print(
                    f"{ip['ip']} (pool {ip['pool']}): {state}, day {ip['day']} of {ip['days']}, "
                    f"full volume on {ip['full_volume_on']}"
                )
                print(
                    f"  {'provider':<10} {'day':>4} {'sent today':>17} {'hourly':>7} "
                    f"{'deferred':>8} {'bounced':>7} {'complaints':>10}  state"
                )
                for name, p in ip["providers"].items():
                    hour = p["last_hour"]
                    budget = (
                        "no limit".rjust(17)
                        if p["daily_budget"] is None
                        else (f"{p['sent_today']:>7,} of {p['daily_budget']:>7,}")
                    )
                    hourly = "-" if p["hourly_budget"] is None else f"{p['hourly_budget']:,}"
                    state = f"HELD: {p['held_reason']}" if p["held"] else "ok"
                    print(
                        f"  {name:<10} {p['day']:>4} {budget} {hourly:>7} "
                        f"{hour['deferral_rate']:>8.1%} {hour['bounce_rate']:>7.1%} "
                        f"{hour['complaint_rate']:>10.2%}  {state}"
                    )
            return 0
        if action == "report":
            await actions.warming(store, args.ip)
            series = await history(store, args.ip, now)
            try:
                write_report(args.out, f"Warmup of {args.ip}", series)
            except RuntimeError as exc:
                raise ValidationError(str(exc)) from exc
            print(f"Report for {args.ip} written to {args.out}.")
            return 0
        if action == "pause":
            config = await actions.pause(store, args.ip, now)
            print(f"{args.ip} paused at day {config.day(today)}.")
        elif action == "resume":
            config = await actions.resume(store, args.ip, now)
            print(f"{args.ip} resumed at day {config.day(today)}.")
        else:
            await actions.stop(store, args.ip)
            print(f"{args.ip} is treated as warm from now on.")
        return 0
