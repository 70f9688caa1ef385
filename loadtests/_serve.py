"""Run the real ``sluice serve`` in a subprocess for a load test.

``served()`` makes a temp dir, starts ``python -m gateway.cli serve`` in it with
its own data dir (so its own embedded Redis, AOF ``appendfsync always``), a
fixed API key and a free loopback port, waits until it says it is ready, and on
exit stops it with SIGTERM (SIGKILL to its process group only if it does not
stop in time) and removes the temp dir, whatever happened in between.
"""

from __future__ import annotations

import contextlib
import os
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

API_KEY = "loadtest-api-key-0123456789abcdef"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
_REDIS_READY = re.compile(r"embedded Redis ready at (\S+)")


class ServeFailed(RuntimeError):
    """``sluice serve`` exited or never became ready; the message has its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path
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
        found = _REDIS_READY.search(self.log())
        if found:
            return found.group(1)
        return f"unix://{self.data_dir / 'redis' / 'redis.sock'}"

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait; SIGKILL the whole process group if it hangs."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


def start_serve(
    work_dir: Path, *, workers: int = 0, extra_env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Served:  # fmt: skip
    port = free_port()
    data_dir = work_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(PROJECT_ROOT),
        "SLUICE_API_KEY": API_KEY,
        "SLUICE_DATA_DIR": str(data_dir),
        "SLUICE_LISTEN": f"127.0.0.1:{port}",
        "SLUICE_WORKERS": str(workers),
        **(extra_env or {}),
    }
    log_path = work_dir / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work_dir,  # no stray ./sluice.toml is picked up
            start_new_session=True,  # a Ctrl-C in the terminal reaches only the load test
        )
    served = Served(process, f"http://127.0.0.1:{port}", data_dir, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeFailed(f"sluice serve exited with {process.returncode}:\n{served.log()}")
        if "sluice: ready on" in served.log():
            return served
        time.sleep(0.05)
    served.stop(timeout=10)
    raise ServeFailed(f"sluice serve did not become ready in {timeout:.0f}s:\n{served.log()}")


@contextlib.contextmanager
def served(
    *, workers: int = 0, extra_env: dict[str, str] | None = None, keep_log: Path | None = None
) -> Iterator[Served]:
    """A running ``sluice serve`` in a fresh temp dir; stopped and removed on exit."""
    work_dir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    server: Served | None = None
    try:
        server = start_serve(work_dir, workers=workers, extra_env=extra_env)
        yield server
    finally:
        try:
            if server is not None:
                server.stop()
                if keep_log is not None:
                    shutil.copyfile(server.log_path, keep_log)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
