"""Shared foundations: settings, the Redis access layer, embedded Redis, events, errors."""

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
