"""Real Redis servers on loopback for tests and benchmarks: Debian's ``redis-server``.

``Replicated()`` is one master and one replica (``--replicaof``), ready when the replica's
link is up (``replica=False``: a lone server). ``LocalCluster(masters=3, replicas=1)`` is a
cluster, each master with its own replicas (``CLUSTER REPLICATE``), a dead master failed
over after ``cluster-node-timeout`` (2 s).

``LocalCluster(masters=3)`` starts one ``redis-server --cluster-enabled yes`` per master on
free loopback ports (cluster bus on port + 10000, as Redis sets it), in a private temp dir,
without persistence (``durable=True``: AOF with ``appendfsync always``, as Sluice's
embedded Redis); gives each master an even range of the 16,384 slots
(``CLUSTER ADDSLOTSRANGE``), introduces them to each other (``CLUSTER MEET``) and waits until
every node says ``cluster_state:ok``. What ``redis-cli --cluster create`` does, without
needing redis-cli. Stopped (and its processes killed) on exit.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from loadtests.harness import free_port

SLOTS = 16384


class ClusterFailed(RuntimeError):
    """The cluster did not come up; the text has the nodes' logs."""


def _redis_server() -> str:
    server = shutil.which("redis-server")
    if server is None:
        raise ClusterFailed("needs redis-server (scripts/test-deps installs it)")
    return server


