"""A real Redis Cluster on loopback for tests: Debian's ``redis-server`` in cluster mode.

``LocalCluster(masters=3)`` starts one ``redis-server --cluster-enabled yes`` per master on
free loopback ports (cluster bus on port + 10000, as Redis sets it), in a private temp dir,
without persistence; gives each master an even range of the 16,384 slots
(``CLUSTER ADDSLOTSRANGE``), introduces them to each other (``CLUSTER MEET``) and waits until
every node says ``cluster_state:ok``. What ``redis-cli --cluster create`` does, without
needing redis-cli. Stopped (and its processes killed) on exit.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import redis

from loadtests.harness import free_port

SLOTS = 16384


class ClusterFailed(RuntimeError):
    """The cluster did not come up; the text has the nodes' logs."""


class LocalCluster:
    def __init__(self, masters: int = 3) -> None:
        self.masters = masters
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.root = Path(tempfile.mkdtemp(prefix="sluice-cluster-"))

    @property
    def url(self) -> str:
        """Any node's URL is the cluster's: the last one's, which does not own the slot of
        ``{sluice}`` (slot 59, on the first master), so a client that did not follow the
        cluster's redirections would fail."""
        return f"redis://127.0.0.1:{self.ports[-1]}"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)

    def __enter__(self) -> LocalCluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise ClusterFailed("needs redis-server (scripts/test-deps installs it)")
        for _ in range(self.masters):
            port = _port_with_free_bus()
            directory = self.root / str(port)
            directory.mkdir()
            self.ports.append(port)
            self.processes.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(directory / "nodes.conf"),
                        "--dir",
                        str(directory),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--logfile",
                        str(directory / "redis.log"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            self._wait(lambda p=port: bool(self.node(p).ping()), f"node {port} to answer")
        per = SLOTS // self.masters
        for i, port in enumerate(self.ports):
            last = SLOTS - 1 if i == self.masters - 1 else (i + 1) * per - 1
            self.node(port).execute_command("CLUSTER ADDSLOTSRANGE", i * per, last)
        first = self.node(self.ports[0])
        for port in self.ports[1:]:
            first.execute_command("CLUSTER MEET", "127.0.0.1", port)
        for port in self.ports:
            self._wait(lambda p=port: self._ok(p), f"node {port} to see the whole cluster")

    def _ok(self, port: int) -> bool:
        info = self.node(port).cluster("INFO")
        return bool(
            info.get("cluster_state") == "ok"
            and int(info.get("cluster_known_nodes", 0)) == self.masters
        )

    def _wait(self, ready: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            with contextlib.suppress(redis.RedisError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise ClusterFailed(f"waited {seconds:.0f}s for {what}:\n{self.logs()}")
            time.sleep(0.05)

    def keys_by_master(self) -> dict[int, int]:
        """How many keys each master holds (``DBSIZE``)."""
        return {port: int(self.node(port).dbsize()) for port in self.ports}

    def logs(self) -> str:
        return "\n".join(
            f"--- {path}\n{path.read_text(errors='replace')[-2000:]}"
            for path in sorted(self.root.glob("*/redis.log"))
        )

    def close(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def _port_with_free_bus() -> int:
    """A free port whose cluster bus port (+10,000) is free and valid too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise ClusterFailed("no free port pair for a node and its cluster bus")
