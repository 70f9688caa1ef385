"""Template bombs against the real app: each answered within a second past its budget with
a clear reason, while the same server keeps answering ``/healthz``; and an over-budget
render at delivery bounces that message without stalling the worker's other deliveries.

The request-time bombs go to a real ``sluice serve`` (one for the module, no workers),
whose prepare thread renders while this process polls its ``/healthz``: the client is not
the server, so what is measured is the server's event loop alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller

from core.store import open_store
from gateway import intake as accepting
from loadtests.harness import Served, fixture_batch, free_port, served
from mta.template_budget import (
    MAX_BUILT_CHARS,
    MAX_ITEMS,
    MAX_LOOP_ITERATIONS,
    MAX_PART_CHARS,
    MAX_RENDER_SECONDS,
    MAX_REQUEST_RENDER_SECONDS,
    MAX_TEMPLATE_TOKENS,
    MAX_VALUE_CHARS,
    MAX_WIDTH,
)

HEALTHZ_MAX_SECONDS = 0.1
RSS_GROWTH_MAX_BYTES = 100 * 1024 * 1024  # any one of these bombs unbudgeted: gigabytes
M = '{% set s = "x" * 1000000 %}'  # a 1 MB string, within the value limit
SLOW = '{% set a = "x" * 1000000 %}{% set b = "x" * 1000000 %}'  # compared: ~50 us each
VALUE = f"more than {MAX_VALUE_CHARS} characters"
TIME = f"took more than {MAX_RENDER_SECONDS:g} s"

# id -> (text template, part of the reason); each is too expensive whatever the data
BOMBS: dict[str, tuple[str, str]] = {
    # the four the attacker review reproduced
    "tilde-doubling": (M + "{% set s = s ~ s %}" * 8 + "{{ s|length }}", VALUE),
    "replace-in-range-1000": (
        '{% set s = "x" * 100000 %}{% for i in range(1000) %}{{ s|replace("x", "yy")|length }}'
        "{% endfor %}",
        f"more than {MAX_BUILT_CHARS} characters",
    ),
    "slow-loop-150-iterations": (
        SLOW + "{% for i in range(150) %}{% for j in range(600) %}{% if a == b %}{% endif %}"
        "{% endfor %}{% endfor %}",
        TIME,
    ),
    "nested-loops-output": (
        '{% for i in range(1000) %}{% for j in range(100) %}{{ "x" * 1000 }}{% endfor %}'
        "{% endfor %}",
        f"larger than {MAX_PART_CHARS} characters",
    ),
    # one per path closed
    "plus-doubling": (M + "{% set s = s + s %}" * 8, VALUE),
    "plus-list-doubling": ("{% set l = [1] %}" + "{% set l = l + l %}" * 20, f"{MAX_ITEMS} items"),
    "repeat": ('{{ "x" * 10**9 }}', VALUE),
    "huge-join": (M + '{{ ([s] * 1000)|join(",") }}', VALUE),
    "join-separator": ('{{ range(1000)|join("x" * 1000000) }}', VALUE),
    "join-attribute": (M + "{{ ([{'a': s}] * 1000)|join(attribute='a') }}", VALUE),
    "format-filter": (M + '{{ "%(a)s%(a)s%(a)s"|format(a=s) }}', VALUE),
    "percent-operator": (M + '{{ ("%s" * 1000) % ([s] * 1000)|list|first }}', VALUE),
    "str-format": (M + '{{ ("{0}" * 1000).format(s) }}', VALUE),
    "center-filter": ('{{ "x"|center(10**9) }}', f"widths of {MAX_WIDTH}"),
    "indent-lines": ('{{ ("\n" * 1000000)|indent(1000) }}', VALUE),
    "indent-string": ('{{ ("\n" * 100000)|indent("x" * 1000) }}', VALUE),
    "wordwrap-wrapstring": ('{{ ("x" * 200000)|wordwrap(1, wrapstring="y" * 1000) }}', VALUE),
    "urlize-megabytes": (M + "{{ s|urlize }}", "at most"),
    "string-of-list": (M + "{{ ([s] * 1000)|string }}", VALUE),
    "print-list": (M + "{{ [s] * 1000 }}", VALUE),
    "tojson-list": (M + "{{ ([s] * 1000)|tojson }}", VALUE),
    "list-of-characters": (M + "{{ s|list|length }}", f"{MAX_LOOP_ITERATIONS} iterations"),
    "set-in-loop": (
        '{% set ns = namespace(s="") %}{% for i in range(1000) %}'
        '{% set ns.s = ns.s ~ "x" * 10000 %}{% endfor %}',
        f"more than {MAX_BUILT_CHARS} characters",
    ),
    "macro-buffer": (
        "{% macro m() %}{% for i in range(1000) %}"
        + "y" * 2000
        + "{% endfor %}{% endmacro %}{% for i in range(100) %}{% set x = m() %}{% endfor %}",
        f"more than {MAX_BUILT_CHARS} characters",
    ),
    "str-replace": (M + '{{ s.replace("x", "xxxxxxxxxx") }}', VALUE),
    "str-join": (M + '{{ ",".join([s] * 1000) }}', VALUE),
    "str-center": ('{{ "x".center(10**9) }}', f"widths of {MAX_WIDTH}"),
    "str-ljust": ('{{ "x".ljust(10**8) }}', f"widths of {MAX_WIDTH}"),
    "str-zfill": ('{{ "1".zfill(10**8) }}', f"widths of {MAX_WIDTH}"),
    "str-expandtabs": ('{{ ("\t" * 1000000).expandtabs(1000) }}', VALUE),
    "str-translate": (M + '{{ s.translate({120: "y" * 1000}) }}', VALUE),
    "str-split": ('{{ ("x " * 1000000).split()|length }}', f"{MAX_ITEMS} items"),
    "sum-of-lists": ("{{ ([[1]] * 100000)|sum(start=[])|length }}", "items"),
    "compare-lists": (
        '{% set l = ["x"] * 100000 %}{{ [l] * 100 == [l] * 100 }}',
        "comparison",
    ),
    "in-list": (M + '{% set t = "x" * 1000000 %}{{ t in [s] * 1000 }}', "comparison"),
    "unique-of-list": (M + "{{ ([s] * 1000)|unique|list }}", VALUE),
    "for-over-string": (M + "{% for c in s %}{% endfor %}", f"{MAX_LOOP_ITERATIONS} iterations"),
    "map-over-string": (M + "{{ s|map('upper')|list|length }}", f"{MAX_LOOP_ITERATIONS} iter"),
    "select-generator": (M + "{{ s|select|list|length }}", f"{MAX_LOOP_ITERATIONS} iterations"),
    "batch-fill": ("{{ range(10)|batch(10**9, 'x')|list }}", f"widths of {MAX_WIDTH}"),
    "recursive-loop": (
        "{% for x in [1] recursive %}{% if loop.depth < 5 %}{{ loop(range(1000)) }}{% endif %}"
        "{% endfor %}",
        "too expensive to render",  # 100,000 iterations or 0.25 s, whichever comes first
    ),
    "lipsum": ("{{ lipsum(1000000) }}", "lipsum"),
    "power": ("{{ 7 ** 99999999 }}", "power"),
    "compile-1mb-of-tags": ("{{ a }}" * 140_000, f"{MAX_TEMPLATE_TOKENS} tokens"),
    "compile-1mb-list-literal": (
        "{{ [" + "1," * 500_000 + "1] }}",
        f"{MAX_TEMPLATE_TOKENS} tokens",
    ),
}


class Remote:
    """The module's ``sluice serve``, through an aiohttp session, as ``api.get``/``api.post``."""

    def __init__(self, served: Served, session: aiohttp.ClientSession) -> None:
        self.served = served
        self.session = session

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(self.served.url + path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.session.post(self.served.url + path, **kwargs)


@pytest.fixture(scope="module")
def bomb_serve() -> Iterator[Served]:
    with served(workers=0) as server:
        yield server


@pytest.fixture
async def api(bomb_serve: Served) -> AsyncIterator[Remote]:
    async with aiohttp.ClientSession(headers=bomb_serve.headers) as session:
        yield Remote(bomb_serve, session)


@contextlib.asynccontextmanager
async def healthz_watch(api: Remote) -> AsyncIterator[list[float]]:
    """Poll the API from another task for as long as the block runs; the latencies. The route
    polled (``/openapi.json``) touches no Redis: ``/healthz`` pings Redis, whose
    ``appendfsync always`` stalls with the disk (0.3-0.8 s seen on loaded machines), which is
    not what these tests look at (the event loop is not blocked by a render)."""
    latencies: list[float] = []
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            started = time.monotonic()
            async with api.get("/openapi.json") as response:
                assert response.status == 200
                await response.read()
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.01)

    poller = asyncio.create_task(poll())
    try:
        yield latencies
    finally:
        stop.set()
        await poller


