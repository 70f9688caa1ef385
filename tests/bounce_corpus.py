"""How far ``mta.bounces`` agrees with Sisimai on the real-world corpus.

The corpus (``shared/corpora/bounces``: 375 messages and Sisimai's verdict per failed
recipient in ``expected.json``) is read once; ``measure()`` counts the agreement per MTA family,
per half of a fixed split of the files (by a hash of the file name, so that a reader can see the
rules are not fitted to single files: both halves must meet the thresholds), per side of the
family split (below) and in total, and ``render()`` prints the table
``pytest tests/test_bounces.py -s`` shows.

**The family split.** Halves drawn by file name put files of every family on both sides, so a
rule fitted to one MTA's wording shows on both. To see whether the rules carry over to layouts
they were not written for, ``side(name)`` puts *all* the files of one vendor's layouts on the
same side: ``develop`` (rules are written looking at these) or ``holdout`` (only measured).
A vendor is the family of the file name (``lhost-postfix``...), with the families of one vendor
grouped (``VENDORS``: Exchange 2003, 2007, Office 365, Outlook.com and Microsoft's servers are
one; so are au's, Amazon's, Sendmail's, Google's, Yahoo's and Lotus's). The side is the parity
of the first byte of SHA-256 of ``f"{SPLIT_SALT}:{vendor}"``; ``SPLIT_SALT`` is the first
integer from 0 for which each side holds 45% to 55% of the recipients (chosen on size alone,
before any rule was changed): 6, giving 212 recipients to develop and 189 to holdout.

Recipients are compared in order (our n-th recipient with Sisimai's n-th).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mta.bounces import Report, parse_report

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora" / "bounces"

# Sisimai's reasons in Sluice's bounce classes (issue 11).
REASON_CLASS: dict[str, str] = {
    "userunknown": "bad-mailbox",
    "hasmoved": "bad-mailbox",
    "hostunknown": "bad-domain",
    "notaccept": "bad-domain",
    "mailboxfull": "quota",
    "exceedlimit": "quota",
    "spamdetected": "spam",
    "virusdetected": "content",
    "contenterror": "content",
    "mesgtoobig": "content",
    **dict.fromkeys(
        [
            "rejected",
            "blocked",
            "badreputation",
            "requireptr",
            "authfailure",
            "notcompliantrfc",
            "norelaying",
            "policyviolation",
            "securityerror",
        ],
        "policy",
    ),
}

# Sisimai's reasons left out of the class agreement: none of Sluice's classes is the same idea.
UNCLASSED: dict[str, str] = {
    "filtered": "a 'user unknown' Sisimai suspects a filter wrote: bad-mailbox (not hard) here",
    "suspend": "a disabled or suspended mailbox: bad-mailbox, not hard, here",
    "expired": "the sending MTA gave up retrying: here the class of the last reply (routing...)",
    "systemerror": "the receiving system failed: other or routing here",
    "systemfull": "the receiving system's disk is full: other here",
    "mailererror": "a local delivery program failed: other here",
    "networkerror": "DNS or connection trouble: routing here, but Sisimai's is wider",
    "syntaxerror": "an SMTP protocol error: other here",
    "toomanyconn": "throttling: a class (usually policy) plus the throttle flag here",
    "speeding": "throttling: a class (usually policy) plus the throttle flag here",
    "onhold": "Sisimai could not decide",
    "undefined": "Sisimai could not decide",
    "vacation": "not a failure (auto-reply): no class",
    "feedback": "not a failure (complaint): no class",
    "delivered": "not a failure (delivery notice): no class",
}

_CLASSES = (
    "bad-mailbox",
    "bad-domain",
    "quota",
    "policy",
    "spam",
    "content",
    "routing",
    "other",
    "-",
)
_INVENTED = re.compile(r"^\d\.0\.9\d\d$")  # Sisimai's own codes for messages without one
_NOT_FAILURES = {"vacation": "autoreply", "feedback": "arf", "delivered": "delivered"}


@dataclass
class Tally:
    """Agreement counts over some files (one family, one half, or all)."""

    files: int = 0
    expected: int = 0
    found: int = 0
    status_n: int = 0
    status_ok: int = 0
    hard_ok: int = 0
    class_n: int = 0
    class_ok: int = 0
    # recipients of complaints, auto-replies and delivery notices: read as such, never hard
    notice_n: int = 0
    notice_ok: int = 0
    misses: list[str] = field(default_factory=list)
    class_misses: list[str] = field(default_factory=list)
    notice_errors: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)

    def ratio(self, what: str) -> float:
        """Agreement on ``found``, ``status``, ``hard`` or ``class``, from 0 to 1."""
        part, whole = {
            "found": (self.found, self.expected),
            "status": (self.status_ok, self.status_n),
            "hard": (self.hard_ok, self.expected),
            "class": (self.class_ok, self.class_n),
            "notice": (self.notice_ok, self.notice_n),
        }[what]
        return part / whole if whole else 1.0


@dataclass
class Measured:
    families: dict[str, Tally]
    halves: dict[str, Tally]
    sides: dict[str, Tally]  # the family split: develop, holdout
    total: Tally
    confusion: Counter[tuple[str, str]]  # (Sisimai's reason as a class, ours)
    unclassed: Counter[str]  # recipients left out of the class agreement, by Sisimai's reason


def family(name: str) -> str:
    return re.sub(r"-\d+\.eml$", "", name)


# Families of one vendor: they share wording and often code, so they stay on one side.
VENDORS: dict[str, str] = {
    **dict.fromkeys(
        [
            "lhost-exchange2003",
            "lhost-exchange2007",
            "lhost-office365",
            "lhost-outlook",
            "rhost-microsoft",
        ],
        "microsoft",
    ),
    **dict.fromkeys(["lhost-kddi", "lhost-ezweb", "rhost-kddi"], "kddi"),
    **dict.fromkeys(["lhost-amazonses", "lhost-receivingses", "lhost-amazonworkmail"], "amazon"),
    **dict.fromkeys(["lhost-sendmail", "lhost-v5sendmail"], "sendmail"),
    **dict.fromkeys(["lhost-gmail", "lhost-googlegroups", "rhost-google"], "google"),
    **dict.fromkeys(["lhost-yahoo", "rhost-yahooinc"], "yahoo"),
    **dict.fromkeys(["lhost-domino", "lhost-notes"], "lotus"),
}
SPLIT_SALT = 6
SIDES = ("develop", "holdout")


def vendor(name: str) -> str:
    """The vendor whose layout a corpus file shows: its family, grouped by ``VENDORS``."""
    return VENDORS.get(family(name), family(name))


def family_side(name: str, salt: int = SPLIT_SALT) -> str:
    """``develop`` or ``holdout`` for a family (``lhost-postfix``): the side of its vendor."""
    digest = hashlib.sha256(f"{salt}:{VENDORS.get(name, name)}".encode()).digest()
    return SIDES[digest[0] % 2]


def side(name: str) -> str:
    """``develop`` or ``holdout`` for a corpus file: the family split (module docstring)."""
    return family_side(family(name))


def half(name: str) -> str:
    """``A`` or ``B``: a fixed split of the files, by the first byte of a hash of the name."""
    return "AB"[hashlib.sha256(name.encode()).digest()[0] % 2]


def expected() -> dict[str, list[dict[str, Any]]]:
    data: dict[str, list[dict[str, Any]]] = json.loads((CORPUS / "expected.json").read_text())
    return data


def _compare(name: str, report: Report, entries: list[dict[str, Any]], measured: Measured) -> Tally:
    tally = Tally(files=1)
    for index, entry in enumerate(entries):
        ours = report.recipients[index] if index < len(report.recipients) else None
        tally.expected += 1
        tally.found += ours is not None and "@" in ours.email
        status = entry["status"] or ""
        if status and not _INVENTED.match(status):
            tally.status_n += 1
            tally.status_ok += ours is not None and ours.status == status
        hard = ours is not None and ours.verdict.hard
        tally.hard_ok += hard == entry["hard"]
        if hard != entry["hard"]:
            tally.misses.append(f"{name}: hard={hard}, Sisimai {entry['reason']}")
        reason = entry["reason"]
        ours_class = (ours.verdict.bounce_class if ours else None) or "-"
        if reason in REASON_CLASS:
            tally.class_n += 1
            tally.class_ok += ours_class == REASON_CLASS[reason]
            if ours_class != REASON_CLASS[reason]:
                tally.class_misses.append(f"{name}: {ours_class}, Sisimai {reason}")
            measured.confusion[(REASON_CLASS[reason], ours_class)] += 1
        else:
            measured.unclassed[reason] += 1
        if reason in _NOT_FAILURES:
            tally.notice_n += 1
            kind, feedback = _NOT_FAILURES[reason], entry["feedback_type"]
            if report.kind == kind and (kind != "arf" or report.feedback_type == feedback):
                tally.notice_ok += not hard
            else:
                tally.notice_errors.append(
                    f"{name}: {report.kind}/{report.feedback_type}, Sisimai {reason}/{feedback}"
                )
    if report.kind in ("autoreply", "delivered", "arf"):
        hard_ones = [r.email for r in report.recipients if r.verdict.hard]
        if hard_ones:
            tally.notice_errors.append(f"{name}: {report.kind} with hard {hard_ones}")
    return tally


def measure() -> Measured:
    measured = Measured({}, {}, {}, Tally(), Counter(), Counter())
    families: dict[str, Tally] = defaultdict(Tally)
    halves: dict[str, Tally] = defaultdict(Tally)
    sides: dict[str, Tally] = {name: Tally() for name in SIDES}
    for name, entries in sorted(expected().items()):
        report = parse_report((CORPUS / "samples" / name).read_bytes())
        tally = _compare(name, report, entries, measured)
        families[family(name)].add(tally)
        halves[half(name)].add(tally)
        sides[side(name)].add(tally)
        measured.total.add(tally)
    measured.families = dict(families)
    measured.halves = dict(sorted(halves.items()))
    measured.sides = sides
    return measured


def _pct(value: float, whole: int) -> str:
    return f"{100 * value:5.1f}" if whole else "    -"


def _row(label: str, t: Tally) -> str:
    return (
        f"{label:24} {t.files:5d} {t.expected:5d} {_pct(t.ratio('found'), t.expected):>7} "
        f"{_pct(t.ratio('status'), t.status_n):>8} {t.status_n:5d} "
        f"{_pct(t.ratio('hard'), t.expected):>6} {_pct(t.ratio('class'), t.class_n):>7} "
        f"{t.class_n:5d} {_pct(t.ratio('notice'), t.notice_n):>8} {t.notice_n:5d}"
    )


def render(measured: Measured) -> str:
    """The agreement table: per family (``*`` marks the holdout side), per half, per side of the
    family split, in total; then the class confusion matrix."""
    head = (
        f"{'family':24} {'files':>5} {'rcpts':>5} {'found%':>7} {'status%':>8} {'(n)':>5} "
        f"{'hard%':>6} {'class%':>7} {'(n)':>5} {'notice%':>8} {'(n)':>5}"
    )
    lines = [head]
    lines += [
        _row(f"{name}{' *' if family_side(name) == 'holdout' else ''}", tally)
        for name, tally in sorted(measured.families.items())
    ]
    lines.append("-" * len(head))
    lines += [_row(f"half {name}", tally) for name, tally in measured.halves.items()]
    lines += [_row(name, tally) for name, tally in measured.sides.items()]
    lines.append(_row("TOTAL", measured.total))
    lines += ["", "class confusion (rows: Sisimai's reason as a class; columns: ours, - none)"]
    lines.append(f"{'':12}" + "".join(f"{c:>12}" for c in _CLASSES))
    for row in dict.fromkeys(c for c in _CLASSES if c in REASON_CLASS.values()):
        counts = [measured.confusion.get((row, column), 0) for column in _CLASSES]
        lines.append(f"{row:12}" + "".join(f"{n:12d}" for n in counts))
    left_out = ", ".join(f"{r} {n}" for r, n in measured.unclassed.most_common())
    lines += ["", f"left out of class agreement (Sisimai reason, recipients): {left_out}"]
    lines.append(
        "notice%: recipients of complaints (arf, with Sisimai's feedback type), auto-replies and "
        "delivery notices read as such and not hard"
    )
    return "\n".join(lines)


def figures(tally: Tally) -> str:
    """Hard and class agreement as counts and percentages, for notes and docs."""
    return (
        f"hard {tally.hard_ok}/{tally.expected} ({100 * tally.ratio('hard'):.1f}%), "
        f"class {tally.class_ok}/{tally.class_n} ({100 * tally.ratio('class'):.1f}%)"
    )


def main(argv: list[str]) -> None:
    """``python -m tests.bounce_corpus [develop|holdout|all]``: the figures of the family split
    and of the whole corpus, then the misses of the side named (none by default)."""
    measured = measure()
    shown = argv[0] if argv else None
    rows = [*measured.sides.items(), ("all", measured.total)]
    for name, tally in rows:
        if shown in (None, name):  # one side's figures alone, when one side is asked for
            print(f"{name:8} {tally.files:3d} files  {figures(tally)}")
    tallies = [measured.total] if shown == "all" else [measured.sides[shown]] if shown else []
    for tally in tallies:
        print("\n".join(["", "hard:", *tally.misses, "", "class:", *tally.class_misses]))
        print("\n".join(["", "notices:", *tally.notice_errors]))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
