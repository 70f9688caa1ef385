"""Tracking endpoints benchmark: open pixel and click redirect requests per second, under wrk.

Run::

    .venv/bin/python -m loadtests.bench_tracking [--seconds S] [--connections C] [--json]

Needs ``wrk`` (Debian: ``apt-get install wrk``).

1. Starts the real ``sluice serve`` (``SLUICE_WORKERS=0``, embedded Redis with
   ``appendfsync always``) and accepts 1,000 fixture messages.
2. Seals one open token and one click token (a fixture link) per message with
   the data dir's keys, as the worker does, and writes them into wrk Lua scripts
   that cycle through the 1,000 URLs.
3. **Baseline**, same run: a bare aiohttp app on uvloop, one process like the
   gateway's HTTP server, answering every GET with the same 43-byte GIF (no
   token, no Redis): what the HTTP stack alone can do here.
4. wrk (2 threads, ``--connections``, ``--seconds``) against the baseline, the
   pixel and the click. Each tracked request opens the token, classifies the
   client and records the event (one Lua call, fsynced). **ratio** = tracking
   requests/s / baseline requests/s. Non-2xx/3xx answers are counted and must be 0;
   the events stream is checked to hold one event per request answered.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from loadtests.harness import API_KEY, fixture_batch, free_port, start_serve
from tracking.endpoints import PIXEL
from tracking.tokens import Tokens, load_keys

LUA = """
urls = {%s}
i = 0
request = function()
  i = i + 1
  return wrk.format("GET", urls[(i %% #urls) + 1], {["User-Agent"] = "Mozilla/5.0 (X11; Linux) Firefox/128.0"})
end
"""


def _baseline_app(port: int) -> None:
    async def pixel(request: web.Request) -> web.Response:
        return web.Response(body=PIXEL, content_type="image/gif")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", pixel)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio_forever()

    uvloop.run(main())


async def asyncio_forever() -> None:
    import asyncio

    await asyncio.Event().wait()


def wrk(url: str, script: Path | None, seconds: int, connections: int) -> dict[str, float]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        args += ["-s", str(script)]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "requests_per_second": round(rate),
        "requests": total,
        "non_2xx_3xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "p99_ms": round(float(p99.group(1)) * scale[p99.group(2)], 1) if p99 else -1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("needs wrk: apt-get install wrk", file=sys.stderr)
        return 2

    import urllib.request

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        served = start_serve(root / "data", workers=0)
        baseline_port = free_port()
        baseline = multiprocessing.get_context("spawn").Process(
            target=_baseline_app, args=(baseline_port,), daemon=True
        )
        baseline.start()
        try:
            request = urllib.request.Request(
                served.url + "/v1/messages",
                data=json.dumps(fixture_batch(1000)).encode(),
                headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as answer:
                ids = [r["message_id"] for r in json.loads(answer.read())["results"]]
            tokens = Tokens(load_keys(root / "data"))
            scripts = {}
            for kind, path in (("open", "/t/o/"), ("click", "/t/c/")):
                urls = [
                    path
                    + (
                        tokens.seal("open", m)
                        if kind == "open"
                        else tokens.seal(
                            "click",
                            m,
                            "https://shop.example.com/p/100?utm_source=email&utm_campaign=cart",
                        )
                    )
                    for m in ids
                ]
                script = root / f"{kind}.lua"
                script.write_text(LUA % ", ".join(f'"{u}"' for u in urls))
                scripts[kind] = script
            time.sleep(1.0)
            rows = {
                "baseline (bare aiohttp, same GIF)": wrk(
                    f"http://127.0.0.1:{baseline_port}/x", None, args.seconds, args.connections
                ),
                "open pixel /t/o/": wrk(
                    served.url, scripts["open"], args.seconds, args.connections
                ),
                "click redirect /t/c/": wrk(
                    served.url, scripts["click"], args.seconds, args.connections
                ),
            }
            events = _count_events(served.url)
        finally:
            baseline.kill()
            served.stop()
    base = rows["baseline (bare aiohttp, same GIF)"]["requests_per_second"]
    for row in rows.values():
        row["ratio"] = round(row["requests_per_second"] / base, 2)
    tracked = sum(r["requests"] for k, r in rows.items() if k.startswith(("open", "click")))
    result: dict[str, Any] = {
        "rows": rows,
        "events_recorded": events - 1000,
        "tracked_requests": tracked,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{'endpoint':<36} {'req/s':>8} {'ratio':>6} {'p99 ms':>7} {'non-2xx/3xx':>11} {'sock err':>8}"
    )
    for name, r in rows.items():
        print(
            f"{name:<36} {r['requests_per_second']:>8} {r['ratio']:>6} {r['p99_ms']:>7} "
            f"{r['non_2xx_3xx']:>11} {r['socket_errors']:>8}"
        )
    print(
        f"events recorded {result['events_recorded']:,} for {tracked:,} tracked requests "
        f"(wrk, 2 threads, {args.connections} connections, {args.seconds} s each)"
    )
    return 0


def _count_events(base_url: str) -> int:
    import urllib.request

    count, after = 0, ""
    while True:
        request = urllib.request.Request(
            f"{base_url}/v1/events?limit=1000{'&after=' + after if after else ''}",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            page = json.loads(answer.read())
        if not page["events"]:
            return count
        count += len(page["events"])
        after = page["next"]


if __name__ == "__main__":
    sys.exit(main())
