"""Engagement tracking: the links in a message and the endpoints they lead to.

| module | holds |
|---|---|
| ``tokens`` | sealed tokens (ChaCha20-Poly1305): one per message, an unsubscribe's address inside; link tokens (message token, index, MAC) |
| ``links`` | rewriting a message's links and adding the open pixel, before DKIM signing; ``MessageLinks``, a message's tracked URLs |
| ``machines`` | telling machine opens and clicks (Apple's proxy, scanners) from people's |
| ``endpoints`` | ``/t/o`` (pixel), ``/t/c`` (redirect), ``/t/u`` (one-click unsubscribe) |
"""

from tracking.endpoints import Tracking
from tracking.links import MessageLinks
from tracking.tokens import TokenError, Tokens, load_keys

__all__ = ["MessageLinks", "TokenError", "Tokens", "Tracking", "load_keys"]
