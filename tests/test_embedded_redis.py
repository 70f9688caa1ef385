"""The embedded Redis and the data dir: durability settings, one serve per dir, crash leftovers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.embedded_redis import EmbeddedRedis
from core.shards import Shards
from loadtests.harness import API_KEY, TEST_SHARDS, Served, children_of, fixture_batch, free_port
from tests.conftest import Sink
from tests.test_end_to_end import get, post, wait_status

pytestmark = pytest.mark.slow


# --- helpers ---------------------------------------------------------------------


def redis_pid(data_dir: Path) -> int:
    return int((data_dir / "redis" / "redis.pid").read_text().strip())


def is_running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if is_running(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if is_running(pid)]


def send_and_deliver(served: Served, sink: Sink, count: int, start: int) -> list[str]:
    """POST ``count`` recipients, wait for every one of them at the sink and as delivered."""
    status, answer = post(served, "/v1/messages", fixture_batch(count, start=start))
    assert status == 202, answer
    ids = [r["message_id"] for r in answer["results"]]
    wanted = {f"user{i}@inbox.example.org" for i in range(start, start + count)}
    deadline = time.monotonic() + 30
    while not wanted <= {r.rcpt_tos[0] for r in sink.snapshot()}:
        assert time.monotonic() < deadline, "the batch was not delivered to the sink"
        time.sleep(0.05)
    for message_id in ids:
        assert wait_status(served, message_id, "delivered")["status"] == "delivered"
    return ids


def serve_env(data_dir: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "SLUICE_API_KEY": API_KEY,
        "SLUICE_DATA_DIR": str(data_dir),
        "SLUICE_LISTEN": f"127.0.0.1:{free_port()}",
        "SLUICE_WORKERS": "1",
    }


@pytest.fixture
def kill_leftovers() -> Iterator[list[int]]:
    """Process groups to SIGKILL at the end, whatever happened (orphans of a killed serve)."""
    groups: list[int] = []
    yield groups
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


# --- tests -----------------------------------------------------------------------


@pytest.mark.parametrize("path_length", ["short", "long"])
def test_embedded_redis_has_aof_on_and_appendfsync_always(
    serve_factory: Any, tmp_path: Path, path_length: str
) -> None:
    data_dir = tmp_path / "data"
    if path_length == "long":  # too long for a unix socket: one in a private dir instead
        data_dir = tmp_path / ("d" * 110)
    served = serve_factory(relay=None, workers=0, data_dir=data_dir)
    url = served.redis_url()
    sock = data_dir / "redis" / "redis.sock"
    if path_length == "short":
        assert url == f"unix://{sock}"
        assert sock.is_socket()
        assert sock.stat().st_mode & 0o777 == 0o700
    else:
        assert re.fullmatch(r"unix:///\S+/sluice-redis-\w+/redis\.sock", url), url

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("dir") == {"dir": str(data_dir / "redis")}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("save") == {"save": ""}

        status, _ = post(served, "/v1/messages", fixture_batch(3))
        assert status == 202
        assert sum(client.xlen(shard.keys.jobs) for shard in Shards(TEST_SHARDS).all) == 3
    finally:
        client.close()
    # Redis 6.2 writes redis/sluice.aof; Redis 7 the parts of a multi-part AOF under
    # redis/appendonlydir/ (sluice.aof.1.incr.aof, ...)
    aof = b"".join(p.read_bytes() for p in (data_dir / "redis").rglob("sluice.aof*") if p.is_file())
    assert b"user2@inbox.example.org" in aof, "accepted jobs are in the AOF"
    assert served.stop() == 0


def test_second_serve_on_the_same_data_dir_refuses(
    serve_factory: Any, sink: Sink, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = serve_factory(relay=sink.relay, workers=1, data_dir=data_dir)
    first_redis = redis_pid(data_dir)

    second = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve"],
        env=serve_env(data_dir),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2, second
    assert f"data dir {data_dir} is in use by sluice serve (pid {first.process.pid})" in (
        second.stderr
    ), second.stderr
    assert "Traceback" not in second.stderr

    # The first one did not notice: same Redis, same lock holder, still delivering.
    assert first.process.poll() is None
    assert redis_pid(data_dir) == first_redis and is_running(first_redis)
    assert (data_dir / "sluice.lock").read_text() == str(first.process.pid)
    assert get(first, "/healthz") == {"status": "ok"}
    send_and_deliver(first, sink, 5, start=0)
    assert first.stop() == 0


def test_kill_9_of_serve_alone_takes_its_children_down(
    serve_factory: Any, sink: Sink, tmp_path: Path, kill_leftovers: list[int]
) -> None:
    data_dir = tmp_path / "data"
    served = serve_factory(relay=sink.relay, workers=2, data_dir=data_dir)
    kill_leftovers.append(served.process.pid)
    before = send_and_deliver(served, sink, 5, start=0)
    embedded = redis_pid(data_dir)
    children = children_of(served.process.pid)
    assert embedded in children
    assert len(children) >= 3, "redis-server and two workers"

    os.kill(served.process.pid, signal.SIGKILL)  # the main process only, not the group
    served.process.wait(10)
    survivors = wait_gone(children, timeout=20)
    assert survivors == [], (
        f"children of the killed serve still running after 20 s: {survivors} "
        f"(redis-server is {embedded})"
    )

    again = serve_factory(relay=sink.relay, workers=2, data_dir=data_dir)
    assert redis_pid(data_dir) != embedded
    for message_id in before:
        assert get(again, f"/v1/messages/{message_id}")["status"] == "delivered"
    send_and_deliver(again, sink, 5, start=5)
    assert again.stop() == 0


def test_restart_after_kill_9_of_the_group_clears_the_stale_pid_file_and_socket(
    serve_factory: Any, sink: Sink, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    served = serve_factory(relay=None, workers=0, data_dir=data_dir)
    status, answer = post(served, "/v1/messages", fixture_batch(20))
    assert status == 202
    old_pid = redis_pid(data_dir)

    served.kill_group()
    assert wait_gone([old_pid], timeout=10) == []
    # What the crash left behind:
    assert (data_dir / "redis" / "redis.pid").read_text().strip() == str(old_pid)
    assert (data_dir / "redis" / "redis.sock").is_socket()

    again = serve_factory(relay=sink.relay, workers=1, data_dir=data_dir)
    assert redis_pid(data_dir) != old_pid
    assert "Address already in use" not in (data_dir / "redis" / "redis.log").read_text()
    received = sink.wait_for(20, timeout=30)
    assert {r.rcpt_tos[0] for r in received} == {f"user{i}@inbox.example.org" for i in range(20)}, (
        "every job accepted before the crash is delivered after the restart"
    )
    for result in answer["results"]:
        assert wait_status(again, result["message_id"], "delivered")["status"] == "delivered"
    assert again.stop() == 0


def test_redis_url_uses_the_external_redis(serve_factory: Any, sink: Sink, tmp_path: Path) -> None:
    external = EmbeddedRedis(tmp_path / "external", fsync="everysec")
    url = external.start()
    try:
        data_dir = tmp_path / "data"
        served = serve_factory(
            relay=sink.relay, workers=1, data_dir=data_dir, args=["--redis-url", url]
        )
        assert not (data_dir / "redis").exists(), "no embedded Redis in the data dir"
        assert "embedded Redis ready" not in served.log()
        ids = send_and_deliver(served, sink, 3, start=0)

        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            for message_id in ids:
                record = Shards(TEST_SHARDS).of_message(message_id).keys.message(message_id)  # type: ignore[union-attr]
                assert client.hget(record, "s") == b"delivered"
            assert served.stop() == 0
            assert external.alive(), "stopping serve leaves an external Redis alone"
            assert client.ping()
        finally:
            client.close()
        assert not (data_dir / "redis").exists()
    finally:
        external.stop()


def test_stale_pid_file_naming_another_redis_server_does_not_kill_it(tmp_path: Path) -> None:
    """A pid file outlives a crash (or a reboot); its pid may now be someone else's redis-server."""
    bystander = EmbeddedRedis(tmp_path / "bystander", fsync="everysec")
    bystander.start()
    mine = EmbeddedRedis(tmp_path / "mine")
    try:
        assert bystander.process is not None
        mine.dir.mkdir(parents=True)
        mine.pidfile.write_text(f"{bystander.process.pid}\n")
        mine.start()
        assert bystander.alive(), (
            f"starting the embedded Redis in {mine.dir} stopped an unrelated redis-server "
            f"(pid {bystander.process.pid}, dir {bystander.dir}) named by a stale pid file"
        )
    finally:
        mine.stop()
        bystander.stop()
