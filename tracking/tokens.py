"""Tracking tokens: what ``/t/o/``, ``/t/c/`` and ``/t/u/`` URLs carry.

A token is sealed, not just signed: ChaCha20-Poly1305 (AEAD) with a key from the
data dir encrypts the kind, the day it was issued, the message id and, for an old
click token, the destination URL. So a token cannot be forged or altered (the tag
check fails, in constant time), nothing in it is readable, and no per-link state
is needed in Redis.

Wire form, base64url without padding::

    version (1) | key id (1) | nonce (12) | ciphertext + tag (16)
    payload: kind (1) | issued day since 2020-01-01 (2) | id length (1) | message id | url

Kinds: ``m`` message (one per message: the open pixel, and what its links name),
``u`` unsubscribe (the address and category inside), and the older ``o`` open and
``c`` click (the URL inside, one seal per link), which still open exactly as before.

A message's links do not each carry a sealed URL any more: sealing costs ~4 us per
link (17 in the fixture, 4.6% of a delivery worker's CPU) and the URL made every
link long. A link is the message token, the index of its URL in the batch's link
table and a MAC of both::

    <message token>.<index>.<mac>    mac: keyed BLAKE2b-72 of "<message token>.<index>"

The MAC key is derived (HKDF-SHA256) from the key that sealed the message token,
so rotation keeps working as for sealed tokens. Nobody can mint a link: the message
token is sealed, and the MAC binds it to the index, so neither another index nor
another message's token passes (compared in constant time). The index is canonical
decimal, at most six digits; ``.`` never occurs in base64url, so the form is
unambiguous. A link costs one keyed BLAKE2b, a single C call: 1.4 us per link with
the formatting, against 3.3 us for a sealed click token (``loadtests/bench_links.py``);
one-shot HMAC-SHA256 alone took 1.9 us here (two more compressions per call).

The link table (the batch's URLs, in order) is per batch, not per link or per
message, kept in Redis (``core.store``) for as long as the batch's tokens live, so
a click still redirects to exactly its URL with no destination in the link (no open
redirect). A link whose URL is not in the table (one built from recipient data)
gets a sealed click token as before.

Keys live in ``<data dir>/tracking-keys`` (0600), one ``<id> <base64 key>`` per
line, the first the one that seals; ``rotate`` puts a new key first and keeps the
old ones, so links already sent keep working.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
EPOCH = 1577836800  # 2020-01-01T00:00:00Z
KINDS = {"message": b"m", "open": b"o", "click": b"c", "unsubscribe": b"u"}
_KIND_OF = {v: k for k, v in KINDS.items()}
MAX_TOKEN_CHARS = 4096
KEY_FILE = "tracking-keys"
LINK_MAC_BYTES = 9  # 72 bits: each guess is a request to the endpoint
_LINK_MAC_CHARS = 12  # base64url of 9 bytes, no padding (so MACs encode side by side)
MAX_LINK_INDEX_DIGITS = 6
_LINK_KEY_INFO = b"sluice tracking link mac v1"


@dataclass(frozen=True)
class Opened:
    kind: str  # "message" | "open" | "click" | "unsubscribe"
    message_id: str
    url: str | None  # an old click's destination; an unsubscribe's unsubscribe_payload
    issued_day: int


def unsubscribe_payload(email: str, category: str | None) -> str:
    """What an unsubscribe token seals besides the message: the address and category, so the
    link works long after the message record expired."""
    return f"{email}\n{category or ''}"


class TokenError(Exception):
    """Not a valid token (tampered, truncated, unknown key, expired): answer a plain 404."""


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    """base64url without padding (``base64.urlsafe_b64encode``'s alphabet, one C call less)."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


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


def _link_key(key: bytes) -> bytes:
    """The MAC key of links under a message token sealed with ``key``."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=_LINK_KEY_INFO).derive(key)


def _prefixes(key_id: int) -> list[str]:
    """The first three characters of every token sealed with ``key_id``: they encode the
    version, the key id and the top two bits of the nonce, so four of them."""
    return [_b64(bytes([VERSION, key_id, top << 6]))[:3] for top in range(4)]


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
        # link MAC key by a token's first three characters: no decoding per link
        self._link_macs = {  # keyed once: a link copies the state instead of keying BLAKE2b
            prefix: hashlib.blake2b(key=_link_key(key), digest_size=LINK_MAC_BYTES)
            for key_id, key in keys
            for prefix in _prefixes(key_id)
        }
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
        url = payload[4 + size :].decode("utf-8") if kind in ("click", "unsubscribe") else None
        return Opened(kind, ident.decode("ascii"), url, day)

    def seal_message(self, message_id: str, *, now: float | None = None) -> str:
        """The one sealed token of a message: its open pixel, and what its links name."""
        return self.seal("message", message_id, now=now)

    def link(self, message_token: str, index: int) -> str:
        """The ``/t/c/`` path segment of link ``index`` of the batch's link table, for the
        message of ``message_token`` (a token ``seal_message`` made)."""
        return self.links(message_token, [index])[0]

    def links(self, message_token: str, indexes: list[int]) -> list[str]:
        """``link`` of each index, for one message: a MAC each, one base64 for all (a MAC
        is a whole number of base64 groups)."""
        keyed = self._link_macs.get(message_token[:3])
        if keyed is None or min(indexes, default=0) < 0:
            raise ValueError("not a message token of these keys, or a negative index")
        heads = [f"{message_token}.{index}" for index in indexes]
        macs = []
        for head in heads:
            mac = keyed.copy()
            mac.update(head.encode("ascii"))
            macs.append(mac.digest())
        text = _b64(b"".join(macs))
        width = _LINK_MAC_CHARS
        return [f"{head}.{text[i * width : (i + 1) * width]}" for i, head in enumerate(heads)]

    def _link_mac(self, head: str) -> bytes | None:
        """The MAC of ``<message token>.<index>`` under the key that sealed the token (by
        its first three characters); None for a token of no known key."""
        keyed = self._link_macs.get(head[:3])
        if keyed is None:
            return None
        mac = keyed.copy()
        mac.update(head.encode("ascii"))
        return mac.digest()

    def open_link(self, token: str, *, now: float | None = None) -> tuple[Opened, int]:
        """The message and the link index of a ``link`` token; ``TokenError`` for anything
        else. Whether the index is in the batch's table is the caller's check."""
        message_token, _, rest = token.partition(".")
        index, _, mac_text = rest.partition(".")
        if (
            not message_token.isascii()
            or not 0 < len(index) <= MAX_LINK_INDEX_DIGITS
            or not (index.isascii() and index.isdigit())
            or (index[0] == "0" and index != "0")  # one index, one spelling
            or len(mac_text) != _LINK_MAC_CHARS
        ):
            raise TokenError("not a link token")
        expected = self._link_mac(f"{message_token}.{index}")
        if expected is None:
            raise TokenError("unknown key")
        if not hmac.compare_digest(_unb64(mac_text), expected):
            raise TokenError("forged or altered")
        return self.open(message_token, expect="message", now=now), int(index)
