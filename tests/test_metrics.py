"""``/metrics`` of a real ``sluice serve``: the workers' counters and histograms merged with the
API's (prometheus_client's multiprocess mode), read back with prometheus_client's own parser;
and the import order that mode depends on."""

from __future__ import annotations

import itertools
import math
import os
import signal
import stat
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from core.metrics import MULTIPROC_VARIABLE, use_directory
from loadtests.harness import Served, fixture_batch
from tests.conftest import Sink
from tests.test_end_to_end import post


def scrape(served: Served) -> tuple[str, list[Sample]]:
    """The content type and every sample of ``/metrics``."""
    request = urllib.request.Request(served.url + "/metrics", headers=served.headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        content_type = answer.headers["Content-Type"]
        text = answer.read().decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return content_type, samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` that carry ``labels``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def outcomes(samples: list[Sample]) -> dict[str, float]:
    found: dict[str, float] = {}
    for s in samples:
        if s.name == "sluice_messages_total" and s.value:
            found[s.labels["outcome"]] = found.get(s.labels["outcome"], 0) + s.value
    return found


def wait_metrics(
    served: Served, done: Callable[[list[Sample]], bool], timeout: float = 60
) -> list[Sample]:
    deadline = time.monotonic() + timeout
    while True:
        _, samples = scrape(served)
        if done(samples):
            return samples
        assert time.monotonic() < deadline, f"/metrics never got there: {outcomes(samples)}"
        time.sleep(0.1)


def send(served: Served, count: int, start: int) -> None:
    status, answer = post(served, "/v1/messages", fixture_batch(count, start=start))
    assert status == 202, answer
    assert {r["status"] for r in answer["results"]} == {"queued"}


def check_histogram(samples: list[Sample], name: str, count: int, **labels: str) -> None:
    """``count`` observations, in cumulative buckets that end with all of them at +Inf, and
    all of them under ten seconds (loopback)."""
    assert total(samples, f"{name}_count", **labels) == count
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in samples
        if s.name == f"{name}_bucket" and all(s.labels.get(k) == v for k, v in labels.items())
    )
    assert len(buckets) > 5 and buckets[-1] == (math.inf, count)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets)), buckets
    assert dict(buckets)[10.0] == count, buckets
    observed = total(samples, f"{name}_sum", **labels)
    assert 0 < observed < 10 * count


@pytest.mark.slow
def test_serve_metrics_count_the_workers_outcomes_and_both_latencies(
    serve_factory: Any, sink: Sink
) -> None:
    served = serve_factory(relay=sink.relay, workers=2)
    for start, count in ((0, 40), (40, 25), (65, 35)):
        send(served, count, start)
    sink.wait_for(100)
    samples = wait_metrics(served, lambda s: outcomes(s) == {"delivered": 100})
    sink.reply = "550 5.1.1 no such mailbox"
    send(served, 5, 100)
    samples = wait_metrics(served, lambda s: outcomes(s) == {"delivered": 100, "bounced": 5})
    content_type, _ = scrape(served)

    assert content_type.startswith("text/plain; version=0.0.4")
    assert len(sink.snapshot()) == 100
    # Delivered and bounced are counted by the worker processes only; the API counts requests.
    assert total(samples, "sluice_messages_total", outcome="delivered", provider="other") == 100
    check_histogram(samples, "sluice_delivery_latency_seconds", 105, provider="other")
    check_histogram(samples, "sluice_accept_latency_seconds", 4)
    requests = total(samples, "sluice_http_requests_total", route="/v1/messages", status="202")
    assert requests == 4
    assert total(samples, "sluice_api_recipients_total", status="queued") == 105
    assert total(samples, "sluice_recorded_events_total", event="delivered") == 100
    assert total(samples, "sluice_queue_delayed") == 0


def delivered_by(metrics_dir: Path, pid: int) -> float:
    """What one process counted as delivered, from its own file."""
    files = [str(path) for path in metrics_dir.glob(f"counter_{pid}.db")]
    merged = MultiProcessCollector.merge(files)
    return sum(
        s.value
        for family in merged
        for s in family.samples
        if s.name == "sluice_messages_total" and s.labels.get("outcome") == "delivered"
    )


@pytest.mark.slow
def test_serve_metrics_keep_a_dead_workers_counts_and_start_over_with_serve(
    serve_factory: Any, sink: Sink, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    metrics_dir = data_dir / "metrics"
    served = serve_factory(relay=sink.relay, workers=2, data_dir=data_dir)
    assert stat.S_IMODE(metrics_dir.stat().st_mode) == 0o700
    send(served, 60, 0)
    sink.wait_for(60)
    wait_metrics(served, lambda s: outcomes(s) == {"delivered": 60})

    busy = [pid for pid in served.worker_pids() if delivered_by(metrics_dir, pid)]
    assert busy, "no worker has a file of its own"
    victim = busy[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while victim in (pids := served.worker_pids()) or len(pids) < 2:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.1)
    send(served, 10, 60)
    sink.wait_for(70)
    # The dead worker's deliveries still count, beside those of its replacement.
    samples = wait_metrics(served, lambda s: outcomes(s) == {"delivered": 70})
    check_histogram(samples, "sluice_delivery_latency_seconds", 70, provider="other")
    assert served.stop() == 0

    # A new serve on the same data dir starts its counters from zero (the directory was
    # emptied); what Redis recorded stays.
    again = serve_factory(relay=sink.relay, workers=2, data_dir=data_dir)
    _, samples = scrape(again)
    assert outcomes(samples) == {}
    assert total(samples, "sluice_delivery_latency_seconds_count") == 0
    assert total(samples, "sluice_recorded_events_total", event="delivered") == 70
    assert not [path for path in metrics_dir.iterdir() if f"_{victim}." in path.name]
    assert again.stop() == 0


def test_multiprocess_mode_is_refused_once_prometheus_client_runs_in_memory(
    tmp_path: Path,
) -> None:
    # This module imported prometheus_client without a directory: its values are in memory,
    # so metrics made now would never reach the files /metrics merges.
    with pytest.raises(RuntimeError, match="imported before its multiprocess directory"):
        use_directory(tmp_path)
    assert MULTIPROC_VARIABLE not in os.environ