def peak_rss(api: Remote) -> int:
    """The serve process's peak resident size so far (VmHWM)."""
    for line in Path(f"/proc/{api.served.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def post_timed(api: Remote, path: str, body: Any) -> tuple[int, Any, float, list[float]]:
    """(status, answer, seconds to answer, /healthz latencies meanwhile)."""
    async with healthz_watch(api) as latencies:
        started = time.monotonic()
        async with api.post(path, json=body) as response:
            raw = await response.read()
        elapsed = time.monotonic() - started
    return response.status, json.loads(raw) if raw else None, elapsed, latencies


def with_text(text: str, recipients: int = 1) -> dict[str, Any]:
    body = fixture_batch(recipients)
    body["text"] = text
    return body


@pytest.mark.parametrize("bomb", list(BOMBS.values()), ids=list(BOMBS))
async def test_template_bomb_is_refused_promptly_while_healthz_answers(
    api: Remote, bomb: tuple[str, str]
) -> None:
    text, reason = bomb
    rss_before = peak_rss(api)
    status, answer, elapsed, latencies = await post_timed(api, "/v1/messages", with_text(text))
    assert (status, answer["error"], answer["field"]) == (422, "template_too_expensive", "text")
    assert reason in answer["detail"], answer
    # rendered once for the recipient, once more without data to blame the template
    assert elapsed < 2 * MAX_RENDER_SECONDS + 1.0
    assert latencies and max(latencies) < HEALTHZ_MAX_SECONDS, max(latencies)
    assert peak_rss(api) - rss_before < RSS_GROWTH_MAX_BYTES


async def test_four_recipients_of_a_slow_template_cost_one_render_budget(api: Remote) -> None:
    """The attacker's 4 recipients x 150 slow iterations took 8.2 s; now the first recipient
    and one render without data find the template too expensive."""
    status, answer, elapsed, latencies = await post_timed(
        api, "/v1/messages", with_text(BOMBS["slow-loop-150-iterations"][0], recipients=4)
    )
    assert (status, answer["error"]) == (422, "template_too_expensive"), answer
    assert TIME in answer["detail"]
    assert elapsed < 2 * MAX_RENDER_SECONDS + 1.0
    assert max(latencies) < HEALTHZ_MAX_SECONDS


async def test_recipient_whose_data_makes_the_render_expensive_is_rejected_alone(
    api: Remote,
) -> None:
    body = fixture_batch(3)
    body["text"] = "{% for i in range(100) %}{{ note | default('') }}{% endfor %}"
    body["recipients"][1]["data"]["note"] = "n" * 60_000  # 100 x 60 KB: over the 2 MB part
    status, answer, elapsed, latencies = await post_timed(api, "/v1/messages", body)
    assert status == 202, answer
    assert [r["status"] for r in answer["results"]] == ["queued", "rejected", "queued"]
    reason = answer["results"][1]["reason"]
    assert reason.startswith("text: template is too expensive to render"), reason
    assert f"larger than {MAX_PART_CHARS} characters" in reason
    assert "this recipient's data" in reason
    assert elapsed < 2 * MAX_RENDER_SECONDS + 1.0
    assert max(latencies) < HEALTHZ_MAX_SECONDS


async def test_slow_recipients_stop_at_the_request_budget(api: Remote) -> None:
    """40 recipients whose data each makes the render slow (each ~0.25 s): the request stops
    at its own budget instead of holding the prepare thread for 10 s."""
    body = fixture_batch(40)
    body["text"] = (
        SLOW + "{% for i in range(1000) %}{% for j in range(rounds) %}{% if a == b %}{% endif %}"
        "{% endfor %}{% endfor %}"
    )
    for recipient in body["recipients"]:
        recipient["data"]["rounds"] = 90
    status, answer, elapsed, latencies = await post_timed(api, "/v1/messages", body)
    assert (status, answer["error"], answer["field"]) == (422, "template_too_expensive", "text")
    assert f"more than {MAX_REQUEST_RENDER_SECONDS:g} s in all" in answer["detail"]
    # one probe without data (cheap here: no rounds) on top of the request's budget
    assert elapsed < MAX_REQUEST_RENDER_SECONDS + MAX_RENDER_SECONDS + 1.0
    assert max(latencies) < HEALTHZ_MAX_SECONDS


async def test_sendgrid_gets_a_sendgrid_shaped_422(api: Remote) -> None:
    body = {
        "personalizations": [{"to": [{"email": "ada@inbox.example.org"}]}],
        "from": {"email": "news@shop.example.com"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": BOMBS["tilde-doubling"][0]}],
    }
    status, answer, elapsed, _ = await post_timed(api, "/v3/mail/send", body)
    assert status == 422
    [error] = answer["errors"]
    assert error["field"] == "text" and VALUE in error["message"], answer
    assert elapsed < 2 * MAX_RENDER_SECONDS + 1.0


async def test_fixture_is_still_accepted(api: Remote) -> None:
    status, answer, _, latencies = await post_timed(api, "/v1/messages", fixture_batch(1000))
    assert status == 202
    assert {r["status"] for r in answer["results"]} == {"queued"}
    assert max(latencies) < HEALTHZ_MAX_SECONDS


# --- at delivery --------------------------------------------------------------------------------


class SlowSink:
    """An SMTP sink that answers DATA after ``delay`` seconds; ``begun`` is set once
    ``expect`` DATA commands have begun."""

    def __init__(self, delay: float, expect: int) -> None:
        self.delay = delay
        self.expect = expect
        self.started = 0
        self.begun = threading.Event()
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.started += 1
            if self.started >= self.expect:
                self.begun.set()
        await asyncio.sleep(self.delay)
        return "250 OK"


def http_get(served: Served, path: str) -> Any:
    request = urllib.request.Request(served.url + path, headers=served.headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def http_post(served: Served, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        served.url + path, data=json.dumps(body).encode(), headers=served.headers
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


async def queue_expensive_batch(served: Served, recipients: int, text: str) -> list[str]:
    """Queue a batch whose text is over the render budget, as one accepted under other limits
    (an older Sluice, a quieter moment) would be: prepared with a cheap text, stored with
    the expensive one."""
    body = fixture_batch(recipients, domain="slow.example.org")
    prepared = accepting.prepare(body, now=time.time())
    content = dataclasses.replace(prepared.content, text=text)
    prepared = dataclasses.replace(prepared, content=content)
    async with open_store(served.redis_url()) as store:
        response, _, _ = await accepting.accept(store, prepared, "", None)
    return [r["message_id"] for r in json.loads(response)["results"]]


@pytest.mark.slow
async def test_render_over_budget_at_delivery_bounces_without_stalling_other_deliveries(
    serve_factory: Any,
) -> None:
    """Eight messages in SMTP conversations (the sink answers after 0.3 s), then eight
    renders of 0.25 s each: rendered on the worker's event loop, they would hold the replies
    of the first eight for two seconds; on its render threads, they do not."""
    port = free_port()
    sink = SlowSink(delay=0.3, expect=8)
    controller = Controller(sink, hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    try:
        served = serve_factory(relay=f"127.0.0.1:{port}", workers=1)
        normal = await asyncio.to_thread(http_post, served, "/v1/messages", fixture_batch(8))
        assert await asyncio.to_thread(sink.begun.wait, 30), "the first messages did not arrive"
        expensive = await queue_expensive_batch(served, 8, BOMBS["slow-loop-150-iterations"][0])
        for message_id in expensive:
            found = await wait_for_status(served, message_id, "bounced")
            bounce = found["events"][-1]
            assert bounce["bounce_class"] == "content", found
            assert TIME in bounce["reason"], bounce
        for result in normal["results"]:
            assert await wait_for_status(served, result["message_id"], "delivered")
    finally:
        controller.stop()
    durations = {
        match["id"]: float(match["ms"])
        for match in re.finditer(
            r"message=(?P<id>\S+) dest=\S+ code=250 outcome=delivered duration_ms=(?P<ms>[\d.]+)",
            served.log(),
        )
    }
    normal_ids = [r["message_id"] for r in normal["results"]]
    assert set(normal_ids) <= set(durations), served.log()[-3000:]
    slowest = max(durations[m] for m in normal_ids)
    assert slowest < 300 + 500, f"a delivery waited {slowest:.0f} ms: the event loop stalled"


async def wait_for_status(
    served: Served, message_id: str, status: str, seconds: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        found: dict[str, Any] = await asyncio.to_thread(
            http_get, served, f"/v1/messages/{message_id}"
        )
        if found["status"] == status:
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.1)
