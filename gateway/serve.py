"""``sluice serve``: the embedded Redis, the delivery workers and the HTTP API.

Start order: lock the data dir, make the metrics directory (``core.metrics``: before
anything imports prometheus_client), start (or reach) Redis, spawn the workers, open
the HTTP listener. Stop order on SIGTERM or Ctrl-C: close the listener and
finish in-flight requests, tell workers to stop (they finish in-flight SMTP
transactions up to the drain timeout and leave the rest queued), stop Redis.
A worker that dies is restarted; its unfinished jobs are taken over, and its metrics
stay counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from multiprocessing.context import SpawnProcess
from pathlib import Path

from aiohttp import web

from core import metrics
from core.datadir import DataDirLock, load_or_create_api_key, load_or_create_secret, node_id
from core.embedded_redis import EmbeddedRedis
from core.errors import ConfigurationError
from core.logs import show_addresses
from core.settings import Secret, Settings
from core.store import open_store
from gateway.app import RUNNER_OPTIONS, create_app
from gateway.webhooks import WebhookDispatcher
from mta.inbound import start_inbound
from mta.message_ids import MessageIds
from mta.verp import Verp
from mta.worker import run_worker_process
from tracking.tokens import load_keys

log = logging.getLogger(__name__)


class WorkerSupervisor:
    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        count: int,
        verp_key: Secret,
        metrics_dir: Path,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.verp_key = verp_key
        self.metrics_dir = metrics_dir
        self.context = multiprocessing.get_context("spawn")
        self.processes: dict[str, SpawnProcess] = {}
        node = node_id(settings.data_dir)
        self.names = [f"{node}-w{i}" for i in range(count)]
        self.stopping = False

    def _spawn(self, name: str) -> None:
        process = self.context.Process(
            target=run_worker_process,
            args=(
                self.settings,
                self.redis_url,
                name,
                self.verp_key,
                logging.getLogger().level,
                os.getpid(),
                self.metrics_dir,
            ),
            name=f"sluice-worker-{name}",
            daemon=False,
        )
        process.start()
        self.processes[name] = process

    def start(self) -> None:
        for name in self.names:
            self._spawn(name)

    def restart_dead(self) -> None:
        if self.stopping:
            return
        for name, process in list(self.processes.items()):
            if not process.is_alive():
                log.error("worker %s exited with %s; restarting it", name, process.exitcode)
                self._exited(process)
                self._spawn(name)

    @staticmethod
    def _exited(process: SpawnProcess) -> None:
        if process.pid is not None:
            metrics.process_exited(process.pid)

    async def stop(self, drain_seconds: float) -> None:
        self.stopping = True
        for process in self.processes.values():
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: drain, then exit
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_seconds + 5
        for process in self.processes.values():
            await loop.run_in_executor(None, process.join, max(0.0, deadline - loop.time()))
            if process.is_alive():
                process.kill()
                await loop.run_in_executor(None, process.join)
            self._exited(process)


async def _run(
    settings: Settings,
    redis: EmbeddedRedis | None,
    redis_url: str,
    api_key: Secret,
    metrics_dir: Path,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with open_store(redis_url, shards=settings.redis.shards) as store:
        # the shard count is written by the first start and refused if another differs
        log.info("data in %d shard%s", store.shards.count, "s" if store.shards.count > 1 else "")
    verp_key, _ = load_or_create_secret(settings.data_dir, "verp-key")
    load_keys(settings.data_dir)  # the tracking keys exist before any worker reads them
    workers = WorkerSupervisor(
        settings, redis_url, settings.delivery.workers, verp_key, metrics_dir
    )
    runner = web.AppRunner(
        create_app(settings, redis_url, api_key),
        shutdown_timeout=10,
        access_log=None,
        **RUNNER_OPTIONS,
    )
    await runner.setup()
    try:
        async with contextlib.AsyncExitStack() as resources:
            if settings.delivery.inbound is not None:
                store = await resources.enter_async_context(open_store(redis_url))
                inbound = await start_inbound(
                    store,
                    Verp(verp_key),
                    settings.delivery.inbound,
                    settings.delivery.ehlo_name,
                    Verp(verp_key, prefix="unsubscribe+"),
                    MessageIds(verp_key),
                    settings.warmup,
                    settings.delivery.soft_bounce_limit,
                )
                resources.push_async_callback(inbound.wait_closed)
                resources.callback(inbound.close)
            if settings.webhooks.url is not None:
                hooks_store = await resources.enter_async_context(open_store(redis_url))
                dispatcher = WebhookDispatcher(hooks_store, settings.webhooks)
                hooks = asyncio.create_task(dispatcher.run(), name="webhooks")

                async def stop_hooks() -> None:
                    dispatcher.stopping.set()
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait_for(hooks, 20)

                resources.push_async_callback(stop_hooks)
                log.info("webhooks to %s", settings.webhooks.url)
            site = web.TCPSite(
                runner, settings.http.listen.host, settings.http.listen.port, backlog=1024
            )
            await site.start()
            if settings.http.metrics_listen is not None:
                scraped = settings.http.metrics_listen
                await web.TCPSite(runner, scraped.host, scraped.port).start()
                log.info("metrics on http://%s/metrics (no API key: keep it private)", scraped)
            workers.start()
            log.info(
                "sluice serving on http://%s (public URL %s), %d delivery workers, %s",
                settings.http.listen,
                settings.http.public_url,
                settings.delivery.workers,
                f"relay {settings.delivery.relay}" if settings.delivery.relay else "delivery by MX",
            )
            print(
                f"sluice: ready on http://{settings.http.listen} "
                f"(console: http://{settings.http.listen}/ui/)",
                flush=True,
            )
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                workers.restart_dead()
                if redis is not None and not redis.alive():
                    log.error("embedded Redis exited; restarting it from its AOF")
                    redis.start()
            log.info("shutting down: closing the HTTP listener")
    finally:
        await runner.cleanup()
        log.info("stopping workers (drain up to %.0fs)", settings.delivery.drain_timeout)
        await workers.stop(settings.delivery.drain_timeout)


def serve(settings: Settings) -> int:
    import uvloop

    os.umask(0o077)  # whatever serve and its workers write (keys, certificates) is private
    show_addresses(settings.log_addresses)
    with DataDirLock(settings.data_dir):
        # Every process's metrics in files there, merged by /metrics; set before the app
        # or any worker creates a metric.
        metrics_dir = metrics.fresh_directory(settings.data_dir / "metrics")
        metrics.use_directory(metrics_dir)
        redis = None
        redis_url = settings.redis.url
        if redis_url is None and settings.redis.min_replicas:
            raise ConfigurationError(
                "Config SLUICE_REDIS_MIN_REPLICAS needs a Redis with replicas: the embedded "
                "one has none (set SLUICE_REDIS_URL, or leave SLUICE_REDIS_MIN_REPLICAS at 0)"
            )
        if redis_url is None:
            redis = EmbeddedRedis(settings.data_dir, binary=settings.redis.server)
            redis_url = redis.start()
        try:
            api_key = settings.api_key
            if api_key is None:
                api_key, created = load_or_create_api_key(settings.data_dir)
                where = settings.data_dir / "api-key"
                # The key is shown once, when it is made; afterwards only where it is.
                shown = f"API key generated in {where}:\n  {api_key.reveal()}"
                print(f"sluice: {shown if created else f'API key in {where}'}", file=sys.stderr)
            uvloop.run(_run(settings, redis, redis_url, api_key, metrics_dir))
        finally:
            if redis is not None:
                redis.stop()
    log.info("stopped")
    return 0
