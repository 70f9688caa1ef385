"""The real ``sluice serve`` in a subprocess, and the fixture message, for tests and benchmarks.

``start_serve()`` runs ``python -m gateway.cli serve`` in its own process group
with a given data dir (so its own embedded Redis, AOF ``appendfsync always``),
a fixed API key and a free loopback port, and waits until it says it is ready.
``served()`` does the same in a fresh temp dir that is removed afterwards.
``fixture_batch()`` addresses the realistic cart-reminder message to any number
of personalized recipients.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

API_KEY = "test-api-key-0123456789"
# The test suite may run over several shards on one Redis (tests/conftest.py, serve's env).
TEST_SHARDS = int(os.environ.get("PYTEST_SLUICE_SHARDS", "1"))
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# A copy of the shared cart-reminder fixture (tests/test_cli.py checks it is current).
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cart-reminder.json"
_REDIS_READY = re.compile(r"embedded Redis ready at (\S+)")
_WORKER_READY = re.compile(r"worker \S+ ready \(pid")


def cart_reminder() -> dict[str, Any]:
    """The realistic message every benchmark and end-to-end test uses."""
    return json.loads(FIXTURE.read_text())  # type: ignore[no-any-return]


def fixture_batch(
    count: int, *, start: int = 0, domain: str = "inbox.example.org"
) -> dict[str, Any]:
    """The cart reminder addressed to ``count`` personalized recipients numbered from ``start``."""
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


def fixture_message(index: int = 0, *, domain: str = "inbox.example.org") -> bytes:
    """The cart reminder for recipient ``index`` as the delivery worker builds it (pre-DKIM)."""
    from mta.mime import Mailbox, build_message
    from mta.render import Templates

    body = fixture_batch(1, start=index, domain=domain)
    recipient = body["recipients"][0]
    rendered = Templates(body["subject"], body.get("html"), body.get("text")).render(
        recipient["data"]
    )
    sender = body["from"]
    return build_message(
        sender=Mailbox(sender["email"], sender.get("name")),
        to=Mailbox(recipient["email"], recipient.get("name")),
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        message_id=f"bench-{index}@{sender['email'].rpartition('@')[2]}",
        reply_to=Mailbox(body["reply_to"]["email"]) if body.get("reply_to") else None,
        headers=body.get("headers") or {},
    )


def print_result(result: dict[str, Any], *, as_json: bool) -> None:
    """A benchmark's figures: JSON, or one ``name  value`` line each."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    width = max(map(len, result)) + 2
    for key, value in result.items():
        print(f"{key:<{width}}{value}")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def _live_processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name) of every process that is
    neither a zombie nor dead."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            yield int(entry.name), fields


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    return [child for child, fields in _live_processes() if int(fields[1]) == pid]


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (they outlive a leader killed alone)."""
    return [member for member, fields in _live_processes() if int(fields[2]) == pgid]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_seconds(pid: int) -> float:
    """The part of ``cpu_seconds`` spent in the kernel (system calls: sockets, files)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of a process so far (Linux /proc): each
    is a wait for the loop's next event or a preemption."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.endswith("ctxt_switches") or "ctxt_switches:" in line:
            total += int(line.split()[1])
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size of a process now (Linux /proc), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def py_spy(pid: int, output: Path | None) -> Iterator[None]:
    """Record ``pid`` with py-spy while the block runs (``.svg`` flame graph, ``.json``
    speedscope, anything else raw collapsed stacks); nothing if ``output`` is None."""
    if output is None:
        yield
        return
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(output.suffix, "raw")
    proc = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--nonblocking",
            "--threads",
            "--format",
            fmt,
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # let it attach before the clock starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Listening ports for tests and benchmarks are chosen below Linux's ephemeral range
# (32768-60999, where the kernel picks the local port of every outgoing connection), and so
# are the cluster bus ports 10,000 above them: between a port's pick and its bind, no
# outgoing connection of the many processes a test starts can take it.
_LISTEN_PORTS = range(10_000, 22_768)
_handed: set[int] = set()  # a port is handed out once per process: two picks never collide


