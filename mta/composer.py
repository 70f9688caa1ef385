"""Composing: a batch's content and one job turned into the signed message, ready for the
wire. The delivery worker sends what it composes; the sandbox (``gateway.sandbox``) keeps it
in the capture inbox instead. ``Composer`` holds what composing needs per process: the
compiled builders of recent batches (``mta.compose``), their link tables, the tracking keys,
the DKIM keys and the keys of the signed return path and Message-ID."""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

from core.addresses import domain_of
from core.ids import split_message_id
from core.jobs import BatchContent, Job
from core.settings import Secret, Settings
from core.store import RETENTION_SECONDS, Store
from mta.compose import Extras, MessageBuilder
from mta.dkim import DkimSigner
from mta.dkimkeys import KeyStore
from mta.message_ids import MessageIds
from mta.render import TemplateCache
from mta.smtp import WireMessage
from mta.verp import Verp
from tracking.links import MessageLinks, static_links, url_indexes
from tracking.tokens import Tokens, load_keys, unsubscribe_payload

T = TypeVar("T")

KEPT_BATCHES = 512  # batch contents, builders and link tables kept per process


class Memo(Generic[T]):
    """Values by key (a batch's content, its builder, its link table), each made once even
    when many deliveries ask for it at the same time: they share the one making. The
    ``size`` most recently used are kept; a making that failed is forgotten."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[str, asyncio.Future[T]] = OrderedDict()

    def ready(self, key: str) -> T | None:
        """The value made for ``key``, if it is there already (no coroutine: most asks)."""
        future = self.items.get(key)
        if future is None or not future.done() or future.cancelled() or future.exception():
            return None
        self.items.move_to_end(key)
        return future.result()

    async def get(self, key: str, make: Callable[[], Awaitable[T]]) -> T:
        future = self.items.get(key)
        if future is None:
            future = self.items[key] = asyncio.ensure_future(make())
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        else:
            self.items.move_to_end(key)
            if future.done() and not future.cancelled() and future.exception() is None:
                return future.result()
        try:
            return await asyncio.shield(future)  # a cancelled asker leaves the making going
        except Exception:
            if self.items.get(key) is future:
                del self.items[key]
            raise


class Composer:
    """One process's composing state. ``renderer``: the threads that compile and render
    templates off the event loop. ``shared_links=False`` seals every link of a message on
    its own instead of indexing the batch's stored link table (the sandbox: its batches
    leave no table behind)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        verp_key: Secret,
        renderer: Executor,
        *,
        shared_links: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self.renderer = renderer
        self.shared_links = shared_links
        self.templates = TemplateCache()
        self.builders: Memo[MessageBuilder] = Memo(KEPT_BATCHES)
        self.verp = Verp(verp_key)
        self.unsubscribe = Verp(verp_key, prefix="unsubscribe+")
        self.message_ids = MessageIds(verp_key)  # signed: a complaint must name a real message
        self.tokens = Tokens(
            load_keys(settings.data_dir), max_age_days=settings.tracking.token_max_age_days
        )
        self.public_url = settings.http.public_url.rstrip("/")
        self.link_tables: Memo[dict[str, int]] = Memo(KEPT_BATCHES)
        # a batch's messages are built within its content's retention of being accepted, and
        # each token lives max_age_days from the (whole) day it was sealed
        self.link_table_ttl = (settings.tracking.token_max_age_days + 1) * 86400 + RETENTION_SECONDS
        self.signer = DkimSigner(
            KeyStore(settings.data_dir), signing_domain=settings.delivery.dkim_domain
        )

    def load(self) -> None:
        """Read the DKIM keys (again when their index changes: ``DkimSigner``)."""
        self.signer.load()

    async def compose(self, batch: BatchContent, job: Job) -> WireMessage:
        """One recipient's message, signed and ready for the wire (``mta.compose``). A plain
        template (``mta.render._plain``: it only prints a few values of the recipient's
        validated data, so it renders in microseconds and cannot spend a budget) is filled in
        right here; any other renders on a render thread, within its budgets."""
        builder = self.builders.ready(job.batch_id) or await self.builders.get(
            job.batch_id, functools.partial(self._builder, batch)
        )
        rendered = None
        if not builder.fast:
            loop = asyncio.get_running_loop()
            rendered = await loop.run_in_executor(self.renderer, builder.templates.render, job.data)
            html = rendered.html
            table = await self._link_table(
                batch, job, lambda: static_links(html or "", batch.html or "")
            )
        else:
            table = await self._link_table(batch, job, lambda: list(builder.link_table))
        links = MessageLinks(self.tokens, self.public_url, job.message_id, table)
        sender_domain = domain_of(batch.sender.email)
        extras = Extras(
            self.message_ids.header_value(job.message_id, sender_domain),
            {} if batch.transactional else self._unsubscribe_headers(job, batch, sender_domain),
        )
        keys = self.signer.signing_keys(sender_domain)
        if rendered is None:
            return builder.build(job, links, keys, extras)
        return builder.build_reference(job, links, keys, extras, rendered)

    async def _builder(self, batch: BatchContent) -> MessageBuilder:
        """The batch's templates compiled and its messages planned, on a render thread."""

        def make() -> MessageBuilder:
            templates = self.templates.get(batch.subject, batch.html, batch.text)
            return MessageBuilder(batch, templates, text_links=self.settings.tracking.text_links)

        return await asyncio.get_running_loop().run_in_executor(self.renderer, make)

    async def _link_table(
        self, batch: BatchContent, job: Job, urls: Callable[[], list[str]]
    ) -> dict[str, int]:
        """The batch's link table (URL -> index), made once per batch from ``urls`` (the
        links written out in its template, never recipient data), saved (the first worker's
        wins) and read back, so every worker indexes the table that is stored. Empty (every
        link sealed on its own) without click tracking, and for message 0 while no table is
        known: a batch of one message keeps no table for the tokens' lifetime."""
        if not batch.track_clicks or not self.shared_links:
            return {}
        table = self.link_tables.ready(job.batch_id)
        if table is not None:
            return table
        known = self.link_tables.items.get(job.batch_id)
        split = split_message_id(job.message_id)
        if known is None and (split is None or split[1] == 0):
            return {}

        async def make() -> dict[str, int]:
            candidates = urls()
            if candidates:
                await self.store.save_link_table(job.batch_id, candidates, self.link_table_ttl)
            return url_indexes(await self.store.link_table(job.batch_id) or [])

        return await self.link_tables.get(job.batch_id, make)

    def _unsubscribe_headers(
        self, job: Job, batch: BatchContent, sender_domain: str
    ) -> dict[str, str]:
        """RFC 8058 one-click (https) and, when bounces come back to us, a mailto."""
        payload = unsubscribe_payload(job.email, batch.category)
        token = self.tokens.seal("unsubscribe", job.message_id, payload)
        targets = [f"<{self.public_url}/t/u/{token}>"]
        if self.settings.delivery.inbound is not None:
            domain = self.settings.delivery.bounce_domain or sender_domain
            targets.append(f"<mailto:{self.unsubscribe.return_path(job.message_id, domain)}>")
        return {
            "List-Unsubscribe": ", ".join(targets),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
