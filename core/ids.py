"""Identifiers: time-ordered batch ids, message ids derived from them.

A message id is ``<batch id>-<index>``, and ``<batch id>-<index>.<shard>`` when its recipient
lives in a shard other than 0 (``core.shards``): status lookups, events, tracking tokens,
bounce addresses and signed Message-IDs find the message's shard from its id alone."""

from __future__ import annotations

import base64
import os
import re
import time

_ALPHABET = str.maketrans("", "", "=")
# What other patterns embed (a VERP address, a signed Message-ID): a message id.
MESSAGE_ID_PATTERN = r"[a-z2-7]{26}-\d{1,4}(?:\.[1-9]\d{0,2})?"
_MESSAGE_ID = re.compile(r"([a-z2-7]{26})-(\d{1,4})(?:\.([1-9]\d{0,2}))?")


_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
_BASE32_PAIRS = [a + b for a in _BASE32 for b in _BASE32]  # by 10-bit value


def base32_prefix(data: bytes, chars: int) -> str:
    """The first ``chars`` (even, at most ``len(data) * 8 // 5``) characters of ``data`` in
    lowercase base32: ``base64.b32encode(data).decode().lower()[:chars]`` without its
    pure-Python loop, twice as fast (a delivery writes three such MACs)."""
    bits = chars * 5
    value = int.from_bytes(data, "big") >> (len(data) * 8 - bits)
    return "".join([_BASE32_PAIRS[(value >> at) & 1023] for at in range(bits - 10, -1, -10)])


def new_batch_id() -> str:
    """26 lowercase base32 characters: 48 bits of milliseconds, 80 random bits."""
    raw = int(time.time() * 1000).to_bytes(6, "big") + os.urandom(10)
    return base64.b32encode(raw).decode().translate(_ALPHABET).lower()


# A sandbox batch's id begins with "z" where a real one begins with "a": its first character
# is the top 5 bits of a 48-bit millisecond clock, "a" until 2248 and "z" only after the year
# 8900. Tracking links of a sandbox message record nothing (``tracking.endpoints``).
SANDBOX_MARK = "z"


def new_sandbox_batch_id() -> str:
    """A batch id no real batch has: the sandbox's (``gateway.sandbox``)."""
    return SANDBOX_MARK + new_batch_id()[1:]


def is_sandbox(message_id: str) -> bool:
    return message_id.startswith(SANDBOX_MARK)


def message_id(batch_id: str, index: int, shard: int = 0) -> str:
    return f"{batch_id}-{index}.{shard}" if shard else f"{batch_id}-{index}"


def split_message_id(message_id: str) -> tuple[str, int] | None:
    """The batch id and recipient index of a message id, or None if it is not one."""
    match = _MESSAGE_ID.fullmatch(message_id)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def shard_of(message_id: str) -> int | None:
    """The shard a message id names (0 without a suffix), or None if it is not one."""
    match = _MESSAGE_ID.fullmatch(message_id)
    if match is None:
        return None
    return int(match.group(3) or 0)
