"""Real components for the tests: a Redis server, an SMTP sink, `sluice serve` processes.

Nothing of Sluice's own is mocked. Redis is a real ``redis-server`` (the same
embedded one ``sluice serve`` uses); the sink is aiosmtpd on loopback; end-to-end
tests run the real CLI in a subprocess and talk to it over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller

from core.embedded_redis import EmbeddedRedis
from core.settings import Secret, Settings, load_settings
from core.store import Store, open_store
from gateway.app import create_app

# A copy of the shared cart-reminder fixture ships in the repo (test_fixture_copy_is_current
# checks it against ../shared when that is present).
FIXTURE = Path(__file__).resolve().parents[1] / "loadtests" / "fixtures" / "cart-reminder.json"
API_KEY = "test-api-key-0123456789"


def cart_reminder() -> dict[str, Any]:
    """The realistic message every end-to-end test uses."""
    return json.loads(FIXTURE.read_text())  # type: ignore[no-any-return]


def fixture_batch(
    count: int, *, start: int = 0, domain: str = "inbox.example.org"
) -> dict[str, Any]:
    """The cart reminder addressed to ``count`` personalized recipients."""
    body = cart_reminder()
    template = body["recipients"][0]
    body["recipients"] = [
        {
            **template,
            "email": f"user{i}@{domain}",
            "contact_id": f"c-{i}",
            "data": {
                **template["data"],
                "first_name": f"User{i}",
                "cart_url": f"https://shop.example.com/cart/{i}",
            },
        }
        for i in range(start, start + count)
    ]
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class _SinkHandler:
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
        _SinkHandler(the_sink), hostname="127.0.0.1", port=port, decode_data=False
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
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    client.session.headers["Authorization"] = f"Bearer {API_KEY}"
    yield client
    await client.close()


# --- `sluice serve` as a user runs it --------------------------------------------------


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path
    api_key: str = API_KEY

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal everything serve started at once: itself, its workers and its embedded Redis.

        The embedded Redis runs in a session of its own (so a terminal's Ctrl-C does not
        reach it), so it is signalled through its pid file rather than the process group.
        """
        pidfile = self.data_dir / "redis" / "redis.pid"
        redis_pid = int(pidfile.read_text()) if pidfile.exists() else None
        if redis_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(redis_pid, sig)
        os.killpg(self.process.pid, sig)
        self.process.wait(30)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
        return int(self.process.returncode)


def start_serve(
    data_dir: Path,
    *,
    relay: str | None,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    args: list[str] | None = None,
    timeout: float = 60,
) -> ServeProcess:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "SLUICE_API_KEY": API_KEY,
        "SLUICE_DATA_DIR": str(data_dir),
        "SLUICE_LISTEN": f"127.0.0.1:{port}",
        "SLUICE_WORKERS": str(workers),
        "SLUICE_RETRY_SCHEDULE": "1s,2s,4s",
        "SLUICE_MAX_DEFERRAL": "60s",
        "SLUICE_DRAIN_TIMEOUT": "10s",
        **(extra_env or {}),
    }
    if relay:
        env["SLUICE_RELAY"] = relay
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"serve-{port}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", *(args or [])],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=data_dir.parent,
        )
    served = ServeProcess(process, f"http://127.0.0.1:{port}", data_dir, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"sluice serve exited with {process.returncode}:\n{served.log()}")
        if "sluice: ready on" in served.log():
            return served
        time.sleep(0.05)
    served.kill_group()
    raise AssertionError(f"sluice serve did not become ready:\n{served.log()}")


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[ServeProcess] = []

    def factory(**kwargs: Any) -> ServeProcess:
        data_dir = kwargs.pop("data_dir", tmp_path / "data")
        served = start_serve(data_dir, **kwargs)
        started.append(served)
        return served

    yield factory
    for served in started:
        if served.process.poll() is None:
            served.kill_group()
