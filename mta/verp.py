"""VERP return paths: ``bounce+<message id>.<signature>@<bounce domain>``.

The envelope sender of every message names the message, so a bounce that comes
back (to the inbound server) is tied to it without parsing the bounce for
Message-IDs. The signature (HMAC-SHA256 with the data dir's ``verp-key``,
truncated to 10 base32 characters = 50 bits) keeps anyone from forging bounces
that would suppress addresses: mail for an unsigned or badly signed token is
refused at RCPT time.
"""

from __future__ import annotations

import hmac
import re

from core.ids import MESSAGE_ID_PATTERN, base32_prefix, split_message_id
from core.settings import Secret

PREFIX = "bounce+"


class Verp:
    """``<prefix><message id>.<signature>@domain``; ``prefix`` ``bounce+`` for return paths,
    ``unsubscribe+`` for the mailto of List-Unsubscribe (signed apart: one cannot stand in
    for the other)."""

    def __init__(self, key: Secret, prefix: str = PREFIX) -> None:
        self._key = key.reveal().encode()
        self.prefix = prefix
        self._separator = b"" if prefix == PREFIX else prefix.encode()
        self._token = re.compile(
            re.escape(prefix) + "(" + MESSAGE_ID_PATTERN + r")\.([a-z2-7]{10})", re.IGNORECASE
        )

    def _sign(self, message_id: str) -> str:
        digest = hmac.digest(self._key, self._separator + message_id.encode(), "sha256")
        return base32_prefix(digest[:7], 10)

    def return_path(self, message_id: str, domain: str) -> str:
        return f"{self.prefix}{message_id}.{self._sign(message_id)}@{domain}"

    def message_id(self, address: str) -> str | None:
        """The message an address names, or None if it is not one of ours."""
        local = address.rpartition("@")[0]
        match = self._token.fullmatch(local)
        if match is None:
            return None
        message_id, signature = match.group(1).lower(), match.group(2).lower()
        if split_message_id(message_id) is None:
            return None
        if not hmac.compare_digest(signature, self._sign(message_id)):
            return None
        return message_id
