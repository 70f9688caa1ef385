"""IP warmup: schedules, per-provider hourly budgets (atomic across processes), overflow to
warm IPs, deferral without loss, the command line and the API."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from core.settings import WarmupSettings
from core.store import Store, open_store
from loadtests.fault_sink import FaultSink
from loadtests.harness import PROJECT_ROOT, fixture_batch
from loadtests.sim_warmup import SCHEDULE, START, simulate
from tests.test_end_to_end import get, post, wait_status
from warmup.gate import WarmupGate, WarmupIp, save_ip
from warmup.providers import provider_of
from warmup.report import history, write_report
from warmup.schedules import BUILT_IN, budget, plan

COLD, WARM, OTHER = "192.0.2.10", "192.0.2.20", "192.0.2.30"


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_built_in_schedules_and_providers() -> None:
    standard = BUILT_IN["standard-30d"]
    assert len(standard) == 30 and standard[0] == 50 and standard[-1] == 100_000
    assert all(b >= a for a, b in itertools.pairwise(standard))
    assert len(BUILT_IN["conservative-45d"]) == 45 and BUILT_IN["conservative-45d"][-1] == 50_000
    assert len(BUILT_IN["aggressive-14d"]) == 14
    assert budget((48, 96), 0).hourly == 2 and budget((48, 96), 2).warm
    assert plan((48,))[0] == {"day": 0, "daily": 48, "hourly": 2}
    assert provider_of("gmail.com") == "gmail"
    assert provider_of("Hotmail.com") == "microsoft"
    assert provider_of("aol.com") == "yahoo"
    assert provider_of("icloud.com") == "apple"
    assert provider_of("shop.example", "aspmx.l.google.com") == "gmail"
    assert provider_of("corp.example", "corp-example.mail.protection.outlook.com") == "microsoft"
    assert provider_of("corp.example", "mx.corp.example") == "other"


async def configure(store: Store, ip: str, schedule: tuple[int, ...], started: str) -> None:
    await save_ip(store, WarmupIp(ip, "default", schedule, None, date.fromisoformat(started)))


async def test_hourly_budget_spreads_the_day_and_carries_over_boundedly(store: Store) -> None:
    await configure(store, COLD, (48, 96), "2026-11-23")
    gate = WarmupGate(store, refresh=0)
    hour0 = at("2026-11-23T00:10:00")
    taken = [await gate.choose([COLD], "gmail", hour0) for _ in range(5)]
    assert [c.ip for c in taken] == [COLD, COLD, None, None, None]
    assert taken[2].wait == pytest.approx(50 * 60, abs=1), "until the next hour"
    assert (await gate.choose([COLD], "microsoft", hour0)).ip == COLD, "each provider its own"
    # hour 1 unused: hour 2 may take its own share and one hour's carry-over, no more
    hour2 = at("2026-11-23T02:30:00")
    assert [(await gate.choose([COLD], "gmail", hour2)).ip for _ in range(5)] == [COLD] * 4 + [None]
    # at 23:00 the rest of the day (48 - 6), but at most twice an hour's share
    late = at("2026-11-23T23:00:00")
    assert [(await gate.choose([COLD], "gmail", late)).ip for _ in range(10)].count(COLD) == 4
    # day 1: 96 a day; day 2: warm, no limit
    assert (await gate.choose([COLD], "gmail", at("2026-11-24T00:00:01"))).ip == COLD
    warm = [await gate.choose([COLD], "gmail", at("2026-11-25T00:00:01")) for _ in range(500)]
    assert all(c.ip == COLD for c in warm)


async def test_overflow_goes_to_a_warm_ip_of_the_pool_then_waits(store: Store) -> None:
    await configure(store, COLD, (48,), "2026-11-23")
    await configure(store, OTHER, (48, 96, 192), "2026-11-21")  # further along: day 2
    gate = WarmupGate(store, refresh=0)
    now = at("2026-11-23T00:05:00")
    order = [(await gate.choose([COLD, OTHER, WARM], "gmail", now)).ip for _ in range(20)]
    # the furthest along first (8 an hour on day 2), then the cold one (2), then the warm IP
    assert order[:10] == [OTHER] * 8 + [COLD] * 2
    assert order[10:] == [WARM] * 10
    without_warm = await gate.choose([COLD, OTHER], "gmail", now)
    assert without_warm.ip is None and 0 < without_warm.wait <= 3600


def _hammer(redis_url: str, now: float, tries: int, go: Any, out: Any) -> None:
    async def run() -> int:
        async with open_store(redis_url) as store:
            gate = WarmupGate(store, refresh=0)
            await gate.configs()
            out.put("ready")
            await asyncio.to_thread(go.wait, 30)
            return [(await gate.choose([COLD], "gmail", now)).ip for _ in range(tries)].count(COLD)

    out.put(asyncio.run(run()))


async def test_a_message_takes_budget_once_a_day_however_often_it_is_sent(store: Store) -> None:
    """At-least-once delivery may send a job again (a worker killed after the send): its
    budget is taken once, and it goes out from the IP it took."""
    await configure(store, COLD, (48,), "2026-11-23")  # 2 an hour
    await configure(store, OTHER, (48,), "2026-11-23")
    gate = WarmupGate(store, refresh=0)
    now = at("2026-11-23T00:30:00")
    first = await gate.choose([COLD, OTHER], "gmail", now, "msg-1")
    for _ in range(3):
        assert (await gate.choose([OTHER, COLD], "gmail", now, "msg-1")).ip == first.ip
    assert await store.warmup.sent(first.ip or "", "gmail", "20261123") == 1
    other = await gate.choose([COLD, OTHER], "gmail", now, "msg-2")
    assert (
        other.ip is not None
        and sum([await store.warmup.sent(ip, "gmail", "20261123") for ip in (COLD, OTHER)]) == 2
    ), "another message counts"
    nameless = [await gate.choose([COLD, OTHER], "gmail", now) for _ in range(2)]
    assert [c.ip for c in nameless].count(None) == 0
    total = sum([await store.warmup.sent(ip, "gmail", "20261123") for ip in (COLD, OTHER)])
    assert total == 4, "without a message id every take counts"


async def test_two_processes_never_exceed_a_budget_together(store: Store, redis_url: str) -> None:
    await configure(store, COLD, (2400,), "2026-11-23")  # 100 an hour
    now = at("2026-11-23T00:30:00")
    context = multiprocessing.get_context("spawn")
    out, go = context.Queue(), context.Event()
    workers = [
        context.Process(target=_hammer, args=(redis_url, now, 150, go, out)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    assert [await asyncio.to_thread(out.get, True, 60) for _ in workers] == ["ready"] * 2
    go.set()  # both at once
    taken = [await asyncio.to_thread(out.get, True, 60) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert sum(taken) == 100, taken
    assert all(t > 0 for t in taken), "both processes took part"


# --- delivery ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cold_ip_sends_its_hourly_budget_and_the_rest_waits_or_overflows(
    serve_factory: Any, tmp_path: Path
) -> None:
    with FaultSink() as sink:
        served = serve_factory(
            workers=2,
            relay=sink.relay,
            extra_env={"SLUICE_IPS": "127.0.0.1@default"},
        )
        doc = {"schedule": [48, 96, 192], "pool": "default"}
        assert put(served, "/v1/warmup/ips/127.0.0.1", doc)["schedule"] == [48, 96, 192]
        time.sleep(2.5)  # workers re-read warmup settings every 2 s
        status, answer = post(served, "/v1/messages", fixture_batch(30, domain="gmail.com"))
        assert status == 202
        ids = [r["message_id"] for r in answer["results"]]
        time.sleep(4)
        sent = Counter(r.peer.split(":")[0] for r in sink.received())
        # 2 an hour; by hour h of the UTC day 2(h+1) may have left, at most 4 in one hour
        assert sent["127.0.0.1"] in allowed_now(), sent
        states = Counter(get(served, f"/v1/messages/{m}")["status"] for m in ids)
        assert states["delivered"] == sent["127.0.0.1"]
        assert states["deferred"] == 30 - sent["127.0.0.1"], states
        deferred = next(
            get(served, f"/v1/messages/{m}")
            for m in ids
            if get(served, f"/v1/messages/{m}")["status"] == "deferred"
        )
        assert "warmup" in deferred["events"][-1]["reason"]
        assert "bounced" not in states and "expired" not in states
        status_doc = get(served, "/v1/warmup/status")
        [ip] = status_doc["ips"]
        assert ip["providers"]["gmail"]["sent_today"] == sent["127.0.0.1"]
        assert ip["providers"]["gmail"]["daily_budget"] == 48


@pytest.mark.slow
def test_with_a_warm_ip_in_the_pool_the_overflow_leaves_through_it(serve_factory: Any) -> None:
    with FaultSink(extra_hosts=["127.0.0.2"]) as sink:
        served = serve_factory(
            workers=2,
            relay=sink.relay,
            extra_env={"SLUICE_IPS": "127.0.0.1@default,127.0.0.2@default"},
        )
        put(served, "/v1/warmup/ips/127.0.0.1", {"schedule": [48, 96, 192]})
        time.sleep(2.5)
        _, answer = post(served, "/v1/messages", fixture_batch(30, domain="gmail.com"))
        ids = [r["message_id"] for r in answer["results"]]
        for message_id in ids:
            assert wait_status(served, message_id, "delivered")["status"] == "delivered"
        sent = Counter(r.peer.split(":")[0] for r in sink.received())
        assert sent["127.0.0.1"] in allowed_now(), sent
        assert sent["127.0.0.2"] == 30 - sent["127.0.0.1"], "the overflow left through the warm IP"


def allowed_now() -> set[int]:
    """What a 48-a-day IP may send in the current hour (and the next, should it turn)."""
    hours = {datetime.now(UTC).hour, (datetime.now(UTC).hour + 1) % 24}
    return {min(4, 2 * (h + 1)) for h in hours}


def put(served: Any, path: str, body: Any) -> Any:
    import json
    import urllib.request

    request = urllib.request.Request(
        served.url + path, data=json.dumps(body).encode(), headers=served.headers, method="PUT"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.mark.slow  # runs the CLI as processes
def test_warmup_commands(tmp_path: Path) -> None:
    def sluice(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "warmup", *args],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            timeout=60,
        )

    plan_out = sluice("plan", "--schedule", "aggressive-14d")
    assert plan_out.returncode == 0 and plan_out.stdout.splitlines()[1].split()[:3] == [
        "0",
        "200",
        "9",
    ]
    data = ["--data-dir", str(tmp_path / "data")]
    started = sluice(
        "start", "192.0.2.10", "--schedule", "standard-30d", "--start-date", "2026-11-01", *data
    )
    assert started.returncode == 0, started.stderr
    state = sluice("status", *data)
    assert "192.0.2.10 (pool default): warming, day" in state.stdout
    assert "gmail" in state.stdout and "of" in state.stdout
    assert sluice("pause", "192.0.2.10", *data).returncode == 0
    assert "PAUSED" in sluice("status", *data).stdout
    assert sluice("resume", "192.0.2.10", *data).returncode == 0
    bad = sluice("start", "192.0.2.11", "--schedule", "yolo", *data)
    assert bad.returncode == 2 and "unknown schedule 'yolo'" in bad.stderr


@pytest.mark.slow
async def test_a_simulated_warmup_holds_on_bad_signals_and_resumes(
    store: Store, tmp_path: Path
) -> None:
    """16 days on an accelerated clock; the sink defers half the Gmail mail on days 10-12."""
    with FaultSink(seed=11) as sink:
        settings = WarmupSettings(max_deferral_rate=0.15, min_attempts=10)
        days = await simulate(store, sink, 16, settings)
    attempts = [d.sent + d.deferred for d in days]
    assert all(d.held_hours == 0 for d in days[:10]), "2% deferrals never hold it"
    assert [attempts[d] for d in range(10)] == [SCHEDULE[d] for d in range(10)], attempts
    assert days[10].held_hours >= 23, "held from the first hours of day 10"
    assert attempts[10] < 0.6 * SCHEDULE[10], "the budget dropped (half, after the first hour)"
    assert days[11].held_hours == 24 and days[12].held_hours == 24
    assert days[14].held_hours == 0, "resumed once the rates recovered"
    # held about three days (day 10, early, to day 13, early): day 15 gets the budget of
    # day 12 or 13, and the days held never came back
    assert attempts[15] in (SCHEDULE[12], SCHEDULE[13]), (attempts, SCHEDULE)
    events = [
        e
        for e in (await store.events_after(None, 100_000))[0]
        if e["type"] in ("warmup_paused", "warmup_resumed")
    ]
    assert [e["type"] for e in events] == ["warmup_paused", "warmup_resumed"], [
        (
            e["type"],
            round((e["timestamp"] - store_now(0)) / 3600, 1),
            e["reason"],
            e["attempts_last_hour"],
            e["deferral_rate"],
        )
        for e in events
    ]
    assert events[0]["ip"] == "127.0.0.1" and events[0]["provider"] == "gmail"
    assert events[0]["deferral_rate"] > 0.15
    series = await history(store, "127.0.0.1", store_now(16))
    write_report(tmp_path / "report.html", "Warmup", series)
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and "polyline" in page and ">gmail<" in page


def store_now(days: int) -> float:
    return datetime(START.year, START.month, START.day, tzinfo=UTC).timestamp() + days * 86400 - 600


async def test_an_idle_ip_starts_over(store: Store) -> None:
    await configure(store, COLD, (48, 96, 192, 384), "2026-10-01")
    gate = WarmupGate(store, refresh=0)
    first = at("2026-10-03T10:00:00")
    assert (await gate.choose([COLD], "gmail", first)).ip == COLD
    await gate.record(COLD, "gmail", "sent", first)
    later = at("2026-11-10T10:00:00")  # 38 days without a send: its reputation is gone
    await gate.choose([COLD], "gmail", later)
    config = (await gate.configs(later))[COLD]
    assert config.started_on == date(2026, 11, 10) and config.day(date(2026, 11, 10)) == 0


async def test_warmup_api(api: Any) -> None:
    put_answer = await api.put("/v1/warmup/ips/192.0.2.10", json={"schedule": "aggressive-14d"})
    assert put_answer.status == 200
    assert (await put_answer.json())["schedule"] == "aggressive-14d"
    for bad, field in (
        ({"schedule": "yolo"}, "schedule"),
        ({"schedule": [1, -1]}, "schedule"),
        ({"schedule": [5], "started_on": "monday"}, "started_on"),
        ({"nope": 1}, "body"),
    ):
        answer = await api.put("/v1/warmup/ips/192.0.2.10", json=bad)
        assert answer.status == 400 and (await answer.json())["field"] == field, bad
    assert (await api.put("/v1/warmup/ips/not-an-ip", json={})).status == 400
    paused = await (await api.post("/v1/warmup/ips/192.0.2.10/pause")).json()
    assert paused["paused_on"] is not None
    doc = await (await api.get("/v1/warmup/status")).json()
    [ip] = doc["ips"]
    assert ip["paused"] and ip["day"] == 0 and ip["days"] == 14
    gmail = ip["providers"]["gmail"]
    assert {
        "daily_budget",
        "hourly_budget",
        "sent_today",
        "sent_this_hour",
        "deferred",
        "held",
        "last_hour",
        "full_volume_on",
    } <= set(gmail)
    assert gmail["daily_budget"] == 200
    resumed = await (await api.post("/v1/warmup/ips/192.0.2.10/resume")).json()
    assert resumed["paused_on"] is None
    assert (await api.delete("/v1/warmup/ips/192.0.2.10")).status == 204
    assert (await api.get("/v1/warmup/ips/192.0.2.10")).status == 404
