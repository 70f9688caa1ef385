"""Redis for operator commands (``sluice suppress``, ...): the running gateway's, or a brief one.

With ``--redis-url``/``SLUICE_REDIS_URL``, that Redis. Otherwise the data dir's
embedded Redis: if ``sluice serve`` holds the data dir, the commands use the
Redis it started (its address is in ``<data dir>/redis/url``); if not, they take
the data dir's lock and start the embedded Redis for the length of the command.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from core.datadir import DataDirLock
from core.embedded_redis import EmbeddedRedis
from core.errors import ConfigurationError
from core.settings import Settings
from core.store import Store, open_store


def where_options(*, redis: bool = True) -> argparse.ArgumentParser:
    """``--data-dir``, ``--config`` (and ``--redis-url``): which Sluice an operator command is for."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--data-dir", metavar="DIR", help="env SLUICE_DATA_DIR; default ./sluice-data"
    )
    where.add_argument("--config", metavar="PATH", help="sluice.toml to read (env SLUICE_CONFIG)")
    if redis:
        where.add_argument(
            "--redis-url", metavar="URL", help="env SLUICE_REDIS_URL; default: embedded"
        )
    return where


@asynccontextmanager
async def operator_store(settings: Settings) -> AsyncIterator[Store]:
    """The store a command works on; an explicit ``SLUICE_SHARDS`` is checked against the data's
    (or written, before any data: a list imported before the first ``sluice serve``)."""
    shards = settings.redis.shards
    if settings.redis.url is not None:
        async with open_store(settings.redis.url, shards=shards) as store:
            yield store
        return
    lock = DataDirLock(settings.data_dir)
    try:
        lock.__enter__()
    except ConfigurationError:  # sluice serve runs on this data dir: use its Redis
        url_file = EmbeddedRedis(settings.data_dir).url_file
        try:
            url = url_file.read_text().strip()
        except FileNotFoundError as exc:
            raise ConfigurationError(
                f"sluice serve holds {settings.data_dir} but its Redis is not up yet; try again"
            ) from exc
        async with open_store(url, shards=shards) as store:
            yield store
        return
    try:
        redis = EmbeddedRedis(settings.data_dir, binary=settings.redis.server)
        url = redis.start()
        try:
            async with open_store(url, shards=shards) as store:
                yield store
        finally:
            redis.stop()
    finally:
        lock.__exit__(None, None, None)
