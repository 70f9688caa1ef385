"""Signed Message-ID headers: ``<message id>.<signature>@<from domain>``.

A complaint (an ARF report from a provider's feedback loop) comes back to an ``fbl@`` address,
not to the VERP return path, and names the message only by the headers it quotes. Sluice's
message ids are guessable (``<batch id>-<index>``: one recipient of a batch knows the ids of the
others up to the index), so the Message-ID carries a signature: HMAC-SHA256 of the id with the
data dir's ``verp-key``, truncated to 16 base32 characters (80 bits). It is computed with a
context of its own (``message-id``), so it is neither the return path's nor the unsubscribe
address's signature and none of the three can stand in for another. Only someone who received
the message, or saw its headers, can name it.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from core.ids import MESSAGE_ID_PATTERN, base32_prefix, split_message_id
from core.settings import Secret

SIGNATURE_CHARS = 16  # base32: 80 bits
_CONTEXT = b"message-id\x00"
_SIGNED = re.compile("(" + MESSAGE_ID_PATTERN + r")\.([a-z2-7]{16})", re.IGNORECASE)


@dataclass(frozen=True)
class Claim:
    """What a quoted Message-ID names: Sluice's message id when its signature holds, else
    ``None`` and why not (``no Message-ID``, ``unsigned``, ``bad signature``, ``not ours``)."""

    message_id: str | None
    problem: str | None = None


class MessageIds:
    """Sign the Message-ID headers Sluice writes and check the ones reports quote."""

    def __init__(self, key: Secret) -> None:
        self._key = key.reveal().encode()

    def _sign(self, message_id: str) -> str:
        digest = hmac.digest(self._key, _CONTEXT + message_id.encode(), "sha256")
        return base32_prefix(digest[:10], 16)

    def header_value(self, message_id: str, domain: str) -> str:
        """``<id>.<signature>@<domain>``: the Message-ID without its angle brackets."""
        return f"{message_id}.{self._sign(message_id)}@{domain}"

    def check(self, header: str | None) -> Claim:
        """The message a Message-ID header (angle brackets or not) names, if Sluice signed it."""
        if not header or not header.strip():
            return Claim(None, "no Message-ID")
        local = header.strip().strip("<>").rpartition("@")[0]
        match = _SIGNED.fullmatch(local)
        if match is None:
            return Claim(None, "unsigned" if split_message_id(local.lower()) else "not ours")
        message_id, signature = match.group(1).lower(), match.group(2).lower()
        if split_message_id(message_id) is None:
            return Claim(None, "not ours")
        if not hmac.compare_digest(signature, self._sign(message_id)):
            return Claim(None, "bad signature")
        return Claim(message_id)
