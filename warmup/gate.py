"""The warmup gate the delivery worker asks before each SMTP transaction: which sending IP.

Per IP the configuration (schedule, start day, pool, paused) lives in Redis
(``PUT /v1/warmup/ips/{ip}`` or ``sluice warmup start``); an IP without one is warm.
For a message the gate offers the pool's IPs in this order: IPs still warming,
the furthest along first (their budget must be used for them to warm), then the
warm ones in turn; ``core/lua/warmup.lua`` takes one message of budget from the
first with room, atomically across workers and nodes. With none, the message
waits for the next hour (or day) with room: never dropped, normal expiry applies.

The clock is a parameter (``now``) everywhere, so tests run a month in seconds.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from core import keys
from core.store import Store
from warmup.schedules import PROVIDERS, WARM, Budget, budget, parse_schedule


@dataclass(frozen=True)
class WarmupIp:
    ip: str
    pool: str
    schedule: tuple[int, ...]
    schedule_name: str | None
    started_on: date
    paused_on: date | None = None  # held at its day since then

    def day(self, today: date) -> int:
        """Warmup day (0 first); a paused IP stays on the day it was paused."""
        return ((self.paused_on or today) - self.started_on).days

    def budget(self, today: date) -> Budget:
        return budget(self.schedule, self.day(today))

    def as_json(self) -> dict[str, Any]:
        return {
            "ip": self.ip, "pool": self.pool,
            "schedule": self.schedule_name or list(self.schedule),
            "started_on": self.started_on.isoformat(),
            "paused_on": self.paused_on.isoformat() if self.paused_on else None,
        }  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WarmupIp:
        schedule = doc["schedule"]
        return cls(
            ip=doc["ip"], pool=doc.get("pool") or "default",
            schedule=parse_schedule(schedule),
            schedule_name=schedule if isinstance(schedule, str) else None,
            started_on=date.fromisoformat(doc["started_on"]),
            paused_on=date.fromisoformat(doc["paused_on"]) if doc.get("paused_on") else None,
        )  # fmt: skip


def utc_day(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


async def load_ips(store: Store) -> dict[str, WarmupIp]:
    found: dict[Any, Any] = await store.redis.hgetall(keys.WARMUP_IPS)
    return {k.decode(): WarmupIp.from_json(json.loads(v)) for k, v in found.items()}


async def save_ip(store: Store, config: WarmupIp) -> None:
    await store.redis.hset(keys.WARMUP_IPS, config.ip, json.dumps(config.as_json()))


@dataclass
class Choice:
    ip: str | None  # None: no IP of the pool has room now
    wait: float = 0.0  # then: seconds until one may
    warming: bool = False


@dataclass
class WarmupGate:
    store: Store
    refresh: float = 2.0
    _configs: dict[str, WarmupIp] = field(default_factory=dict)
    _loaded: float = -1e9
    _turns: dict[str, itertools.cycle[str]] = field(default_factory=dict)

    async def configs(self) -> dict[str, WarmupIp]:
        if time.monotonic() - self._loaded > self.refresh:
            self._configs = await load_ips(self.store)
            self._loaded = time.monotonic()
        return self._configs

    async def choose(self, ips: list[str], provider: str, now: float) -> Choice:
        configs = await self.configs()
        today = utc_day(now)
        warming = sorted(
            (c for ip in ips if (c := configs.get(ip)) is not None and not c.budget(today).warm),
            key=lambda c: -c.day(today),
        )
        warm = [ip for ip in ips if ip not in {c.ip for c in warming}]
        if not warming:
            return Choice(self._turn(warm) if warm else None)
        offer: list[tuple[str, Budget]] = [(c.ip, c.budget(today)) for c in warming]
        if warm:
            offer.append((self._turn(warm), WARM))
        moment = datetime.fromtimestamp(now, UTC)
        into_hour = moment.minute * 60 + moment.second + moment.microsecond / 1e6
        to_hour = 3600 - into_hour
        to_day = (23 - moment.hour) * 3600 + to_hour
        args: list[Any] = [keys.WARMUP_PREFIX, provider, today.strftime("%Y%m%d"), moment.hour,
                           round(to_hour, 3), round(to_day, 3)]  # fmt: skip
        for ip, limits in offer:
            args += [ip, limits.daily, limits.hourly]
        taken, wait = await self.store.warmup_take(args)
        if taken:
            return Choice(taken, warming=taken in {c.ip for c in warming})
        return Choice(None, float(wait))

    def _turn(self, ips: list[str]) -> str:
        key = ",".join(ips)
        if key not in self._turns:
            self._turns[key] = itertools.cycle(ips)
        return next(self._turns[key])


async def sent_today(store: Store, ip: str, provider: str, today: date) -> int:
    value = await store.redis.get(f"{keys.WARMUP_PREFIX}{ip}:{provider}:{today.strftime('%Y%m%d')}")
    return int(value or 0)


async def status(store: Store, now: float | None = None) -> dict[str, Any]:
    """Per warming IP and provider: day n of N, today's budgets, sent today, full volume date."""
    moment = time.time() if now is None else now
    today = utc_day(moment)
    out = []
    for ip, config in sorted((await load_ips(store)).items()):
        limits = config.budget(today)
        day = config.day(today)
        providers = {}
        for provider in PROVIDERS:
            sent = await sent_today(store, ip, provider, today)
            providers[provider] = {
                "daily_budget": None if limits.warm else limits.daily,
                "hourly_budget": None if limits.warm else limits.hourly,
                "sent_today": sent,
                "left_today": None if limits.warm else max(0, limits.daily - sent),
            }
        remaining = max(0, len(config.schedule) - day)
        full = today.toordinal() + remaining
        out.append({
            **config.as_json(),
            "day": day, "days": len(config.schedule), "warm": limits.warm,
            "paused": config.paused_on is not None,
            "full_volume_on": date.fromordinal(full).isoformat(),
            "providers": providers,
        })  # fmt: skip
    return {"date": today.isoformat(), "ips": out}
