"""The `sluice` command line as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import options
from loadtests.harness import FIXTURE
from mta.bounces import parse_report
from tests.bounce_reports import (
    EXIM_BLOCKLISTED,
    OUT_OF_OFFICE,
    POSTFIX_DELIVERED,
    POSTFIX_USER_UNKNOWN,
    YAHOO_ARF,
)


def sluice(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_bad_option_value_names_the_option_and_exits_2(tmp_path: Path) -> None:
    for position in (["--log-level", "DEBUG", "serve"], ["serve", "--log-level", "DEBUG"]):
        done = sluice(*position, "--workers", "many", "--data-dir", str(tmp_path), cwd=tmp_path)
        assert done.returncode == 2
        assert "--workers" in done.stderr and "many" in done.stderr
        assert "Traceback" not in done.stderr


def test_serve_takes_every_option_declared_with_a_flag(tmp_path: Path) -> None:
    flagged = [doc for doc in options() if doc.flag is not None]
    assert {doc.flag for doc in flagged} >= {"--relay", "--workers", "--inbound", "--ips"}
    shown = " ".join(sluice("serve", "--help", cwd=tmp_path).stdout.split())
    for doc in flagged:
        assert f"{doc.flag} {doc.metavar}" in shown and doc.env in shown
    # A flag given is checked like the rest; one left out leaves the environment to speak.
    given = sluice("serve", "--ips", "192.0.2.10@-warm", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert given.returncode == 2
    assert "Config --ips is invalid: pool '-warm'" in given.stderr
    left_out = sluice("serve", cwd=tmp_path, env={"SLUICE_INBOUND": "nowhere"})
    assert left_out.returncode == 2
    assert "Config SLUICE_INBOUND is invalid" in left_out.stderr
    alone = sluice("serve", cwd=tmp_path, env={"SLUICE_REDIS_MIN_REPLICAS": "1"})
    assert alone.returncode == 2, "the embedded Redis has no replica to wait for"
    assert "SLUICE_REDIS_MIN_REPLICAS needs a Redis with replicas" in alone.stderr


def test_fixture_copy_is_current() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cart-reminder.json"
    if shared.exists():
        assert FIXTURE.read_bytes() == shared.read_bytes(), (
            "refresh loadtests/fixtures from shared/"
        )


# --- sluice bounce parse -------------------------------------------------------------------

BOUNCE_CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora" / "bounces"
KINDS = {"dsn", "arf", "autoreply", "delivered", "unknown"}
RECIPIENT_KEYS = {"email", "status", "smtp_code", "class", "hard", "diagnostic"}


def _write(folder: Path, reports: dict[str, bytes]) -> list[str]:
    for name, raw in reports.items():
        (folder / name).write_bytes(raw)
    return list(reports)


def test_bounce_parse_json_one_line_per_file_and_errors_on_stderr(tmp_path: Path) -> None:
    names = _write(
        tmp_path,
        {
            "dead.eml": POSTFIX_USER_UNKNOWN,
            "blocked.eml": EXIM_BLOCKLISTED,
            "complaint.eml": YAHOO_ARF,
            "away.eml": OUT_OF_OFFICE,
            "ok.eml": POSTFIX_DELIVERED,
            "junk.eml": b"hello",
        },
    )
    done = sluice("bounce", "parse", "--json", *names[:3], "missing.eml", *names[3:], cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == "sluice: missing.eml: No such file or directory"
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["file"] for line in lines] == names  # the other files, in order
    for line in lines:
        assert set(line) == {"file", "kind", "recipients", "feedback_type"}
        assert line["kind"] in KINDS
        assert all(set(r) == RECIPIENT_KEYS for r in line["recipients"])
    by_file = {line["file"]: line for line in lines}
    assert by_file["dead.eml"]["kind"] == "dsn"
    assert by_file["dead.eml"]["recipients"] == [
        {
            "email": "Nobody@example.net",
            "status": "5.1.1",
            "smtp_code": 550,
            "class": "bad-mailbox",
            "hard": True,
            "diagnostic": "550 5.1.1 <Nobody@Example.NET>: Recipient address rejected: "
            "User unknown in virtual mailbox table",
        }
    ]
    blocked = by_file["blocked.eml"]["recipients"][0]
    assert (blocked["status"], blocked["class"], blocked["hard"]) == ("5.7.1", "policy", False)
    complaint = by_file["complaint.eml"]
    assert (complaint["kind"], complaint["feedback_type"]) == ("arf", "abuse")
    assert complaint["recipients"][0]["email"] == "Complainer@yahoo.com"
    assert by_file["away.eml"]["kind"] == "autoreply"
    assert by_file["ok.eml"]["kind"] == "delivered"
    assert by_file["junk.eml"] == {
        "file": "junk.eml",
        "kind": "unknown",
        "recipients": [],
        "feedback_type": None,
    }
    for line in lines:
        if line["kind"] in ("arf", "autoreply", "delivered"):
            assert not any(r["hard"] for r in line["recipients"])


def test_bounce_parse_table_and_stdin(tmp_path: Path) -> None:
    names = _write(tmp_path, {"dead.eml": POSTFIX_USER_UNKNOWN, "complaint.eml": YAHOO_ARF})
    done = sluice("bounce", "parse", *names, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    head, dead, complaint = done.stdout.splitlines()
    assert head.split() == [
        "FILE",
        "KIND",
        "EMAIL",
        "STATUS",
        "CODE",
        "CLASS",
        "HARD",
        "DIAGNOSTIC",
    ]
    assert dead.split()[:7] == [
        "dead.eml",
        "dsn",
        "Nobody@example.net",
        "5.1.1",
        "550",
        "bad-mailbox",
        "yes",
    ]
    assert complaint.split() == [
        "complaint.eml",
        "arf/abuse",
        "Complainer@yahoo.com",
        "-",
        "-",
        "-",
        "no",
    ]
    piped = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bounce", "parse", "--json", "-"],
        input=OUT_OF_OFFICE,
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert piped.returncode == 0
    assert json.loads(piped.stdout)["kind"] == "autoreply"


@pytest.mark.skipif(not (BOUNCE_CORPUS / "expected.json").is_file(), reason="no bounce corpus")
def test_bounce_parse_agrees_with_the_parser_on_corpus_files(tmp_path: Path) -> None:
    expected = json.loads((BOUNCE_CORPUS / "expected.json").read_text())
    samples = BOUNCE_CORPUS / "samples"
    names = [
        "arf-01.eml",
        "rfc3834-03.eml",
        "lhost-postfix-02.eml",
        "lhost-exim-30.eml",
        "rhost-google-01.eml",
        "lhost-amazonses-18.eml",
    ]
    done = sluice("bounce", "parse", "--json", *(str(samples / n) for n in names), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name, line in zip(names, done.stdout.splitlines(), strict=True):
        answer = json.loads(line)
        report = parse_report((samples / name).read_bytes())
        assert answer["kind"] == report.kind
        assert [r["hard"] for r in answer["recipients"]] == [e["hard"] for e in expected[name]]
        if expected[name][0]["feedback_type"]:
            assert answer["feedback_type"] == expected[name][0]["feedback_type"]
