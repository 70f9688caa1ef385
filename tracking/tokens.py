"""Tracking tokens: what ``/t/o/``, ``/t/c/`` and ``/t/u/`` URLs carry.

A token is sealed, not just signed: ChaCha20-Poly1305 (AEAD) with a key from the
data dir encrypts the kind (open, click, unsubscribe), the day it was issued, the
message id and, for a click, the destination URL. So a token cannot be forged or
altered (the tag check fails, in constant time), the destination is not readable
in the link (nobody can mint a redirect to their own site: no open redirect), and
no per-link state is needed in Redis, so links work for as long as the token
lives (``max_age_days``), long after the message record expired.

Wire form, base64url without padding::

    version (1) | key id (1) | nonce (12) | ciphertext + tag (16)
    payload: kind (1) | issued day since 2020-01-01 (2) | id length (1) | message id | url

Keys live in ``<data dir>/tracking-keys`` (0600), one ``<id> <base64 key>`` per
line, the first the one that seals; ``rotate`` puts a new key first and keeps the
old ones, so links already sent keep working.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

VERSION = 1
EPOCH = 1577836800  # 2020-01-01T00:00:00Z
KINDS = {"open": b"o", "click": b"c", "unsubscribe": b"u"}
_KIND_OF = {v: k for k, v in KINDS.items()}
MAX_TOKEN_CHARS = 4096
KEY_FILE = "tracking-keys"


@dataclass(frozen=True)
class Opened:
    kind: str  # "open" | "click" | "unsubscribe"
    message_id: str
    url: str | None  # a click's destination; an unsubscribe's unsubscribe_payload
    issued_day: int


def unsubscribe_payload(email: str, category: str | None) -> str:
    """What an unsubscribe token seals besides the message: the address and category, so the
    link works long after the message record expired."""
    return f"{email}\n{category or ''}"


class TokenError(Exception):
    """Not a valid token (tampered, truncated, unknown key, expired): answer a plain 404."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if len(text) > MAX_TOKEN_CHARS or not text.isascii():
        raise TokenError("not a token")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("not a token") from exc
    if _b64(raw) != text:  # one token, one spelling: no variants in the unused low bits
        raise TokenError("not a token")
    return raw


def load_keys(data_dir: Path) -> list[tuple[int, bytes]]:
    """The data dir's tracking keys, the sealing one first; made on first use."""
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(f"1 {_b64(ChaCha20Poly1305.generate_key())}\n")
    keys = []
    for line in path.read_text().splitlines():
        if line.strip():
            key_id, key = line.split()[:2]
            keys.append((int(key_id), base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))))
    return keys


def rotate_key(data_dir: Path) -> int:
    """Put a new sealing key first; older keys still open the links already sent."""
    keys = load_keys(data_dir)
    new_id = max(k for k, _ in keys) % 255 + 1
    lines = [f"{new_id} {_b64(ChaCha20Poly1305.generate_key())}"]
    lines += [f"{k} {_b64(v)}" for k, v in keys if k != new_id][:7]
    path = data_dir / KEY_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return new_id


class Tokens:
    def __init__(self, keys: list[tuple[int, bytes]], *, max_age_days: int = 400) -> None:
        if not keys:
            raise ValueError("no tracking keys")
        self.sealing_id, sealing = keys[0]
        self._header = bytes([VERSION, self.sealing_id])
        self._sealing = ChaCha20Poly1305(sealing)
        self._by_id = {key_id: ChaCha20Poly1305(key) for key_id, key in keys}
        self.max_age_days = max_age_days

    @staticmethod
    def _today(now: float | None) -> int:
        return max(0, int(((time.time() if now is None else now) - EPOCH) // 86400))

    def seal(
        self, kind: str, message_id: str, url: str | None = None, *, now: float | None = None
    ) -> str:
        ident = message_id.encode("ascii")
        payload = (
            KINDS[kind]
            + self._today(now).to_bytes(2, "big")
            + len(ident).to_bytes(1, "big")
            + ident
            + (url.encode("utf-8") if url is not None else b"")
        )
        nonce = os.urandom(12)
        sealed = self._header + nonce + self._sealing.encrypt(nonce, payload, self._header)
        return _b64(sealed)

    def open(self, token: str, *, expect: str | None = None, now: float | None = None) -> Opened:
        raw = _unb64(token)
        if len(raw) < 2 + 12 + 16 + 4 or raw[0] != VERSION:
            raise TokenError("not a token")
        cipher = self._by_id.get(raw[1])
        if cipher is None:
            raise TokenError("unknown key")
        try:
            payload = cipher.decrypt(raw[2:14], raw[14:], raw[:2])
        except InvalidTag as exc:
            raise TokenError("forged or altered") from exc
        kind = _KIND_OF.get(payload[:1])
        day = int.from_bytes(payload[1:3], "big")
        size = payload[3]
        ident = payload[4 : 4 + size]
        if kind is None or len(ident) != size or (expect is not None and kind != expect):
            raise TokenError("not this kind of token")
        if self._today(now) - day > self.max_age_days:
            raise TokenError("expired")
        url = payload[4 + size :].decode("utf-8") if kind != "open" else None
        return Opened(kind, ident.decode("ascii"), url, day)