def free_port() -> int:
    """A loopback port that is free now and has not been handed out before."""
    for _ in range(1000):
        port = random.randrange(_LISTEN_PORTS.start, _LISTEN_PORTS.stop)
        if port in _handed:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        return port
    raise RuntimeError(f"no free port in {_LISTEN_PORTS}")


class ServeFailed(RuntimeError):
    """``sluice serve`` exited or never became ready; the message has its log."""


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path
    inbound: str = ""  # host:port of the bounce and complaint receiver
    api_key: str = API_KEY

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def redis_url(self) -> str:
        """The embedded Redis, as the serve log names it (else its unix socket)."""
        found = _REDIS_READY.findall(self.log())
        return found[-1] if found else f"unix://{self.data_dir / 'redis' / 'redis.sock'}"

    def worker_pids(self) -> list[int]:
        """The live delivery worker processes (serve's spawned children, not the resource
        tracker)."""
        found = []
        for pid in children_of(self.pid):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in command and b"resource_tracker" not in command:
                found.append(pid)
        return found

    def wait_workers_ready(self, timeout: float = 60.0) -> None:
        """Until every worker has said it is ready (serve is ready before its workers are: a
        benchmark that counts worker CPU must not count their start-up)."""
        deadline = time.monotonic() + timeout
        while (
            len(_WORKER_READY.findall(self.log())) < len(self.worker_pids())
            or not self.worker_pids()
        ):
            if time.monotonic() > deadline:
                raise ServeFailed(
                    f"the workers did not become ready in {timeout:.0f}s:\n{self.log()}"
                )
            time.sleep(0.05)

    def redis_pid(self) -> int | None:
        """The embedded Redis, from its pid file."""
        try:
            return int((self.data_dir / "redis" / "redis.pid").read_text())
        except (OSError, ValueError):
            return None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal everything serve started at once: itself, its workers and its embedded Redis.

        The embedded Redis runs in a session of its own (so a terminal's Ctrl-C does not
        reach it), so it is signalled through its pid file rather than the process group.
        """
        pidfile = self.data_dir / "redis" / "redis.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text()), sig)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        self.process.wait(30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for a graceful stop; SIGKILL everything if it hangs."""
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
    relay: str | None = None,
    workers: int = 0,
    extra_env: dict[str, str] | None = None,
    args: list[str] | None = None,
    timeout: float = 60.0,
) -> Served:
    """Start ``sluice serve`` on ``data_dir``; its log goes beside the data dir."""
    port = free_port()
    inbound = f"127.0.0.1:{free_port()}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(PROJECT_ROOT),
        "SLUICE_API_KEY": API_KEY,
        "SLUICE_DATA_DIR": str(data_dir),
        "SLUICE_LISTEN": f"127.0.0.1:{port}",
        "SLUICE_WORKERS": str(workers),
        "SLUICE_INBOUND": inbound,
        **({"SLUICE_RELAY": relay} if relay else {}),
        # the test suite run over several shards (tests/conftest.py)
        **({"SLUICE_SHARDS": str(TEST_SHARDS)} if TEST_SHARDS > 1 else {}),
        **(extra_env or {}),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", *(args or [])],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=data_dir.parent,  # no stray ./sluice.toml is picked up
            start_new_session=True,  # its own group: a Ctrl-C reaches only the caller
        )
    served = Served(process, f"http://127.0.0.1:{port}", data_dir, log_path, inbound)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeFailed(f"sluice serve exited with {process.returncode}:\n{served.log()}")
        if "sluice: ready on" in served.log():
            return served
        time.sleep(0.05)
    served.kill_group()
    raise ServeFailed(f"sluice serve did not become ready in {timeout:.0f}s:\n{served.log()}")


@contextlib.contextmanager
def served(
    *, workers: int = 0, extra_env: dict[str, str] | None = None, keep_log: Path | None = None
) -> Iterator[Served]:
    """A running ``sluice serve`` in a fresh temp dir; stopped and removed on exit."""
    work_dir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    server: Served | None = None
    try:
        server = start_serve(work_dir / "data", workers=workers, extra_env=extra_env)
        yield server
    finally:
        try:
            if server is not None:
                server.stop()
                if keep_log is not None:
                    shutil.copyfile(server.log_path, keep_log)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
