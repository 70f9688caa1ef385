"""The checklist's outcome: the exit code of ``sluice preflight`` (0 all pass, 1 warnings
only, 2 any failure, 3 something could not be checked), the text a person reads, and the
``--json`` document a script reads."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gateway.preflight.model import Check


def exit_code(checks: list[Check]) -> int:
    statuses = {c.status for c in checks}
    return 3 if "error" in statuses else 2 if "fail" in statuses else 1 if "warn" in statuses else 0


def render(domain: str, checks: list[Check]) -> str:
    lines = [f"Preflight for {domain}"]
    width = max(len(c.id) for c in checks)
    for c in checks:
        lines.append(f"  {c.status.upper():<5} {c.id:<{width}}  {c.summary}")
        if c.status != "pass" and c.fix:
            lines.append(f"  {'':<5} {'':<{width}}  fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "warn", "fail", "error")}
    lines.append(
        f"{counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed, "
        f"{counts['error']} could not be checked"
    )
    return "\n".join(lines)


def as_json(domain: str, checks: list[Check]) -> dict[str, Any]:
    return {"domain": domain, "checks": [asdict(c) for c in checks]}
