"""Logging set-up shared by the serving process and the workers.

Log lines name messages by their id, never people by their address: an INFO log
is kept, shipped and read far more widely than the data dir. ``address()`` gives
the form to log, a short hash (``a:3f9c0b1e22d4``, the same for the same address
in every process, so lines about one person still line up) unless
``SLUICE_LOG_ADDRESSES=true`` asks for the address itself while debugging. The
hash pseudonymizes, it does not anonymize: whoever has a candidate address can
compute its hash.
"""

from __future__ import annotations

import hashlib
import logging
import os

_show_addresses = False


def setup_logging(level: int = logging.INFO, *, addresses: bool = False) -> None:
    global _show_addresses
    _show_addresses = addresses
    # A worker writes a line per delivery attempt: what the format does not show is not
    # gathered (the caller's frame, thread, process and task names: ~2 us a line).
    logging._srcfile = None  # documented: no findCaller
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12+
    handler = logging.StreamHandler()
    handler.setFormatter(
        _SecondFormatter(f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler])


class _SecondFormatter(logging.Formatter):
    """``logging.Formatter``'s time, ``2026-11-28 18:44:03,123``, its date and time made once
    a second instead of once a line."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, super().formatTime(record)[:-4]
        return f"{self._stamp},{int(record.msecs):03d}"


def show_addresses(enabled: bool) -> None:
    """Log addresses in clear (``SLUICE_LOG_ADDRESSES``) or as hashes (the default)."""
    global _show_addresses
    _show_addresses = enabled


def address(email: str) -> str:
    """How a recipient's address appears in a log line."""
    if _show_addresses:
        return email
    return "a:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:12]
