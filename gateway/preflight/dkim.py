"""DKIM checks (``dkim.*``), per selector: the record is published and well formed, its key
is usable (RSA of 2048 bits or more, or Ed25519; not revoked), it is not in test mode
(``t=y``), and it is the public half of the key Sluice signs with.

That last check signs a probe message with Sluice's own private key and verifies it with
dkimpy against the published record, asked through the same resolver: an independent
verifier agreeing is the proof, not a comparison of key bytes. Without ``--selector``
the selectors are those of Sluice's active keys for the domain.
"""

from __future__ import annotations

import base64

import dkim
from cryptography.hazmat.primitives.serialization import load_der_public_key

from gateway.preflight.model import Check, Dns, record_tags
from mta.dkim import SigningKey, sign
from mta.dkimkeys import DkimKey, KeyStore


def dkim_checks(resolver: Dns, domain: str, selectors: list[str], store: KeyStore) -> list[Check]:
    held = {(k.domain, k.selector): k for k in store.all_keys()}
    if not selectors:
        selectors = [k.selector for k in store.all_keys() if k.domain == domain and k.active]
    if not selectors:
        return [
            Check(
                "dkim.key",
                "fail",
                f"no DKIM selector to check for {domain}",
                "Sluice holds no active key for it and no --selector was given",
                f"sluice dkim keygen --domain {domain} --selector s1, publish the record",
            )
        ]
    checks = []
    for selector in selectors:
        checks += _selector_checks(resolver, domain, selector, held.get((domain, selector)))
    return checks


def _selector_checks(resolver: Dns, domain: str, selector: str, key: DkimKey | None) -> list[Check]:
    name = f"{selector}._domainkey.{domain}"
    records = [t for t in resolver.txt(name) if "p=" in t]
    if not records:
        return [
            Check(
                f"dkim.record:{selector}",
                "fail",
                f"no DKIM record at {name}",
                "",
                f"publish it: sluice dkim record --domain {domain} --selector {selector}",
            )
        ]
    tags = record_tags(records[0])
    if tags.get("v", "DKIM1") != "DKIM1" or len(records) > 1:
        return [
            Check(
                f"dkim.record:{selector}",
                "fail",
                "malformed DKIM record",
                records[0][:200],
                "publish exactly one v=DKIM1 record",
            )
        ]
    checks = [Check(f"dkim.record:{selector}", "pass", f"record at {name}")]
    if not tags.get("p"):
        checks.append(
            Check(
                f"dkim.key:{selector}",
                "fail",
                "the key is revoked (empty p=)",
                "",
                "publish the current key or use another selector",
            )
        )
        return checks
    key_check, readable = _key_check(selector, tags)
    checks.append(key_check)
    if not readable:
        return checks
    if "y" in tags.get("t", "").split(":"):
        checks.append(
            Check(
                f"dkim.testing:{selector}",
                "warn",
                "t=y: receivers may ignore failures",
                "",
                "remove t=y once signatures verify",
            )
        )
    if key is None:
        checks.append(
            Check(
                f"dkim.matches_private_key:{selector}",
                "warn",
                "Sluice holds no private key for this selector",
                "",
                "sign with a selector Sluice holds (sluice dkim list)",
            )
        )
        return checks
    checks.append(_matches_private_key(resolver, domain, selector, key))
    return checks


def _key_check(selector: str, tags: dict[str, str]) -> tuple[Check, bool]:
    """``dkim.key``: the published key's type and strength; and whether it could be read at
    all (if not, the checks that need the key are skipped)."""
    try:
        raw = base64.b64decode(tags["p"])
    except ValueError:
        unread = Check(
            f"dkim.key:{selector}", "fail", "p= is not base64", "", "republish the record"
        )
        return unread, False
    if tags.get("k", "rsa") == "ed25519":
        ed25519 = Check(
            f"dkim.key:{selector}",
            "pass" if len(raw) == 32 else "fail",
            "Ed25519 key" if len(raw) == 32 else "bad Ed25519 key",
        )
        return ed25519, True
    try:
        bits = load_der_public_key(raw).key_size  # type: ignore[union-attr]
    except (ValueError, AttributeError):
        unread = Check(
            f"dkim.key:{selector}",
            "fail",
            "p= is not an RSA public key",
            "",
            "republish the record",
        )
        return unread, False
    status = "pass" if bits >= 2048 else "warn" if bits >= 1024 else "fail"
    rsa = Check(
        f"dkim.key:{selector}",
        status,
        f"RSA-{bits}",
        "",
        "" if status == "pass" else "rotate to a 2048-bit key",
    )
    return rsa, True


def _matches_private_key(resolver: Dns, domain: str, selector: str, key: DkimKey) -> Check:
    """``dkim.matches_private_key``: a probe signed with Sluice's key verifies (dkimpy)."""
    probe = (
        f"From: preflight@{domain}\r\nTo: probe@{domain}\r\nSubject: preflight\r\n"
        "Date: Mon, 23 Nov 2026 00:00:00 +0000\r\nMessage-ID: <p@x>\r\n\r\nprobe\r\n"
    ).encode()
    signed = sign(probe, [SigningKey.of(key, key.load())])
    try:
        good = bool(dkim.DKIM(signed).verify(dnsfunc=resolver.dkim_txt))
    except dkim.DKIMException:
        good = False
    return Check(
        f"dkim.matches_private_key:{selector}",
        "pass" if good else "fail",
        "a probe signed with Sluice's key verifies against the record"
        if good
        else "the published key is not Sluice's key for this selector",
        "",
        "" if good else f"publish: sluice dkim record --domain {domain} --selector {selector}",
    )
