"""DKIM signing benchmark: Sluice's signer on the fixture message beside raw ``cryptography``.

Run::

    .venv/bin/python -m loadtests.bench_dkim [--signatures N] [--rounds R] [--json]

One process, one core. Keys are made by ``KeyStore.generate`` (what ``sluice dkim
keygen`` runs) in a temp data dir. Messages are 100 distinct personalized builds
of the fixture cart reminder (``loadtests/fixtures/cart-reminder.json``, ~13 KB),
as the worker builds them, all made before the clock starts.

Rows, each the best of ``--rounds`` rounds of ``--signatures`` signatures, rounds
interleaved so that a noisy neighbour hurts every row alike:

- **raw cryptography RSA-2048**: ``private_key.sign(data, PKCS1v15, SHA256)`` over
  a 700-byte string (the size of the canonical signed header data): the RSA
  operation alone, the ceiling for any RSA-2048 signer on this machine.
- **Sluice RSA-2048**: ``mta.dkim.sign`` of a whole fixture message: parse,
  canonicalize headers and body, hash, sign, fold. **ratio** = this / raw.
- **Sluice Ed25519** and **Sluice RSA + Ed25519** (dual signing, one body hash).
- **dkimpy as shipped** (``dkim.sign``, its pure-Python RSA), fewer signatures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from loadtests.harness import fixture_message
from mta.dkim import SigningKey, sign
from mta.dkimkeys import KeyStore

# What the RSA operation signs for the fixture: the size of its canonical signed header data.
SIGNED_HEADER_BYTES = 700


def raw_rsa(key: rsa.RSAPrivateKey) -> Callable[[int], object]:
    """One raw RSA-2048 PKCS1v15/SHA-256 signature of header-sized data per call: the RSA
    operation alone, the ceiling for any RSA-2048 signer on this machine."""
    data = b"x" * SIGNED_HEADER_BYTES
    return lambda i: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def rate(work: Callable[[int], object], count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        work(i)
    return count / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signatures", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        store = KeyStore(Path(tmp))
        rsa_key = store.generate("shop.example.com", "s2026", "rsa", 2048)
        ed_key = store.generate("shop.example.com", "e2026", "ed25519")
        rsa_private, ed_private = rsa_key.load(), ed_key.load()
        rsa_pem = rsa_private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    assert isinstance(rsa_private, rsa.RSAPrivateKey)
    rsa_signing = SigningKey.of(rsa_key, rsa_private)
    ed_signing = SigningKey.of(ed_key, ed_private)
    messages = [fixture_message(i) for i in range(100)]
    n = args.signatures

    rows: dict[str, Callable[[int], object]] = {
        "raw cryptography RSA-2048": raw_rsa(rsa_private),
        "Sluice RSA-2048": lambda i: sign(messages[i % 100], [rsa_signing]),
        "Sluice Ed25519": lambda i: sign(messages[i % 100], [ed_signing]),
        "Sluice RSA-2048 + Ed25519": lambda i: sign(messages[i % 100], [rsa_signing, ed_signing]),
    }
    best: dict[str, float] = dict.fromkeys(rows, 0.0)
    for _ in range(args.rounds):
        for name, work in rows.items():
            best[name] = max(best[name], rate(work, n))
    shipped = rate(
        lambda i: dkim.sign(
            messages[i % 100],
            b"s2026",
            b"shop.example.com",
            rsa_pem,
            canonicalize=(b"relaxed", b"relaxed"),
        ),
        max(20, n // 40),
    )
    raw = best["raw cryptography RSA-2048"]
    result: dict[str, Any] = {
        "message_bytes": len(messages[0]),
        "per_second": {name: round(value) for name, value in best.items()},
        "dkimpy_as_shipped_per_second": round(shipped),
        "ratio_rsa_to_raw": round(best["Sluice RSA-2048"] / raw, 2),
        "ratio_dkimpy_shipped_to_raw": round(shipped / raw, 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'signer':<30} {'signatures/s':>12} {'ratio to raw':>12}")
    for name, value in best.items():
        print(f"{name:<30} {value:>12.0f} {value / raw:>12.2f}")
    print(f"{'dkimpy as shipped (RSA-2048)':<30} {shipped:>12.0f} {shipped / raw:>12.3f}")
    print(f"(fixture message {len(messages[0])} bytes; best of {args.rounds} rounds of {n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
