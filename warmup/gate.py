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
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from core.settings import WarmupSettings
from core.store import Candidate, Store
from warmup.schedules import PROVIDERS, WARM, Budget, budget, parse_schedule


@dataclass(frozen=True)
class WarmupIp:
    ip: str
    pool: str
    schedule: tuple[int, ...]
    schedule_name: str | None
    started_on: date
    paused_on: date | None = None  # held at its day since then

    def day(self, today: date, held_seconds: float = 0.0) -> int:
        """Warmup day (0 first); a paused IP stays on the day it was paused, and days a
        provider held it (bad signals) do not count for that provider."""
        return ((self.paused_on or today) - self.started_on).days - int(held_seconds // 86400)

    def budget(self, today: date, hold: Hold | None = None, now: float = 0.0) -> Budget:
        if hold is None:
            return budget(self.schedule, self.day(today))
        limits = budget(self.schedule, self.day(today, hold.held_seconds(now)))
        if hold.since is None or limits.warm:
            return limits
        daily = limits.daily // 2  # held: half the day's budget until the rates recover
        return Budget(daily, -(-daily // 24))

    def as_json(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "pool": self.pool,
            "schedule": self.schedule_name or list(self.schedule),
            "started_on": self.started_on.isoformat(),
            "paused_on": self.paused_on.isoformat() if self.paused_on else None,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WarmupIp:
        schedule = doc["schedule"]
        return cls(
            ip=doc["ip"],
            pool=doc.get("pool") or "default",
            schedule=parse_schedule(schedule),
            schedule_name=schedule if isinstance(schedule, str) else None,
            started_on=date.fromisoformat(doc["started_on"]),
            paused_on=date.fromisoformat(doc["paused_on"]) if doc.get("paused_on") else None,
        )


@dataclass(frozen=True)
class Hold:
    """A provider's hold on a warming IP: since when (None: not held now), seconds held before."""

    since: float | None
    total: float
    reason: str | None = None

    def held_seconds(self, now: float) -> float:
        return self.total + (max(0.0, now - self.since) if self.since is not None else 0.0)


async def load_holds(store: Store) -> dict[str, Hold]:
    found = await store.warmup.holds()
    return {name: Hold(h.since, h.total, h.reason) for name, h in found.items()}


def utc_day(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


async def load_ips(store: Store) -> dict[str, WarmupIp]:
    return {ip: WarmupIp.from_json(doc) for ip, doc in (await store.warmup.configs()).items()}


async def save_ip(store: Store, config: WarmupIp) -> None:
    await store.warmup.save_config(config.ip, config.as_json())


@dataclass
class Choice:
    ip: str | None  # None: no IP of the pool has room now
    wait: float = 0.0  # then: seconds until one may


@dataclass
class WarmupGate:
    store: Store
    settings: WarmupSettings = field(default_factory=WarmupSettings)
    refresh: float = 2.0
    _configs: dict[str, WarmupIp] = field(default_factory=dict)
    _holds: dict[str, Hold] = field(default_factory=dict)
    _loaded: float = -1e9
    _turns: dict[str, itertools.cycle[str]] = field(default_factory=dict)

    async def configs(self, now: float | None = None) -> dict[str, WarmupIp]:
        if time.monotonic() - self._loaded > self.refresh:
            self._configs = await load_ips(self.store)
            self._holds = await load_holds(self.store)
            self._loaded = time.monotonic()
            await self._restart_idle(time.time() if now is None else now)
        return self._configs

    async def _restart_idle(self, now: float) -> None:
        """An IP that sent nothing for ``idle_restart_days`` has lost its reputation: day 0."""
        last = await self.store.warmup.last_sends()
        limit = self.settings.idle_restart_days * 86400
        for ip, config in list(self._configs.items()):
            sent = last.get(ip)
            if sent is not None and now - sent > limit and config.paused_on is None:
                restarted = replace(config, started_on=utc_day(now))
                await save_ip(self.store, restarted)
                await self.store.warmup.forget_last_send(ip)
                self._configs[ip] = restarted

    def budget_of(self, config: WarmupIp, provider: str, now: float) -> Budget:
        return config.budget(utc_day(now), self._holds.get(f"{config.ip}:{provider}"), now)

    async def choose(
        self, ips: list[str], provider: str, now: float, message_id: str = ""
    ) -> Choice:
        """The IP to send from, or how long to wait; with ``message_id``, a message taken
        again (delivered twice after a crash) counts once per day."""
        configs = await self.configs(now)
        today = utc_day(now)
        budgets = {
            ip: self.budget_of(c, provider, now) for ip in ips if (c := configs.get(ip)) is not None
        }
        warming = sorted(
            (configs[ip] for ip, b in budgets.items() if not b.warm),
            key=lambda c: -c.day(today),
        )
        warm = [ip for ip in ips if ip not in {c.ip for c in warming}]
        if not warming:
            return Choice(self._turn(warm) if warm else None)
        offer = [Candidate(c.ip, budgets[c.ip].daily, budgets[c.ip].hourly) for c in warming]
        if warm:
            offer.append(Candidate(self._turn(warm), WARM.daily, WARM.hourly))
        moment = datetime.fromtimestamp(now, UTC)
        into_hour = moment.minute * 60 + moment.second + moment.microsecond / 1e6
        to_hour = 3600 - into_hour
        to_day = (23 - moment.hour) * 3600 + to_hour
        taken, wait = await self.store.warmup.take(
            offer,
            provider,
            today.strftime("%Y%m%d"),
            moment.hour,
            to_hour=to_hour,
            to_day=to_day,
            message_id=message_id,
        )
        if taken:
            return Choice(taken)
        return Choice(None, float(wait))

    async def record(self, ip: str, provider: str, outcome: str, now: float) -> str:
        """An SMTP outcome of a warming IP: "sent", "deferred", "bounced" or "complained"."""
        w = self.settings
        changed = await self.store.warmup.signal(
            ip,
            provider,
            outcome,
            now,
            thresholds=(w.max_deferral_rate, w.max_bounce_rate, w.max_complaint_rate),
            min_attempts=w.min_attempts,
            day=utc_day(now).strftime("%Y%m%d"),
        )
        if changed:
            self._loaded = -1e9  # budgets change at once
        return changed

    def _turn(self, ips: list[str]) -> str:
        key = ",".join(ips)
        if key not in self._turns:
            self._turns[key] = itertools.cycle(ips)
        return next(self._turns[key])


async def sent_today(store: Store, ip: str, provider: str, today: date) -> int:
    return await store.warmup.sent(ip, provider, today.strftime("%Y%m%d"))


async def last_hour(store: Store, ip: str, provider: str, now: float) -> dict[str, Any]:
    """Outcomes and rates of the last hour (the 5-minute buckets the hold watches)."""
    found = await store.warmup.recent_outcomes(ip, provider)
    bucket = int(now // 300)
    counts = dict.fromkeys(("sent", "deferred", "bounced", "complained"), 0)
    for name, value in found.items():
        at, _, kind = name.partition(":")
        if at.isdigit() and int(at) > bucket - 12 and kind in counts:
            counts[kind] += value
    attempts = counts["sent"] + counts["deferred"] + counts["bounced"]
    return {
        **counts,
        "deferral_rate": round(counts["deferred"] / attempts, 4) if attempts else 0.0,
        "bounce_rate": round(counts["bounced"] / attempts, 4) if attempts else 0.0,
        "complaint_rate": round(counts["complained"] / max(counts["sent"], 1), 5),
    }


async def status(store: Store, now: float | None = None) -> dict[str, Any]:
    """Per warming IP and provider: day n of N, today's budgets, sent, the last hour's rates,
    held or not, and the date of full volume."""
    moment = time.time() if now is None else now
    today = utc_day(moment)
    holds = await load_holds(store)
    out = []
    for ip, config in sorted((await load_ips(store)).items()):
        providers = {}
        finish = today
        for provider in PROVIDERS:
            hold = holds.get(f"{ip}:{provider}")
            limits = config.budget(today, hold, moment)
            held_seconds = hold.held_seconds(moment) if hold else 0.0
            day = config.day(today, held_seconds)
            sent = await sent_today(store, ip, provider, today)
            stamp = today.strftime("%Y%m%d")
            hour = datetime.fromtimestamp(moment, UTC).hour
            hour_sent = await store.warmup.sent(ip, provider, stamp, hour)
            daily = await store.warmup.daily_outcomes(ip, provider)
            deferred = daily.get(f"{stamp}:deferred", 0)
            ends = date.fromordinal(today.toordinal() + max(0, len(config.schedule) - day))
            finish = max(finish, ends)
            providers[provider] = {
                "day": day,
                "daily_budget": None if limits.warm else limits.daily,
                "hourly_budget": None if limits.warm else limits.hourly,
                "sent_today": sent,
                "sent_this_hour": hour_sent,
                "deferred": deferred,
                "held": bool(hold and hold.since is not None),
                "held_reason": hold.reason if hold and hold.since is not None else None,
                "days_held": round(held_seconds / 86400, 2),
                "last_hour": await last_hour(store, ip, provider, moment),
                "full_volume_on": ends.isoformat(),
            }
        out.append(
            {
                **config.as_json(),
                "day": config.day(today),
                "days": len(config.schedule),
                "warm": all(p["daily_budget"] is None for p in providers.values()),
                "paused": config.paused_on is not None,
                "full_volume_on": finish.isoformat(),
                "providers": providers,
            }
        )
    return {"date": today.isoformat(), "ips": out}
