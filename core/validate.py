"""One validator per domain input, shared by the API, the CLI, ``sluice.toml`` and the ingresses.

Each takes the raw value and the name of the field it came from (``category``,
``--category``, ``recipients[3].data``...) and returns the clean value or raises
``ValidationError`` naming that field, so every entry point refuses the same
things with the same words.

| input | rule |
|---|---|
| category, pool, tag-like names | 1-64 of letters, digits, ``_ . : -``; starts with a letter or digit |
| suppression reason | ``unsubscribe``, ``hard_bounce``, ``complaint``, ``manual``, ``soft_bounce_limit`` |
| suppression source | 1-48 printable ASCII characters (it is kept in a small Redis hash) |
| sending IP | an IPv4 or IPv6 address, returned in its canonical form |
"""

from __future__ import annotations

import ipaddress
import re

from core.errors import ValidationError
from core.suppressions import MAX_SOURCE_CHARS, REASONS

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
NAME_RULE = "1-64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit"
_SOURCE = re.compile(rf"[\x20-\x7e]{{1,{MAX_SOURCE_CHARS}}}")


def name(value: object, field: str) -> str:
    """A category, an IP pool or any other name Sluice keys data by."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ValidationError(f"'{field}' must be {NAME_RULE}", field=field)
    return value


def category(value: object, field: str = "category") -> str:
    return name(value, field)


def campaign(value: object, field: str = "campaign") -> str:
    return name(value, field)


def pool(value: object, field: str = "pool") -> str:
    return name(value, field)


def reason(value: object, field: str = "reason") -> str:
    """Why an address is suppressed."""
    if not isinstance(value, str) or value not in REASONS:
        shown = repr(value[:20]) if isinstance(value, str) else type(value).__name__
        raise ValidationError(
            f"unknown reason {shown}: '{field}' must be one of {', '.join(REASONS)}", field=field
        )
    return value


def source(value: object, field: str = "source") -> str:
    """Where a suppression comes from (``api``, ``cli``, ``import``, a tool's name...)."""
    if not isinstance(value, str) or not _SOURCE.fullmatch(value):
        raise ValidationError(
            f"'{field}' must be 1-{MAX_SOURCE_CHARS} printable ASCII characters", field=field
        )
    return value


def ip(value: object, field: str = "ip") -> str:
    """A sending IP address, in its canonical form (``2001:DB8::1`` -> ``2001:db8::1``)."""
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError as exc:
        shown = value[:64] if isinstance(value, str) else type(value).__name__
        raise ValidationError(f"{shown!r} is not an IP address", field=field) from exc