def _wait(
    ready: Callable[[], bool], what: str, logs: Callable[[], str], seconds: float = 20.0
) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(redis.RedisError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise ClusterFailed(f"waited {seconds:.0f}s for {what}:\n{logs()}")
        time.sleep(0.05)


class Replicated:
    """A master and one replica (none: ``replica=False``); ``replica_process`` can be
    stopped (SIGSTOP) to make the replica fall behind."""

    def __init__(self, *, replica: bool = True, durable: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sluice-replicated-"))
        self.master_port = free_port()
        self.replica_port = free_port()
        self.replica = replica
        self.durable = durable
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def master_url(self) -> str:
        return f"redis://127.0.0.1:{self.master_port}"

    @property
    def replica_process(self) -> subprocess.Popen[bytes]:
        return self.processes[1]

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)

    def __enter__(self) -> Replicated:
        try:
            servers = [(self.master_port, _durability(self.durable))]
            if self.replica:
                servers.append(
                    (self.replica_port, ["--replicaof", "127.0.0.1", str(self.master_port)])
                )
            for port, extra in servers:
                directory = self.root / str(port)
                directory.mkdir()
                self.processes.append(_start_server(port, directory, extra))
            if not self.replica:
                master = self.node(self.master_port)
                _wait(lambda: bool(master.ping()), "the server to answer", self.logs)
                return self
            replica = self.node(self.replica_port)
            _wait(
                lambda: replica.info("replication").get("master_link_status") == "up",
                "the replica's link to its master",
                self.logs,
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def logs(self) -> str:
        return _logs(self.root)

    def close(self) -> None:
        _stop(self.processes, self.root)


def _start_server(port: int, directory: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    """A ``redis-server`` on loopback ``port``, without persistence, logging into ``directory``."""
    options = {
        "port": port,
        "bind": "127.0.0.1",
        "dir": directory,
        "save": "",
        "appendonly": "no",
        "logfile": directory / "redis.log",
        "repl-diskless-sync-delay": 0,  # a replica syncs at once, not after the default 5 s
    }
    flags = [part for name, value in options.items() for part in (f"--{name}", str(value))]
    return subprocess.Popen(
        [_redis_server(), *flags, *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _command(client: redis.Redis, *args: object) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _durability(durable: bool) -> list[str]:
    return ["--appendonly", "yes", "--appendfsync", "always"] if durable else []


def _logs(root: Path) -> str:
    return "\n".join(
        f"--- {path}\n{path.read_text(errors='replace')[-2000:]}"
        for path in sorted(root.glob("*/redis.log"))
    )


def _stop(processes: list[subprocess.Popen[bytes]], root: Path) -> None:
    for process in processes:
        process.kill()  # a stopped one (SIGSTOP) too
    for process in processes:
        process.wait(10)
    shutil.rmtree(root, ignore_errors=True)


class LocalCluster:
    def __init__(self, masters: int = 3, *, replicas: int = 0, durable: bool = False) -> None:
        """``replicas``: per master (``self.replica_ports[i]``: the replicas of master i)."""
        self.masters = masters
        self.durable = durable
        self.replicas = replicas
        self.replica_ports: list[list[int]] = [[] for _ in range(masters)]
        self.timeout_ms = 2000  # cluster-node-timeout: how soon a dead master is failed over
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

    def _node_process(self, port: int) -> subprocess.Popen[bytes]:
        directory = self.root / str(port)
        directory.mkdir()
        flags = ["--cluster-enabled", "yes", "--cluster-config-file", str(directory / "nodes.conf")]
        flags += ["--cluster-node-timeout", str(self.timeout_ms), *_durability(self.durable)]
        return _start_server(port, directory, flags)

    def _start(self) -> None:
        for _ in range(self.masters):
            self.ports.append(_port_with_free_bus())
            self.processes.append(self._node_process(self.ports[-1]))
        for replicas in self.replica_ports:
            for _ in range(self.replicas):
                replicas.append(_port_with_free_bus())
                self.processes.append(self._node_process(replicas[-1]))
        everyone = self.ports + [p for replicas in self.replica_ports for p in replicas]
        for port in everyone:
            self._wait(functools.partial(self._answers, port), f"node {port} to answer")
        per = SLOTS // self.masters
        for i, port in enumerate(self.ports):
            last = SLOTS - 1 if i == self.masters - 1 else (i + 1) * per - 1
            _command(self.node(port), "CLUSTER ADDSLOTSRANGE", i * per, last)
        first = self.node(self.ports[0])
        for port in everyone[1:]:
            _command(first, "CLUSTER MEET", "127.0.0.1", port)
        for port in everyone:
            self._wait(functools.partial(self._ok, port, len(everyone)), f"node {port} to see all")
        for master, replicas in zip(self.ports, self.replica_ports, strict=True):
            master_id = _command(self.node(master), "CLUSTER MYID").decode()
            for port in replicas:
                _command(self.node(port), "CLUSTER REPLICATE", master_id)
        for replicas in self.replica_ports:
            for port in replicas:
                self._wait(functools.partial(self._synced, port), f"replica {port} to sync")

    def _answers(self, port: int) -> bool:
        return bool(self.node(port).ping())

    def _synced(self, port: int) -> bool:
        return bool(self.node(port).info("replication").get("master_link_status") == "up")

    def _ok(self, port: int, nodes: int) -> bool:
        info = self.node(port).cluster("INFO")
        return bool(
            info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == nodes
        )

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        _wait(ready, what, self.logs)

    def migrate_slot(self, slot: int, source: int, target: int, batch: int = 50) -> int:
        """Move ``slot`` from master port ``source`` to master port ``target`` while it is in
        use, as ``redis-cli --cluster reshard`` does: IMPORTING/MIGRATING, ``MIGRATE`` of its
        keys a few at a time, then the new owner announced to every master. Keys moved."""
        into, out_of = self.node(target), self.node(source)
        target_id = _command(into, "CLUSTER MYID").decode()
        source_id = _command(out_of, "CLUSTER MYID").decode()
        _command(into, "CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        _command(out_of, "CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while True:
            names = _command(out_of, "CLUSTER GETKEYSINSLOT", slot, batch)
            if not names:
                break
            _command(out_of, "MIGRATE", "127.0.0.1", target, "", 0, 10000, "KEYS", *names)
            moved += len(names)
        for port in (target, source, *[p for p in self.ports if p not in (target, source)]):
            _command(self.node(port), "CLUSTER SETSLOT", slot, "NODE", target_id)
        return moved

    def keys_by_master(self) -> dict[int, int]:
        """How many keys each master holds (``DBSIZE``)."""
        return {port: int(self.node(port).dbsize()) for port in self.ports}

    def memory_by_master(self) -> dict[int, int]:
        """Each master's ``used_memory``, bytes."""
        return {port: int(self.node(port).info("memory")["used_memory"]) for port in self.ports}

    def logs(self) -> str:
        return _logs(self.root)

    def close(self) -> None:
        _stop(self.processes, self.root)


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
