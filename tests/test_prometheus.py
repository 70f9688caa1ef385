"""The Prometheus side: the rules file passes ``promtool check rules`` and its unit tests
(``promtool test rules``: the complaint alerts fire at Gmail's lines, not under the
minimum volume); a real ``serve``'s ``/metrics`` passes ``promtool check metrics``; the
Grafana dashboard is a dashboard whose every query names a series Sluice exposes or a
recording rule of the rules file."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from typing import Any

import pytest
import yaml

from loadtests.harness import PROJECT_ROOT, fixture_batch
from tests.conftest import Sink, need_tools
from tests.test_end_to_end import post
from tests.test_metrics import wait_metrics

RULES = PROJECT_ROOT / "deploy" / "prometheus" / "sluice-rules.yml"
RULES_TEST = PROJECT_ROOT / "deploy" / "prometheus" / "tests" / "sluice-rules-test.yml"
DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "sluice-dashboard.json"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    need_tools("promtool")
    return subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_the_rules_file_passes_promtool_and_its_alerts_fire_at_the_lines() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULES_TEST))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def recording_rules() -> set[str]:
    document: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return {
        rule["record"]
        for group in document["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


@pytest.mark.slow
def test_metrics_pass_promtool_and_the_dashboard_asks_only_for_what_exists(
    serve_factory: Any, sink: Sink
) -> None:
    served = serve_factory(relay=sink.relay, workers=1)
    sink.refuse["user3@inbox.example.org"] = "550 5.1.1 <user3@inbox.example.org>: User unknown"
    status, _ = post(served, "/v1/messages", fixture_batch(5))
    assert status == 202
    wait_metrics(served, lambda samples: any(s.name == "sluice_bounces_total" for s in samples))
    _, text = scrape_text(served)
    linted = promtool("check", "metrics", stdin=text)
    assert linted.returncode == 0, linted.stdout + linted.stderr

    exposed = {m.group(1) for m in re.finditer(r"^# TYPE (\S+) ", text, re.MULTILINE)}
    known = exposed | recording_rules()
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        assert panel["type"] == "timeseries" and set(panel["gridPos"]) == {"h", "w", "x", "y"}
        for target in panel["targets"]:
            for name in re.findall(r"\bsluice[a-z0-9_:]*", target["expr"]):
                base = re.sub(r"_(bucket|sum|count|total)$", "", name)
                assert name in known or base in known, (panel["title"], name)


def scrape_text(served: Any) -> tuple[str, str]:
    """(content type, the exposition's text)."""
    request = urllib.request.Request(served.url + "/metrics", headers=served.headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.headers["Content-Type"], answer.read().decode()
