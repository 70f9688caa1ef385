"""Real components for the tests: a Redis server, an SMTP sink, `sluice serve` processes.

Nothing of Sluice's own is mocked. Redis is a real ``redis-server`` (the same
embedded one ``sluice serve`` uses); the sink is aiosmtpd on loopback; end-to-end
tests run the real CLI in a subprocess and talk to it over HTTP.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller

from core.embedded_redis import EmbeddedRedis
from core.settings import Secret, Settings, load_settings
from core.store import Store, open_store
from gateway.app import RUNNER_OPTIONS, create_app
from loadtests.harness import (
    API_KEY,
    Served,
    free_port,
    start_serve,
)

# --- Redis ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), fsync="everysec")
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    async with open_store(redis_url) as opened:
        await opened.redis.flushall()
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


# --- the HTTP app in-process ------------------------------------------------------


def make_settings(tmp_path: Path, **flags: Any) -> Settings:
    base = {"data_dir": str(tmp_path / "data"), "workers": "0"}
    base.update({k: str(v) for k, v in flags.items()})
    return load_settings(base, env={})


@pytest.fixture
async def api(redis_url: str, store: Store, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """The real aiohttp app on a real port, against the real Redis (no delivery workers)."""
    app = create_app(make_settings(tmp_path), redis_url, Secret(API_KEY))
    client: TestClient[Any, Any] = TestClient(TestServer(app, **RUNNER_OPTIONS))
    await client.start_server()
    client.session.headers["Authorization"] = f"Bearer {API_KEY}"
    yield client
    await client.close()


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


def need_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        tool_missing(f"needs {', '.join(missing)}")
