"""The `sluice` command line as a user types it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from loadtests.harness import FIXTURE


def sluice(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_bad_option_value_names_the_option_and_exits_2(tmp_path: Path) -> None:
    for position in (["--log-level", "DEBUG", "serve"], ["serve", "--log-level", "DEBUG"]):
        done = sluice(*position, "--workers", "many", "--data-dir", str(tmp_path), cwd=tmp_path)
        assert done.returncode == 2
        assert "--workers" in done.stderr and "many" in done.stderr
        assert "Traceback" not in done.stderr


def test_fixture_copy_is_current() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cart-reminder.json"
    if shared.exists():
        assert FIXTURE.read_bytes() == shared.read_bytes(), (
            "refresh loadtests/fixtures from shared/"
        )
