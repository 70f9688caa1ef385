"""What an engineer does to a warmup, from the API (``/v1/warmup/ips/{ip}``) or the CLI
(``sluice warmup``): start one, pause it, resume it, stop it (the IP is warm from then on).

A pause holds the IP at its day: budgets stay those of that day while it is paused, and
resuming shifts the start by the days paused, so no day of the ramp is skipped.
"""

from __future__ import annotations

import dataclasses
from datetime import date

from core.errors import NotFound, ValidationError
from core.store import Store
from warmup.gate import WarmupIp, load_ips, save_ip, utc_day
from warmup.schedules import parse_schedule

DEFAULT_SCHEDULE = "standard-30d"


def schedule_of(value: object, field: str = "schedule") -> tuple[int, ...]:
    """A built-in schedule's name or a list of daily limits (``[50, 100, ...]``), checked."""
    try:
        return parse_schedule(value)
    except ValueError as exc:
        raise ValidationError(f"'{field}': {exc}", field=field) from exc


async def warming(store: Store, ip: str) -> WarmupIp:
    config = (await load_ips(store)).get(ip)
    if config is None:
        raise NotFound(f"{ip} is not warming up (see sluice warmup status)")
    return config


async def start(
    store: Store,
    ip: str,
    *,
    schedule: str | list[int],
    pool: str,
    started_on: date | None,
    now: float,
) -> WarmupIp:
    """Warm ``ip`` up on ``schedule`` (a built-in name or daily limits) from ``started_on``
    (default today, UTC); replaces an earlier configuration of the same IP."""
    config = WarmupIp(
        ip=ip,
        pool=pool,
        schedule=schedule_of(schedule),
        schedule_name=schedule if isinstance(schedule, str) else None,
        started_on=started_on or utc_day(now),
    )
    await save_ip(store, config)
    return config


async def pause(store: Store, ip: str, now: float) -> WarmupIp:
    config = await warming(store, ip)
    if config.paused_on is None:
        config = dataclasses.replace(config, paused_on=utc_day(now))
        await save_ip(store, config)
    return config


async def resume(store: Store, ip: str, now: float) -> WarmupIp:
    config = await warming(store, ip)
    if config.paused_on is not None:
        today = utc_day(now)
        shift = today - config.paused_on
        config = dataclasses.replace(config, paused_on=None, started_on=config.started_on + shift)
        await save_ip(store, config)
    return config


async def stop(store: Store, ip: str) -> None:
    """Stop warming ``ip``: it is treated as warm from now on."""
    if not await store.warmup.delete_config(ip):
        raise NotFound(f"{ip} is not warming up (see sluice warmup status)")
