"""Email address checks shared by the API, the MTA and the suppression list.

A deliberately strict subset of RFC 5321 mailboxes: an ASCII dot-atom local part
(quoted local parts and SMTPUTF8 local parts are refused: they are rare in
marketing lists and a classic smuggling vector), a host name domain (IDNs are
converted to A-labels), no IP literals.
"""

from __future__ import annotations

import functools
import re

_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


class AddressError(ValueError):
    """The text is not an address Sluice will send to; the message says why."""


def normalize_address(text: str) -> str:
    """Return ``local@domain`` with the domain lowercased (and IDNA-encoded), or raise."""
    if not text:
        raise AddressError("the address is empty")
    if len(text) > 254:
        raise AddressError("the address is longer than 254 characters")
    if _SPACE_OR_CONTROL.search(text):
        raise AddressError("the address contains white space or control characters")
    local, at, domain = text.rpartition("@")
    if not at or not local:
        raise AddressError("the address has no local part and domain (expected name@domain)")
    if len(local) > 64:
        raise AddressError("the local part is longer than 64 characters")
    if not _LOCAL.fullmatch(local):
        raise AddressError("the local part has characters that are not allowed")
    return f"{local}@{normalize_domain(domain)}"


@functools.lru_cache(maxsize=4096)
def normalize_domain(domain: str) -> str:
    if domain.startswith("["):
        raise AddressError("address literals ([IP]) are not accepted")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise AddressError("the domain is not a valid internationalized name") from exc
    domain = (
        domain.lower().rstrip(".") if domain.endswith(".") and domain != "." else domain.lower()
    )
    if len(domain) > 253:
        raise AddressError("the domain is longer than 253 characters")
    labels = domain.split(".")
    if len(labels) < 2:
        raise AddressError("the domain must have at least two labels (e.g. example.com)")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError("the domain has an empty label or characters that are not allowed")
    if labels[-1].isdigit():
        raise AddressError("the domain's last label is numeric")
    return domain


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]
