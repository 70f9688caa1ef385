"""Contact policy end to end: two `sluice serve` gateways on one Redis, a suppression arriving
after acceptance (in-process), and the `sluice suppress` command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadtests.harness import PROJECT_ROOT, TEST_SHARDS, Served, cart_reminder
from mta.worker import Worker
from tests.conftest import Sink
from tests.inprocess import Client, message, send, sleep_until
from tests.test_end_to_end import get, post


def put(served: Served, path: str, body: Any) -> int:
    request = urllib.request.Request(
        served.url + path, data=json.dumps(body).encode(), headers=served.headers, method="PUT"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return int(answer.status)


def one_for_contact(stream: str = "marketing") -> dict[str, Any]:
    body = cart_reminder()
    body["stream"] = stream
    body["category"] = "cart_abandonment"
    body["recipients"][0]["contact_id"] = "c-42"
    return body


async def fire(gateways: list[Served], body: dict[str, Any], count: int) -> list[str]:
    """``count`` requests at once, spread over the gateways; the status of each recipient."""
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> str:
            served = gateways[i % len(gateways)]
            async with session.post(
                served.url + "/v1/messages", json=body, headers=served.headers
            ) as answer:
                assert answer.status == 202, await answer.text()
                return str((await answer.json())["results"][0]["status"])

        return await asyncio.gather(*(one(i) for i in range(count)))


def assert_a_cap_of_three_holds(first: Served, second: Served) -> None:
    """Two gateways on one store: a cap of 3 set through one holds for both under 200
    concurrent requests for one contact, spread over them."""
    policy = {
        "frequency_caps": [
            {"category": "cart_abandonment", "limit": 3, "window_seconds": 86400, "action": "drop"}
        ]
    }
    assert put(first, "/v1/policy", policy) == 200
    assert get(second, "/v1/policy")["frequency_caps"][0]["limit"] == 3, "one policy for both"
    statuses = asyncio.run(fire([first, second], one_for_contact(), 200))
    assert Counter(statuses) == {"queued": 3, "capped": 197}


@pytest.mark.slow
def test_two_gateways_one_redis_cap_holds_under_concurrency(
    serve_factory: Any, tmp_path: Path
) -> None:
    first = serve_factory(workers=0)
    second = serve_factory(
        workers=0, data_dir=tmp_path / "second", args=["--redis-url", first.redis_url()]
    )
    assert_a_cap_of_three_holds(first, second)
    statuses = asyncio.run(fire([first, second], one_for_contact("transactional"), 200))
    assert Counter(statuses) == {"queued": 200}, "transactional mail is exempt"


async def test_a_suppression_after_acceptance_stops_delivery(
    relay_api: Client, worker: Worker, sink: Sink
) -> None:
    body = cart_reminder()
    body["send_at"] = time.time() + 2  # accepted now, due in 2 seconds (more than 1: scheduled)
    [result] = await send(relay_api, body)
    assert result["status"] == "scheduled"
    message_id = result["message_id"]
    email = result["email"]
    answer = await relay_api.put(f"/v1/suppressions/{email}", json={"reason": "unsubscribe"})
    assert answer.status == 201
    await sleep_until(body["send_at"])
    await worker.run_until_idle()
    found = await message(relay_api, message_id)
    assert found["status"] == "suppressed"
    assert found["events"][-1]["type"] == "suppressed"
    assert found["events"][-1]["reason"] == "unsubscribe"
    assert sink.snapshot() == [], "nothing was sent"


def sluice(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
        # the suite run over several shards: the command is told the count, as serve is
        env={**os.environ, **({"SLUICE_SHARDS": str(TEST_SHARDS)} if TEST_SHARDS > 1 else {})},
    )


@pytest.mark.slow
def test_suppress_command_imports_exports_and_reaches_a_running_gateway(
    serve_factory: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    csv_in = tmp_path / "list.csv"
    csv_in.write_text(
        "email,reason,category\n"
        "Ann@Example.COM,unsubscribe,\n"
        "bob@example.com,complaint,\n"
        "carl@example.com,unsubscribe,newsletter\n"
        "not an address,manual,\n"
        "dora@example.com,lost interest,\n"
    )
    done = sluice("suppress", "import", str(csv_in), "--data-dir", str(data))
    assert done.returncode == 1, done  # some lines were skipped
    assert "Imported 3 entries (3 new)" in done.stdout
    assert "line 5:" in done.stderr and "line 6: unknown reason" in done.stderr
    assert "Traceback" not in done.stderr

    served = serve_factory(workers=0, data_dir=data)  # the list is in the data dir's Redis
    body = cart_reminder()
    personal = body["recipients"][0]["data"]
    body["recipients"] = [
        {"email": e, "data": personal}
        for e in ("ann@example.com", "bob@example.com", "carl@example.com")
    ]
    status, answer = post(served, "/v1/messages", body)
    assert status == 202
    assert [r["status"] for r in answer["results"]] == ["suppressed", "suppressed", "queued"]

    # while serve runs, the command uses serve's Redis
    added = sluice("suppress", "add", "eve@example.com", "--data-dir", str(data))
    assert added.returncode == 0, added
    assert get(served, "/v1/suppressions/eve@example.com")["suppressions"][0]["reason"] == "manual"
    exported = sluice("suppress", "export", "--data-dir", str(data))
    lines = sorted(exported.stdout.splitlines()[1:])
    assert [line.split(",")[:3] for line in lines] == [
        ["ann@example.com", "", "unsubscribe"],
        ["bob@example.com", "", "complaint"],
        ["carl@example.com", "newsletter", "unsubscribe"],
        ["eve@example.com", "", "manual"],
    ]
    # what export writes, import reads back
    again = sluice("suppress", "import", "-", "--data-dir", str(data), stdin=exported.stdout)
    assert again.returncode == 0 and "Imported 4 entries (0 new)" in again.stdout, again
