"""Postfix's ``smtp-sink`` with its running count read live, for benchmarks that wait
until a sink has received every message.

``smtp-sink -c`` prints ``sess=N quit=N mesg=N`` (carriage-return separated) each time
a message ends; ``CountingSink`` reads that on a thread and adds what each sink
received to a ``Tally`` that several sinks can share, stamped with ``perf_counter()``,
so ``Tally.wait_for(n)`` answers when the n-th message arrived, not when it was polled.
The count costs the sink nothing measurable (0.09 ms of CPU a message, as without).

With ``dump_dir`` the sink also keeps each message in a file (``-d``), which costs it
0.4-0.8 ms of CPU a message on the 2-core machine: for a sample, not for a whole run.
``received_message()`` takes the headers smtp-sink adds to a dump back off.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import threading
import time
from pathlib import Path

from loadtests.bench_pipelining import start_sink

_COUNT = re.compile(rb"mesg=(\d+)")
# What smtp-sink writes above each dumped message (the last one, Received, is folded).
_SINK_HEADERS = (
    b"X-Client-Addr:",
    b"X-Client-Proto:",
    b"X-Helo-Args:",
    b"X-Mail-Args:",
    b"X-Rcpt-Args:",
    b"Received:",
)


class SinkFailed(RuntimeError):
    """The sinks did not receive the messages waited for in time, or one of them died."""


class Tally:
    """Messages received by the sinks together, and when each total was reached."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._history: list[tuple[int, float]] = [(0, 0.0)]  # (total, perf_counter)

    def add(self, received: int, at: float) -> None:
        with self._changed:
            self._history.append((self._history[-1][0] + received, at))
            self._changed.notify_all()

    @property
    def total(self) -> int:
        with self._changed:
            return self._history[-1][0]

    def wait_for(self, total: int, timeout: float, sinks: list[CountingSink]) -> float:
        """The ``perf_counter()`` at which the sinks had received ``total`` messages."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._history[-1][0] < total:
                left = deadline - time.monotonic()
                if left <= 0 or any(sink.process.poll() is not None for sink in sinks):
                    received = self._history[-1][0]
                    raise SinkFailed(f"the sinks received {received} of {total} messages")
                self._changed.wait(min(left, 1.0))
            return next(at for seen, at in self._history if seen >= total)


class CountingSink:
    """``smtp-sink -c``, its running count read live into a tally; with ``dump_dir``, also
    ``-d``: each message kept in a file there."""

    def __init__(self, port: int, tally: Tally, dump_dir: Path | None = None) -> None:
        options = ["-c"]
        if dump_dir is not None:
            dump_dir.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:  # the sink drops to `nobody` and writes the dumps as it
                nobody = pwd.getpwnam("nobody")
                os.chown(dump_dir, nobody.pw_uid, nobody.pw_gid)
            options += ["-d", f"{dump_dir}/m."]
        self.port = port
        self.dump_dir = dump_dir
        self.process = start_sink(port, *options, stdout=subprocess.PIPE)
        self._tally = tally
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        seen = 0
        while chunk := os.read(fd, 65536):
            now = time.perf_counter()
            counts = _COUNT.findall(chunk)
            if counts and int(counts[-1]) > seen:
                self._tally.add(int(counts[-1]) - seen, now)
                seen = int(counts[-1])

    def dumps(self) -> list[Path]:
        return sorted(self.dump_dir.iterdir()) if self.dump_dir is not None else []

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self._reader.join(5)


def received_message(dump: bytes) -> bytes:
    """The message as the sink received it, without the headers smtp-sink adds to a dump."""
    lines = dump.split(b"\n")
    i = 0
    while i < len(lines) and lines[i].startswith(_SINK_HEADERS):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    return b"\r\n".join(lines[i:])
