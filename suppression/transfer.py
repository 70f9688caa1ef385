"""Suppression lists in and out as CSV, streaming: any length, never held whole.

Import reads a CSV whose header names an ``email`` column (and optionally
``reason``, ``category``, ``source``, as export writes them) or a plain list with
one address per line. Rows are normalized and checked one by one; an invalid row
is skipped and reported with its line number, valid rows are written in batches
of 5,000 (one atomic script call each).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from core import validate
from core.addresses import AddressError, normalize_address
from core.errors import ValidationError
from core.store import Store
from core.suppressions import MAX_SOURCE_CHARS, Suppression

BATCH = 5000
MAX_REPORTED = 10
EXPORT_HEADER = ["email", "category", "reason", "created_at", "source"]


@dataclass
class ImportReport:
    imported: int = 0
    new: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # the first MAX_REPORTED, "line N: why"


def rows(handle: TextIO) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV with an ``email`` header, or of one address per line."""
    first = handle.readline()
    header = [h.strip().lower() for h in next(csv.reader([first]))] if first.strip() else []
    if "email" in header:
        reader = csv.DictReader(handle, fieldnames=header)
        for number, row in enumerate(reader, start=2):
            yield number, {k: (v or "") for k, v in row.items() if k}
        return
    for cells in csv.reader(io.StringIO(first)) if first else iter(()):
        yield 1, {"email": cells[0] if cells else ""}
    for number, cells in enumerate(csv.reader(handle), start=2):
        yield number, {"email": cells[0] if cells else ""}


async def import_csv(
    store: Store, handle: TextIO, *, reason: str, category: str | None, source: str
) -> ImportReport:
    """Import every valid row; ``reason``, ``category``, ``source``: for rows without their own.
    Raises ``UnicodeDecodeError`` or ``csv.Error`` for a file that is not a UTF-8 CSV."""
    report = ImportReport()
    batch: list[tuple[str, str | None, str, str | None]] = []
    for number, row in rows(handle):
        raw = row.get("email", "").strip()
        if not raw:
            continue
        try:
            email = normalize_address(raw)
            why = validate.reason(row.get("reason") or reason)
            scope = row.get("category") or category
            if scope is not None:
                validate.category(scope)
        except (AddressError, ValidationError) as exc:
            report.skipped += 1
            if len(report.problems) < MAX_REPORTED:
                report.problems.append(f"line {number}: {getattr(exc, 'detail', exc)}")
            continue
        batch.append((email, scope, why, (row.get("source") or source)[:MAX_SOURCE_CHARS]))
        if len(batch) >= BATCH:
            report.new += await store.suppressions.add_many(batch)
            report.imported += len(batch)
            batch = []
    if batch:
        report.new += await store.suppressions.add_many(batch)
        report.imported += len(batch)
    return report


def export_row(entry: Suppression) -> list[str | int]:
    """One entry as a row under ``EXPORT_HEADER``."""
    return [entry.email, entry.category or "", entry.reason, int(entry.at), entry.source or ""]


async def export_rows(store: Store) -> AsyncIterator[list[str | int]]:
    """The export's rows: ``EXPORT_HEADER``, then one per entry (``export_row``)."""
    yield list(EXPORT_HEADER)
    async for entry in store.suppressions.all():
        yield export_row(entry)


async def export_csv(store: Store, handle: TextIO) -> int:
    """Write every entry (the header first); returns how many."""
    writer = csv.writer(handle, lineterminator="\n")
    count = -1  # the header is not an entry
    async for row in export_rows(store):
        writer.writerow(row)
        count += 1
    return count
