"""Engagement tracking: the links in a message and the endpoints they lead to.

| module | holds |
|---|---|
| ``tokens`` | sealed tokens (ChaCha20-Poly1305): a click's URL, an unsubscribe's address, inside |
| ``links`` | rewriting a message's links and adding the open pixel, before DKIM signing |
| ``machines`` | telling machine opens and clicks (Apple's proxy, scanners) from people's |
| ``endpoints`` | ``/t/o`` (pixel), ``/t/c`` (redirect), ``/t/u`` (one-click unsubscribe) |
"""

from tracking.endpoints import Tracking
from tracking.tokens import TokenError, Tokens, load_keys

__all__ = ["TokenError", "Tokens", "Tracking", "load_keys"]
