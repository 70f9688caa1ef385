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
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s",
    )


def show_addresses(enabled: bool) -> None:
    """Log addresses in clear (``SLUICE_LOG_ADDRESSES``) or as hashes (the default)."""
    global _show_addresses
    _show_addresses = enabled


def address(email: str) -> str:
    """How a recipient's address appears in a log line."""
    if _show_addresses:
        return email
    return "a:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:12]
