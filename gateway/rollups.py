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
from collections import OrderedDict
from typing import Any

from core import rollups
from core.addresses import domain_of
from core.ids import split_message_id
from core.shards import Shard
from core.store import Store
from core.store.rollups import Page
from warmup.providers import provider_of

log = logging.getLogger(__name__)

PAGE = 1000  # events per shard and script call
IDLE_SECONDS = 0.5  # between rounds that found nothing
BATCHES_REMEMBERED = 10_000
# events about a delivered message that carry no sending IP: looked up in its record
_AFTER_DELIVERY = frozenset({"opened", "clicked", "unsubscribed", "complained", "bounced"})


class Roller:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.owner = secrets.token_hex(8)
        self.stopping = asyncio.Event()
        # batch id -> (campaign, category, sending domain) from its content
        self._batches: OrderedDict[str, tuple[str, str, str] | None] = OrderedDict()

    async def run(self) -> None:
        while not self.stopping.is_set():
            counted = 0
            try:
                if await self.store.rollups.lease(self.owner):
                    counted = await self.once()
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
            if await self.store.rollups.apply(page):
                counted += len(events)
        return counted

    async def _page(self, shard: Shard, cursor: str, events: list[dict[str, Any]]) -> Page:
        page = Page(shard, cursor, events[-1]["entry_id"])
        asked = [
            e["message_id"] for e in events if "ip" not in e and e.get("type") in _AFTER_DELIVERY
        ]
        senders = dict(zip(asked, await self.store.rollups.senders(shard, asked), strict=True))
        for event in events:
            dims = await self._dims(event, senders)
            stamp = float(event.get("timestamp") or 0)
            hour, day = rollups.hour_of(stamp), rollups.day_of(stamp)
            for metric in rollups.metrics_of(event):
                counter = dims.field(metric)
                page.counts[(rollups.HOURLY, hour, counter)] += 1
                page.counts[(rollups.DAILY, day, counter)] += 1
            if event.get("type") == "clicked" and event.get("url"):
                link = rollups.link_field(dims.campaign, event["url"], bool(event.get("machine")))
                page.counts[(rollups.DAILY, day, link)] += 1
            if event.get("type") == "bounced":
                reply = " ".join(
                    str(part)
                    for part in (event.get("smtp_code"), event.get("status"), event.get("reason"))
                    if part
                )
                bounce_class = str(event.get("bounce_class") or "other")
                page.samples.append((dims.campaign, bounce_class, reply[:300]))
        return page

    async def _dims(
        self, event: dict[str, Any], senders: dict[str, tuple[str, str]]
    ) -> rollups.Dims:
        message_id = str(event.get("message_id") or "")
        content = await self._batch(message_id)
        category = str(event.get("category") or "")
        campaign = str(event.get("campaign") or category)
        sending_domain = ""
        if content is not None:
            campaign, category, sending_domain = content
        if "ip" in event:
            ip, pool = str(event.get("ip") or ""), str(event.get("pool") or "")
        else:
            ip, pool = senders.get(message_id, ("", ""))
        email = str(event.get("email") or "")
        provider = provider_of(domain_of(email)) if "@" in email else "other"
        return rollups.Dims(campaign, category, provider, ip, pool, sending_domain)

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
