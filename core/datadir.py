"""The data dir: its lock (one ``sluice serve`` per dir) and the generated API key."""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path
from types import TracebackType

from core.errors import ConfigurationError
from core.settings import Secret


class DataDirLock:
    """An exclusive ``flock`` on ``<data dir>/sluice.lock``; the kernel drops it if we die."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "sluice.lock"
        self._fd: int | None = None

    def __enter__(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigurationError(
                f"data dir {self.path.parent} is in use by sluice serve (pid {holder}); "
                "stop it first or choose another --data-dir"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def load_or_create_secret(data_dir: Path, name: str, prefix: str = "") -> tuple[Secret, bool]:
    """A random secret kept in ``<data dir>/<name>`` (mode 0600); (secret, True) if just made."""
    path = data_dir / name
    if path.exists():
        return Secret(path.read_text().strip()), False
    data_dir.mkdir(parents=True, exist_ok=True)
    value = prefix + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return Secret(value), True


def load_or_create_api_key(data_dir: Path) -> tuple[Secret, bool]:
    """The API key kept in the data dir; (key, True) when it was just generated."""
    return load_or_create_secret(data_dir, "api-key", prefix="sk_")
