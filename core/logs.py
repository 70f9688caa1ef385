"""Logging set-up shared by the serving process and the workers."""

from __future__ import annotations

import logging
import os


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s",
    )
