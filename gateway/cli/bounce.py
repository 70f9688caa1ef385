"""``sluice bounce parse FILE... [--json]``: how Sluice reads bounce reports, complaints and
auto-replies, for a deliverability engineer looking at a message that came back.

Each file is one message as received (an mbox ``From `` line first is fine; ``-`` reads standard
input) and is parsed by ``mta.bounces`` exactly as the inbound server parses it. ``--json`` prints
one JSON object a line per file::

    {"file", "kind", "recipients": [{"email", "status", "smtp_code", "class", "hard",
     "diagnostic"}], "feedback_type"}

``kind`` is ``dsn`` (a bounce or delay), ``arf`` (a complaint), ``autoreply``, ``delivered``
(a success notice) or ``unknown``; ``class`` is the bounce class (``null`` for recipients that
were reached: complaints, auto-replies, delivery notices); ``hard`` says whether the inbound
server would suppress the address. Without ``--json``, a table. A file that cannot be read gets
a line on standard error and the exit status 1; the other files are printed all the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mta.bounces import Report, parse_report

_DIAGNOSTIC_WIDTH = 72  # in the table; --json has the whole diagnostic


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    bounce = commands.add_parser(
        "bounce", parents=[common], help="read bounce reports, complaints and auto-replies"
    )
    actions = bounce.add_subparsers(dest="bounce_command", required=True, metavar="ACTION")
    parse = actions.add_parser(
        "parse",
        parents=[common],
        help="what Sluice reads in each message: kind, recipients, status, class, hard",
    )
    parse.add_argument("files", nargs="+", metavar="FILE", help="a message file; - for stdin")
    parse.add_argument("--json", action="store_true", help="one JSON object a line per file")


def as_json(name: str, report: Report) -> dict[str, Any]:
    """The ``--json`` line of one file."""
    return {
        "file": name,
        "kind": report.kind,
        "recipients": [
            {
                "email": rcpt.email,
                "status": rcpt.status,
                "smtp_code": rcpt.smtp_code,
                "class": rcpt.verdict.bounce_class,
                "hard": rcpt.verdict.hard,
                "diagnostic": rcpt.diagnostic,
            }
            for rcpt in report.recipients
        ],
        "feedback_type": report.feedback_type,
    }


def _rows(name: str, report: Report) -> list[list[str]]:
    kind = f"{report.kind}/{report.feedback_type}" if report.feedback_type else report.kind
    rows = []
    for rcpt in report.recipients or (None,):
        if rcpt is None:
            rows.append([name, kind, "-", "-", "-", "-", "-", ""])
            continue
        diagnostic = rcpt.diagnostic
        if len(diagnostic) > _DIAGNOSTIC_WIDTH:
            diagnostic = diagnostic[: _DIAGNOSTIC_WIDTH - 3] + "..."
        rows.append(
            [
                name,
                kind,
                rcpt.email,
                rcpt.status or "-",
                str(rcpt.smtp_code or "-"),
                rcpt.verdict.bounce_class or "-",
                "yes" if rcpt.verdict.hard else "no",
                diagnostic,
            ]
        )
    return rows


def _table(rows: list[list[str]]) -> str:
    lines = [["FILE", "KIND", "EMAIL", "STATUS", "CODE", "CLASS", "HARD", "DIAGNOSTIC"], *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    with open(name, "rb") as handle:
        return handle.read()


def run(args: argparse.Namespace) -> int:
    failed = False
    rows: list[list[str]] = []
    for name in args.files:
        try:
            raw = _read(name)
        except OSError as exc:
            print(f"sluice: {name}: {exc.strerror or exc}", file=sys.stderr)
            failed = True
            continue
        report = parse_report(raw)
        if args.json:
            print(json.dumps(as_json(name, report), ensure_ascii=False), flush=True)
        else:
            rows += _rows(name, report)
    if rows:
        print(_table(rows))
    return 1 if failed else 0
