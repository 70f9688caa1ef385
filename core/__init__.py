"""Shared foundations every other package stands on.

| module | holds |
|---|---|
| ``settings``, ``options``, ``casts`` | the settings tree, each option declared once, its casts |
| ``store`` | the one Redis access layer (with the Lua scripts of ``core/lua/``) |
| ``keys`` | every Redis key name |
| ``jobs`` | the typed wire model: batch content, jobs, accept entries, policy input |
| ``events`` | event types and their wire form |
| ``suppressions`` | the suppression list's model and key layout |
| ``validate`` | one validator per domain input (names, reasons, sources, IPs) |
| ``errors`` | the error tree |
| ``embedded_redis``, ``datadir`` | the embedded Redis and the private data dir |
| ``metrics`` | Prometheus metrics, shared by the API and the workers (multiprocess) |
| ``ids``, ``addresses``, ``logs`` | batch and message ids, address normalization, logging |
| ``clock`` | the time of day as a parameter (``ManualClock`` for tests) |
"""

from core.errors import (
    ClientError,
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    SluiceError,
    TransientDeliveryError,
)
from core.settings import Secret, Settings, load_settings
from core.store import Store, open_store

__all__ = [
    "ClientError",
    "ConfigurationError",
    "DeliveryError",
    "PermanentDeliveryError",
    "Secret",
    "Settings",
    "SluiceError",
    "Store",
    "TransientDeliveryError",
    "load_settings",
    "open_store",
]
