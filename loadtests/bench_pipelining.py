"""Outbound SMTP benchmark: what PIPELINING gains, against Postfix's smtp-source.

Run::

    .venv/bin/python -m loadtests.bench_pipelining [--messages N] [--connections C]
        [--rtt-ms 0,10,40] [--json]

Needs Postfix's ``smtp-sink`` and ``smtp-source`` (Debian: ``apt-get install postfix``).

For each round-trip time in ``--rtt-ms``:

1. Starts Postfix's ``smtp-sink`` on loopback (it offers PIPELINING) and, when the
   RTT is not 0, a delay proxy in its own process in front of it that holds every
   chunk of bytes for RTT/2 in each direction (order kept), as a distant MX would.
2. Baseline: ``smtp-source -s C -d -m N -l LEN`` into the same sink (C parallel
   sessions, connections reused, LEN = the fixture's size, so the same bytes).
3. Sluice's delivery pool (``mta.pool.SmtpPool``, C connections to the host, one
   SMTP transaction per message, the fixture cart reminder as the worker builds
   it) sends N messages with pipelining off, then with pipelining on.

Reports messages/s for each, **gain** = pipelined / not pipelined, and
**vs smtp-source** = pipelined Sluice / smtp-source. The figures measure the
SMTP client (message building and queue work are not in the timed loop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import uvloop

from loadtests.harness import fixture_message, free_port
from mta.pool import SmtpPool
from mta.routing import Destination

SENDER = "bounce@shop.example.com"
RECIPIENT = "user@inbox.example.org"


# --- a delay proxy: each direction holds data for rtt/2, keeping order ------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, data))
    except OSError:
        pass
    queue.put_nowait((0.0, b""))
    await task


async def _proxy(listen_port: int, target_port: int, delay: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            _pipe(reader, up_writer, delay),
            _pipe(up_reader, writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=512)
    async with server:
        await server.serve_forever()


def _run_proxy(listen_port: int, target_port: int, delay: float) -> None:
    uvloop.run(_proxy(listen_port, target_port, delay))


# --- the measured senders ---------------------------------------------------------------


def smtp_source(port: int, messages: int, connections: int, length: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            "smtp-source",
            "-s",
            str(connections),
            "-d",
            "-m",
            str(messages),
            "-l",
            str(length),
            "-f",
            SENDER,
            "-t",
            RECIPIENT,
            f"127.0.0.1:{port}",
        ],
        check=True,
    )
    return messages / (time.perf_counter() - started)


async def sluice_pool(
    port: int, messages: int, connections: int, bodies: list[bytes], pipelining: bool
) -> float:
    pool = SmtpPool(
        ehlo_name="bench.sluice.test",
        timeout=30,
        per_host=connections,
        per_domain=connections,
        messages_per_connection=10**9,
        pipelining=pipelining,
    )
    dest = Destination("127.0.0.1", "127.0.0.1", port, False, "relay")
    pending = iter(range(messages))

    async def sender() -> None:
        for i in pending:
            await pool.send(dest, "inbox.example.org", SENDER, RECIPIENT, bodies[i % len(bodies)])

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    await pool.aclose()
    return messages / elapsed


def start_sink(port: int, *options: str, stdout: int | None = None) -> subprocess.Popen[bytes]:
    """Postfix's ``smtp-sink`` on loopback ``port``, once it accepts connections.

    ``options`` go before the address (e.g. ``-c`` for a running count on ``stdout``).
    """
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink = subprocess.Popen(
        ["smtp-sink", *user, *options, f"127.0.0.1:{port}", "1024"], stdout=stdout
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            asyncio.run(_probe(port))
            return sink
        except OSError:
            time.sleep(0.05)
    sink.kill()
    raise RuntimeError("smtp-sink did not start")


async def _probe(port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()


def measure(rtt_ms: float, messages: int, connections: int, bodies: list[bytes]) -> dict[str, Any]:
    sink_port = free_port()
    sink = start_sink(sink_port)
    proxy = None
    port = sink_port
    try:
        if rtt_ms:
            port = free_port()
            proxy = multiprocessing.get_context("spawn").Process(
                target=_run_proxy, args=(port, sink_port, rtt_ms / 2000), daemon=True
            )
            proxy.start()
            time.sleep(1.0)
        length = len(bodies[0])
        baseline = smtp_source(port, messages, connections, length)
        off = uvloop.run(sluice_pool(port, messages, connections, bodies, pipelining=False))
        on = uvloop.run(sluice_pool(port, messages, connections, bodies, pipelining=True))
    finally:
        if proxy is not None:
            proxy.kill()
        sink.kill()
        sink.wait()
    return {
        "rtt_ms": rtt_ms,
        "messages": messages,
        "connections": connections,
        "message_bytes": len(bodies[0]),
        "smtp_source_per_s": round(baseline),
        "sluice_unpipelined_per_s": round(off),
        "sluice_pipelined_per_s": round(on),
        "gain": round(on / off, 2),
        "vs_smtp_source": round(on / baseline, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rtt-ms", default="0,10,40", help="comma-separated round-trip times")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("smtp-sink", "smtp-source") if shutil.which(tool) is None]
    if missing:
        print(f"needs {' and '.join(missing)}: apt-get install postfix", file=sys.stderr)
        return 2
    bodies = [fixture_message(i) for i in range(100)]
    rows = [
        measure(float(rtt), args.messages, args.connections, bodies)
        for rtt in args.rtt_ms.split(",")
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'rtt ms':>6} {'smtp-source/s':>13} {'unpipelined/s':>13} {'pipelined/s':>11} "
    print(header + f"{'gain':>6} {'vs smtp-source':>14}")
    for r in rows:
        print(
            f"{r['rtt_ms']:>6.0f} {r['smtp_source_per_s']:>13} {r['sluice_unpipelined_per_s']:>13} "
            f"{r['sluice_pipelined_per_s']:>11} {r['gain']:>6.2f} {r['vs_smtp_source']:>14.2f}"
        )
    print(
        f"({rows[0]['messages']} messages of {rows[0]['message_bytes']} bytes, "
        f"{rows[0]['connections']} connections)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
