"""Real components for the tests: a Redis server, an SMTP sink, `sluice serve` processes.

Nothing of Sluice's own is mocked. Redis is a real ``redis-server`` (the same
embedded one ``sluice serve`` uses); the sink is aiosmtpd on loopback. End-to-end
tests run in two ways: in-process (``relay_settings``, ``relay_api``, ``worker``,
``inbound``, ``webhooks``: the gateway's parts in the test's event loop, delivering in
burst mode, fast enough for ``pytest -m "not slow"``), or as whole ``sluice serve``
process groups (``serve_factory``, tests marked ``slow``) where a process boundary is
what is tested: signals, kill -9, the embedded Redis, the CLI.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from aiohttp.test_utils import TestClient
from aiosmtpd.controller import Controller

from core.embedded_redis import EmbeddedRedis
from core.settings import HostPort, Settings, load_settings
from core.store import Store, open_store
from loadtests.fault_sink import FaultSink
from loadtests.harness import TEST_SHARDS, Served, free_port, start_serve
from loadtests.redis_cluster import LocalCluster
from mta.worker import Worker
from tests.inprocess import (
    WEBHOOK_SECRET,
    Webhooks,
    running_api,
    running_inbound,
    running_worker,
    webhook_receiver,
)

# --- Redis ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), fsync="everysec")
    url = server.start()
    yield url
    server.stop()


@asynccontextmanager
async def fresh_store(redis_url: str, shards: int) -> AsyncIterator[Store]:
    """The store on an emptied Redis, whose data is in ``shards`` shards."""
    async with open_store(redis_url) as previous:
        await previous.redis.flushall()
    async with open_store(redis_url, shards=shards) as opened:
        yield opened


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    """An empty Redis; with ``TEST_SHARDS`` shards (``PYTEST_SLUICE_SHARDS``, 1 by default: the
    suite can run over several shards on one Redis). A module whose tests should run over one
    shard and over several parametrizes its own (``tests/test_inprocess_e2e.py``)."""
    async with fresh_store(redis_url, TEST_SHARDS) as opened:
        yield opened


# --- SMTP sink -----------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class Sink:
    host: str
    port: int
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reply: str = "250 OK"  # what DATA answers; tests may set "451 try later" etc.
    # recipient -> what RCPT TO answers instead of 250 ("550 5.1.1 No such user")
    refuse: dict[str, str] = field(default_factory=dict)

    @property
    def relay(self) -> str:
        return f"{self.host}:{self.port}"

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.snapshot()
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"sink got {len(self.snapshot())} messages, expected {count}")

    async def async_wait_for(self, count: int, seconds: float = 60.0) -> list[Received]:
        return await asyncio.to_thread(self.wait_for, count, seconds)


class SinkHandler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        refused = self.sink.refuse.get(address)
        if refused is not None:
            return refused
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self.sink.reply
        if reply.startswith("250"):
            with self.sink.lock:
                self.sink.messages.append(
                    Received(
                        envelope.mail_from,
                        list(envelope.rcpt_tos),
                        bytes(envelope.original_content),
                    )
                )
        return reply


@pytest.fixture
def sink() -> Iterator[Sink]:
    port = free_port()
    the_sink = Sink("127.0.0.1", port)
    controller = Controller(
        SinkHandler(the_sink), hostname="127.0.0.1", port=port, decode_data=False
    )
    controller.start()
    yield the_sink
    controller.stop()


@pytest.fixture
def fault_sink() -> Iterator[FaultSink]:
    """The fault-injecting sink (``loadtests.fault_sink``), answering by its rules and scripts
    (a test sets them; by default it accepts), its random draws seeded."""
    with FaultSink(seed=1) as sink:
        yield sink


# --- the HTTP app in-process ------------------------------------------------------


def make_settings(tmp_path: Path, **flags: Any) -> Settings:
    base = {"data_dir": str(tmp_path / "data"), "workers": "0"}
    base.update({k: str(v) for k, v in flags.items()})
    return load_settings(base, env={})


@pytest.fixture
async def api(redis_url: str, store: Store, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """The real aiohttp app on a real port, against the real Redis (no delivery workers)."""
    async with running_api(make_settings(tmp_path), redis_url, port=0) as client:
        yield client


# --- a whole gateway in-process ----------------------------------------------------------


def gateway_settings(tmp_path: Path, **flags: Any) -> Settings:
    """Settings of an in-process gateway on ``tmp_path / "data"``: the API and the inbound
    server on free loopback ports (the API's address is the public URL of tracking links),
    retry and drain times in seconds as for ``serve_factory``."""
    short = {name.removeprefix("SLUICE_").lower(): value for name, value in TEST_SERVE_ENV.items()}
    listen = {"listen": f"127.0.0.1:{free_port()}", "inbound": f"127.0.0.1:{free_port()}"}
    return make_settings(tmp_path, **{**short, **listen, **flags})


@pytest.fixture
def relay_settings(tmp_path: Path, sink: Sink) -> Settings:
    """A gateway relaying everything into the ``sink``."""
    return gateway_settings(tmp_path, relay=sink.relay)


@pytest.fixture
async def relay_api(
    relay_settings: Settings, redis_url: str, store: Store
) -> AsyncIterator[TestClient[Any, Any]]:
    """The API of that gateway, on the address its tracking links point at."""
    async with running_api(relay_settings, redis_url) as client:
        yield client


@pytest.fixture
async def worker(relay_settings: Settings, store: Store) -> AsyncIterator[Worker]:
    """A delivery worker of that gateway: ``await worker.run_until_idle()`` delivers what is
    queued and due, into the sink."""
    async with running_worker(relay_settings, store) as opened:
        yield opened


@pytest.fixture
async def inbound(relay_settings: Settings, store: Store) -> AsyncIterator[HostPort]:
    """The inbound SMTP server (bounces, complaints) of that gateway: its address."""
    async with running_inbound(relay_settings, store) as listen:
        yield listen


@pytest.fixture
async def webhooks(tmp_path: Path, store: Store) -> AsyncIterator[Webhooks]:
    """A webhook receiver on loopback and the settings that point at it; a test sends with
    ``await webhooks.dispatch_until(check)``."""
    async with webhook_receiver() as receiver:
        settings = make_settings(
            tmp_path,
            webhook_url=receiver.url,
            webhook_secret=WEBHOOK_SECRET,
            webhook_allow_private="true",
            webhook_retry_base="0.2s",
            webhook_batch_size=10,
        )
        yield Webhooks(store, receiver, settings.webhooks)


# --- `sluice serve` as a user runs it --------------------------------------------------

# Short retry and drain times so tests of retries and shutdown run in seconds.
TEST_SERVE_ENV = {
    "SLUICE_RETRY_SCHEDULE": "1s,2s,4s",
    "SLUICE_MAX_DEFERRAL": "60s",
    "SLUICE_DRAIN_TIMEOUT": "10s",
    "SLUICE_THROTTLE_BACKOFF": "1s",
}


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def factory(**kwargs: Any) -> Served:
        data_dir = kwargs.pop("data_dir", tmp_path / "data")
        kwargs.setdefault("workers", 2)
        kwargs["extra_env"] = {**TEST_SERVE_ENV, **kwargs.get("extra_env", {})}
        served = start_serve(data_dir, **kwargs)
        started.append(served)
        return served

    yield factory
    for served in started:
        if served.process.poll() is None:
            served.kill_group()


def tool_missing(reason: str) -> NoReturn:
    """A test needs something scripts/test-deps installs: fail, unless the run opted out
    with SLUICE_ALLOW_MISSING_TOOLS=1 (a machine where packages cannot be installed)."""
    if os.environ.get("SLUICE_ALLOW_MISSING_TOOLS"):
        pytest.skip(reason)
    pytest.fail(f"{reason} (scripts/test-deps installs it; SLUICE_ALLOW_MISSING_TOOLS=1 skips)")


# What the cluster tests run with: Sluice's data spread over the three masters.
CLUSTER_SHARDS = 16


def on_cluster(cluster: LocalCluster, **more: str) -> dict[str, str]:
    """``sluice serve``'s environment on ``cluster``, its data in ``CLUSTER_SHARDS`` shards."""
    return {"SLUICE_REDIS_URL": cluster.url, "SLUICE_SHARDS": str(CLUSTER_SHARDS), **more}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A Redis Cluster of three masters on loopback (``loadtests/redis_cluster.py``), one per
    test module."""
    need_tools("redis-server")
    with LocalCluster(masters=3) as running:
        yield running


def need_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        tool_missing(f"needs {', '.join(missing)}")
