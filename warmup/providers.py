"""Which mailbox provider a recipient belongs to, by domain and, when routing by MX, MX host."""

from __future__ import annotations

_BY_DOMAIN = {
    "gmail": ("gmail.com", "googlemail.com"),
    "microsoft": (
        "outlook.com",
        "hotmail.com",
        "live.com",
        "msn.com",
        "hotmail.co.uk",
        "hotmail.fr",
        "hotmail.de",
        "hotmail.it",
        "hotmail.es",
        "live.co.uk",
        "outlook.de",
        "outlook.fr",
        "windowslive.com",
        "passport.com",
    ),
    "yahoo": (
        "yahoo.com",
        "ymail.com",
        "rocketmail.com",
        "aol.com",
        "yahoo.co.uk",
        "yahoo.fr",
        "yahoo.de",
        "yahoo.co.jp",
        "yahoo.com.br",
        "aim.com",
        "verizon.net",
        "att.net",
    ),
    "apple": ("icloud.com", "me.com", "mac.com"),
}
_BY_MX = {
    "gmail": ("google.com", "googlemail.com"),
    "microsoft": ("outlook.com", "hotmail.com", "protection.outlook.com"),
    "yahoo": ("yahoodns.net", "yahoo.com", "aol.com"),
    "apple": ("icloud.com", "me.com", "mail.icloud.com"),
}
_DOMAIN = {domain: group for group, domains in _BY_DOMAIN.items() for domain in domains}


def provider_of(domain: str, mx_host: str | None = None) -> str:
    """``gmail``, ``microsoft``, ``yahoo``, ``apple`` or ``other``."""
    found = _DOMAIN.get(domain.lower())
    if found is not None:
        return found
    if mx_host:
        host = mx_host.lower().rstrip(".")
        for group, suffixes in _BY_MX.items():
            if any(host == s or host.endswith("." + s) for s in suffixes):
                return group
    return "other"
