"""Warmup in Redis: each IP's configuration, budgets taken per IP x provider, the outcome
signals and holds, the daily history (``warmup/`` decides; this reads and writes)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from core import keys
from core.store.base import EVENTS_MAXLEN, Arg, Client, Script, text


@dataclass(frozen=True, slots=True)
class Candidate:
    """A sending IP offered for one message, with its budget for the recipient's provider."""

    ip: str
    daily: int  # -1: warm, no limit
    hourly: int


@dataclass(frozen=True, slots=True)
class StoredHold:
    since: float | None  # held since (None: not held now)
    total: float  # seconds held before
    reason: str | None


class WarmupStore:
    def __init__(self, client: Client) -> None:
        self.redis = client
        self._take = Script(client, "warmup.lua")
        self._signal = Script(client, "warmup_signal.lua")

    # --- configuration -------------------------------------------------------------------

    async def configs(self) -> dict[str, dict[str, Any]]:
        """Every warming IP's configuration (the JSON ``warmup.gate.WarmupIp`` writes)."""
        found: dict[Any, Any] = await self.redis.hgetall(keys.WARMUP_IPS)
        return {text(ip): json.loads(doc) for ip, doc in found.items()}

    async def save_config(self, ip: str, doc: dict[str, Any]) -> None:
        await self.redis.hset(keys.WARMUP_IPS, ip, json.dumps(doc))

    async def delete_config(self, ip: str) -> bool:
        """The IP is warm from now on; False if it was not warming."""
        return bool(await self.redis.hdel(keys.WARMUP_IPS, ip))

    async def holds(self) -> dict[str, StoredHold]:
        """By ``ip:provider``: the hold the adaptive signal put on it, if any."""
        found: dict[Any, Any] = await self.redis.hgetall(keys.WARMUP_HOLDS)
        out = {}
        for name, blob in found.items():
            doc = msgpack.unpackb(blob)
            out[text(name)] = StoredHold(
                doc.get("since"), float(doc.get("total") or 0), doc.get("reason")
            )
        return out

    async def last_sends(self) -> dict[str, float]:
        """When each warming IP last sent (unix seconds)."""
        found: dict[Any, Any] = await self.redis.hgetall(keys.WARMUP_LAST)
        return {text(ip): float(at) for ip, at in found.items()}

    async def forget_last_send(self, ip: str) -> None:
        await self.redis.hdel(keys.WARMUP_LAST, ip)

    # --- budgets -------------------------------------------------------------------------

    async def take(
        self,
        candidates: Sequence[Candidate],
        provider: str,
        day: str,
        hour: int,
        *,
        to_hour: float,
        to_day: float,
        message_id: str = "",
    ) -> tuple[str, float]:
        """One message of budget from the first candidate with room (``core/lua/warmup.lua``):
        (the IP taken, 0) or ("", seconds until some budget opens). With ``message_id``, once
        per message and day: the same message again gets the IP it took, uncounted."""
        budget_keys: list[str] = []
        args: list[Arg] = [hour, round(to_hour, 3), round(to_day, 3), message_id]
        for c in candidates:
            budget_keys += [
                keys.warmup_sent(c.ip, provider, day),
                keys.warmup_sent(c.ip, provider, day, hour),
                keys.warmup_taken(c.ip, provider, day),
            ]
            args += [c.ip, c.daily, c.hourly]
        ip, wait = await self._take(budget_keys, args)
        return text(ip), float(wait)

    async def sent(self, ip: str, provider: str, day: str, hour: int | None = None) -> int:
        """Messages ``ip`` sent to ``provider`` on ``day`` (``YYYYMMDD``), or in one hour."""
        return int(await self.redis.get(keys.warmup_sent(ip, provider, day, hour)) or 0)

    # --- signals -------------------------------------------------------------------------

    async def signal(
        self,
        ip: str,
        provider: str,
        outcome: str,
        now: float,
        *,
        thresholds: tuple[float, float, float],
        min_attempts: int,
        day: str,
    ) -> str:
        """Record a warming IP's SMTP outcome (sent, deferred, bounced, complained); returns
        "paused" or "resumed" when that changed its hold, else ""."""
        template: bytes = msgpack.packb({"ip": ip, "provider": provider, "message_id": None})
        signal_keys = [
            keys.warmup_signals(ip, provider),
            keys.WARMUP_HOLDS,
            keys.EVENTS,
            keys.warmup_daily(ip, provider),
            keys.WARMUP_LAST,
        ]
        args: list[Arg] = [
            f"{ip}:{provider}",
            f"{now:.3f}",
            outcome,
            *thresholds,
            min_attempts,
            EVENTS_MAXLEN,
            template,
            day,
            ip,
        ]
        return text(await self._signal(signal_keys, args))

    async def recent_outcomes(self, ip: str, provider: str) -> dict[str, int]:
        """The 5-minute buckets the hold watches: ``"<bucket>:<outcome>"`` -> count."""
        found: dict[Any, Any] = await self.redis.hgetall(keys.warmup_signals(ip, provider))
        return {text(k): int(v) for k, v in found.items()}

    async def daily_outcomes(self, ip: str, provider: str) -> dict[str, int]:
        """The history: ``"<YYYYMMDD>:<outcome>"`` -> count."""
        found: dict[Any, Any] = await self.redis.hgetall(keys.warmup_daily(ip, provider))
        return {text(k): int(v) for k, v in found.items()}
