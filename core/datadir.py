"""The data dir: private modes, its lock (one ``sluice serve`` per dir), generated secrets.

Everything in the data dir is Sluice's alone: the AOF holds every address,
template and data field, and the key files sign and seal what Sluice sends. The
dir and its subdirectories are 0700, files 0600. A data dir made by an earlier
version (or under a loose umask) is tightened at start, with a warning that says
how many entries changed; one owned by another user is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import stat
from pathlib import Path
from types import TracebackType

from core.errors import ConfigurationError
from core.settings import Secret

log = logging.getLogger(__name__)

_LOOSE = stat.S_IRWXG | stat.S_IRWXO


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can enter: made 0700 if missing (its missing
    parents too), tightened to 0700 if looser; refused if another user owns it."""
    made = not path.exists()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise ConfigurationError(
            f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.getuid()}); "
            "run Sluice as its owner or choose another --data-dir"
        )
    if info.st_mode & _LOOSE:
        os.chmod(path, 0o700)
        if not made:
            log.warning("%s was readable by other users; made it 0700", path)
    return path


def secure_data_dir(data_dir: Path) -> None:
    """Make the data dir private (0700) and take group and other permissions off everything
    in it (an AOF or log written under umask 022 by an earlier version is 0644)."""
    private_dir(data_dir)
    tightened = 0
    for root, dirs, files in os.walk(data_dir):
        for name in (*dirs, *files):
            entry = Path(root, name)
            info = entry.lstat()
            if stat.S_ISLNK(info.st_mode) or stat.S_ISSOCK(info.st_mode):
                continue  # a socket's mode is Redis's (unixsocketperm); links have none
            if info.st_mode & _LOOSE:
                try:
                    os.chmod(entry, stat.S_IMODE(info.st_mode) & ~_LOOSE)
                except OSError as exc:
                    raise ConfigurationError(
                        f"{entry} is readable by other users and cannot be made private: {exc}"
                    ) from exc
                tightened += 1
    if tightened:
        log.warning(
            "took group and other permissions off %d entries of %s (Sluice keeps it 0700/0600)",
            tightened,
            data_dir,
        )


class DataDirLock:
    """An exclusive ``flock`` on ``<data dir>/sluice.lock``; the kernel drops it if we die."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "sluice.lock"
        self._fd: int | None = None

    def __enter__(self) -> DataDirLock:
        secure_data_dir(self.path.parent)
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
    private_dir(data_dir)
    value = prefix + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return Secret(value), True


def node_id(data_dir: Path) -> str:
    """This node's name among the nodes sharing a Redis, kept in ``<data dir>/node-id``:
    its delivery workers are ``<node id>-w0``, ``-w1``... in the consumer group, so two
    nodes never read each other's unacknowledged jobs as their own, and a restarted node
    takes back its own at once. A data dir copied to make another node must leave this
    file behind. Written whole or not at all (a temp file linked into place), so a crash
    never leaves an empty id that nodes would share."""
    path = data_dir / "node-id"
    with contextlib.suppress(FileNotFoundError):
        found = path.read_text().strip()
        if found:
            return found
        path.unlink()  # empty: made by a version that could crash mid-write
    private_dir(data_dir)
    value = secrets.token_hex(4)
    temp = data_dir / f".node-id.{os.getpid()}"
    temp.write_text(value + "\n")
    try:
        os.link(temp, path)  # fails if another process of this node was first
    except FileExistsError:
        value = path.read_text().strip()
    finally:
        temp.unlink()
    return value


def load_or_create_api_key(data_dir: Path) -> tuple[Secret, bool]:
    """The API key kept in the data dir; (key, True) when it was just generated."""
    return load_or_create_secret(data_dir, "api-key", prefix="sk_")
