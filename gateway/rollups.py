"""The rollup counter: every gateway runs one, the one holding the lease counts. It reads
each shard's events after the shard's rollup cursor, works out what each counts toward
(``core/rollups.py``) and under which campaign, category, provider, sending IP, pool and
sending domain, and adds a page at a time with the cursor's move (``RollupStore.apply``):
exactly once, a second or so behind the events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from typing import Any

from core import rollups
from core.addresses import domain_of
from core.ids import split_message_id
from core.settings import StatsSettings
from core.shards import Shard
from core.store import Store
from core.store.rollups import Page
from gateway import alerts
from warmup.providers import provider_of

log = logging.getLogger(__name__)

PAGE = 1000  # events per shard and script call
IDLE_SECONDS = 0.5  # between rounds that found nothing
BATCHES_REMEMBERED = 10_000
# events about a delivered message that carry no sending IP: looked up in its record
_AFTER_DELIVERY = frozenset({"opened", "clicked", "unsubscribed", "complained", "bounced"})


class Roller:
    def __init__(self, store: Store, settings: StatsSettings | None = None) -> None:
        self.store = store
        kept = settings or StatsSettings()
        self.hourly_seconds = kept.hourly_days * 86400
        self.daily_seconds = kept.daily_days * 86400
        self.owner = secrets.token_hex(8)
        self.stopping = asyncio.Event()
        # batch id -> (campaign, category, sending domain) from its content
        self._batches: OrderedDict[str, tuple[str, str, str] | None] = OrderedDict()
        self._hours: dict[int, tuple[str, str]] = {}
        self._dims_seen: dict[tuple[Any, ...], str] = {}
        self._parsed_dims: dict[str, rollups.Dims] = {}

    async def run(self) -> None:
        evaluated = 0.0
        while not self.stopping.is_set():
            counted = 0
            try:
                if await self.store.rollups.lease(self.owner):
                    counted = await self.once()
                    if time.monotonic() - evaluated >= alerts.EVALUATE_SECONDS:
                        evaluated = time.monotonic()
                        await alerts.evaluate(self.store)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarting: the cursor says where to go on
                log.warning("counting events into rollups failed: %s", exc)
            if not counted:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), IDLE_SECONDS)

    async def once(self) -> int:
        """Count one page of every shard; how many events were counted."""
        counted = 0
        for shard in self.store.shards.all:
            cursor, events = await self.store.rollups.events(shard, PAGE)
            if not events:
                continue
            page = await self._page(shard, cursor, events)
            if await self.store.rollups.apply(
                page, hourly_seconds=self.hourly_seconds, daily_seconds=self.daily_seconds
            ):
                counted += len(events)
        return counted

    async def _page(self, shard: Shard, cursor: str, events: list[dict[str, Any]]) -> Page:
        page = Page(shard, cursor, events[-1]["entry_id"])
        asked = [
            e["message_id"] for e in events if "ip" not in e and e.get("type") in _AFTER_DELIVERY
        ]
        senders = dict(zip(asked, await self.store.rollups.senders(shard, asked), strict=True))
        counts = page.counts
        for event in events:
            dims = await self._dims(event, senders)
            hour, day = self._buckets(float(event.get("timestamp") or 0))
            for metric in rollups.metrics_of(event):
                counter = metric + dims
                counts[(rollups.HOURLY, hour, counter)] += 1
                counts[(rollups.DAILY, day, counter)] += 1
            for series in rollups.series_of(event, self._parsed(dims)):
                counts[(rollups.TOTALS, "", series)] += 1
            kind = event.get("type")
            if kind == "clicked" and event.get("url"):
                campaign = dims.split(rollups.SEPARATOR, 2)[1]
                link = rollups.link_field(campaign, event["url"], bool(event.get("machine")))
                counts[(rollups.DAILY, day, link)] += 1
            elif kind == "bounced":
                reply = " ".join(
                    str(part)
                    for part in (event.get("smtp_code"), event.get("status"), event.get("reason"))
                    if part
                )
                campaign = dims.split(rollups.SEPARATOR, 2)[1]
                bounce_class = str(event.get("bounce_class") or "other")
                page.samples.append((campaign, bounce_class, reply[:300]))
        return page

    def _parsed(self, dims: str) -> rollups.Dims:
        found = self._parsed_dims.get(dims)
        if found is None:
            parsed = rollups.parse_field(dims)
            assert parsed is not None
            found = self._parsed_dims[dims] = parsed[1]
            if len(self._parsed_dims) > 100_000:
                self._parsed_dims.clear()
        return found

    def _buckets(self, stamp: float) -> tuple[str, str]:
        """The hour and day of a time, made once per hour seen."""
        hour = int(stamp // 3600)
        found = self._hours.get(hour)
        if found is None:
            found = self._hours[hour] = (rollups.hour_of(stamp), rollups.day_of(stamp))
            if len(self._hours) > 1000:
                self._hours.clear()
        return found

    async def _dims(self, event: dict[str, Any], senders: dict[str, tuple[str, str]]) -> str:
        """The dimensions an event is counted under, as the tail of its counter fields
        (``TAB campaign TAB category ...``: ``rollups.Dims.field`` without the metric)."""
        message_id = str(event.get("message_id") or "")
        content = await self._batch(message_id)
        if "ip" in event:
            ip, pool = str(event.get("ip") or ""), str(event.get("pool") or "")
        else:
            ip, pool = senders.get(message_id, ("", ""))
        email = str(event.get("email") or "")
        domain = email.rpartition("@")[2].lower()
        key = (content, domain, ip, pool, event.get("campaign"), event.get("category"))
        found = self._dims_seen.get(key)
        if found is None:
            category = str(event.get("category") or "")
            campaign = str(event.get("campaign") or category)
            sending_domain = ""
            if content is not None:
                campaign, category, sending_domain = content
            provider = provider_of(domain) if domain else "other"
            dims = rollups.Dims(campaign, category, provider, ip, pool, sending_domain)
            found = self._dims_seen[key] = dims.field("")
            if len(self._dims_seen) > 100_000:
                self._dims_seen.clear()
        return found

    async def _batch(self, message_id: str) -> tuple[str, str, str] | None:
        """Campaign (else category), category and sending domain of the message's batch."""
        split = split_message_id(message_id)
        if split is None:
            return None
        batch_id = split[0]
        if batch_id in self._batches:
            self._batches.move_to_end(batch_id)
            return self._batches[batch_id]
        content = await self.store.batch_content(batch_id)
        found = None
        if content is not None:
            category = content.category or ""
            found = (content.campaign or category, category, domain_of(content.sender.email))
        self._batches[batch_id] = found
        if len(self._batches) > BATCHES_REMEMBERED:
            self._batches.popitem(last=False)
        return found
