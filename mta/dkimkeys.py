"""DKIM keys in the data dir: generation, the active selector per algorithm, DNS records.

Layout, all private (directories 0700, files 0600)::

    <data dir>/dkim/keys.json                    the index (below)
    <data dir>/dkim/<domain>/<selector>.pem      PKCS#8 private key

The index maps each domain to its keys and to the active selector per algorithm:
``{"domains": {"shop.example.com": {"keys": {"s2026": {"algorithm": "rsa",
"bits": 2048, "created": 1795...}}, "active": {"rsa": "s2026"}}}}``. A selector
names one key (its DNS record says which algorithm), so it is unique within a
domain. Changes take an ``flock`` on ``dkim/.lock`` and replace the index
atomically, so ``sluice dkim`` commands can run beside ``sluice serve``;
workers notice the new index (``KeyRing``) within a second.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from core.addresses import AddressError, normalize_domain
from core.errors import ConfigurationError

Algorithm = Literal["rsa", "ed25519"]
ALGORITHMS: tuple[Algorithm, ...] = ("rsa", "ed25519")
MIN_RSA_BITS, MAX_RSA_BITS = 1024, 4096  # RFC 8301: at least 1024; 2048 recommended
_SELECTOR = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class DkimKeyError(ConfigurationError):
    """A DKIM key command cannot be carried out (bad name, duplicate, unknown key)."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: Algorithm
    bits: int
    created: float
    active: bool
    path: Path

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def load(self) -> PrivateKey:
        key = serialization.load_pem_private_key(self.path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise DkimKeyError(f"{self.path} is not an RSA or Ed25519 key")
        return key

    def txt_value(self) -> str:
        """The TXT record's value: ``v=DKIM1; k=...; p=<public key>``."""
        public = self.load().public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raw = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return f"v=DKIM1; k={self.algorithm}; p={base64.b64encode(raw).decode('ascii')}"

    def txt_strings(self) -> list[str]:
        """The value split into character-strings of at most 255 bytes (RFC 1035 3.3.14)."""
        value = self.txt_value()
        return [value[i : i + 255] for i in range(0, len(value), 255)]

    def zone_line(self) -> str:
        """The record as a zone-file line, ready to paste."""
        strings = " ".join(f'"{s}"' for s in self.txt_strings())
        return f"{self.record_name}. IN TXT ( {strings} )"


def check_domain(domain: str) -> str:
    try:
        return normalize_domain(domain)
    except AddressError as exc:
        raise DkimKeyError(f"--domain {domain!r}: {exc}") from exc


def check_selector(selector: str) -> str:
    lowered = selector.lower()
    if not _SELECTOR.fullmatch(lowered) or len(lowered) > 63:
        raise DkimKeyError(
            f"--selector {selector!r}: use letters, digits and hyphens (dots between labels), "
            "up to 63 characters, e.g. s2026"
        )
    return lowered


class KeyStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "dkim"
        self.index_path = self.root / "keys.json"

    # --- reading ------------------------------------------------------------------------

    def read_index(self) -> dict[str, Any]:
        try:
            index: dict[str, Any] = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {"domains": {}}
        except (OSError, ValueError) as exc:
            raise DkimKeyError(f"{self.index_path} cannot be read: {exc}") from exc
        return index

    def all_keys(self, index: dict[str, Any] | None = None) -> list[DkimKey]:
        index = self.read_index() if index is None else index
        out = []
        for domain, entry in sorted(index["domains"].items()):
            active = set(entry.get("active", {}).values())
            for selector, meta in sorted(entry["keys"].items()):
                out.append(
                    DkimKey(
                        domain=domain,
                        selector=selector,
                        algorithm=meta["algorithm"],
                        bits=int(meta["bits"]),
                        created=float(meta["created"]),
                        active=selector in active,
                        path=self.root / domain / f"{selector}.pem",
                    )
                )
        return out

    def key(self, domain: str, selector: str) -> DkimKey:
        domain, selector = check_domain(domain), check_selector(selector)
        for key in self.all_keys():
            if (key.domain, key.selector) == (domain, selector):
                return key
        raise DkimKeyError(f"no DKIM key {selector!r} for {domain}; see `sluice dkim list`")

    # --- changing -----------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            index = self.read_index()
            yield index
            tmp = self.index_path.with_suffix(".tmp")
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                json.dump(index, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.index_path)
        finally:
            os.close(fd)

    def generate(
        self, domain: str, selector: str, algorithm: str = "rsa", bits: int = 2048
    ) -> DkimKey:
        """Create a key, store it (0600) and make it the active one for its algorithm."""
        domain, selector = check_domain(domain), check_selector(selector)
        if algorithm not in ALGORITHMS:
            raise DkimKeyError(f"--algorithm must be rsa or ed25519, not {algorithm!r}")
        private: PrivateKey
        if algorithm == "rsa":
            if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
                raise DkimKeyError(
                    f"--bits must be between {MIN_RSA_BITS} and {MAX_RSA_BITS} (2048 recommended)"
                )
            private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        else:
            bits = 256
            private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with self._locked() as index:
            entry = index["domains"].setdefault(domain, {"keys": {}, "active": {}})
            if selector in entry["keys"]:
                raise DkimKeyError(
                    f"{domain} already has a key with selector {selector!r}; "
                    "choose a new selector (rotate by publishing the new one first)"
                )
            directory = self.root / domain
            directory.mkdir(mode=0o700, exist_ok=True)
            path = directory / f"{selector}.pem"
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(pem)
            entry["keys"][selector] = {"algorithm": algorithm, "bits": bits, "created": time.time()}
            entry["active"][algorithm] = selector
        return self.key(domain, selector)

    def activate(self, domain: str, selector: str) -> DkimKey:
        key = self.key(domain, selector)
        with self._locked() as index:
            index["domains"][key.domain]["active"][key.algorithm] = key.selector
        return self.key(domain, selector)

    def deactivate(self, domain: str, selector: str) -> DkimKey:
        key = self.key(domain, selector)
        with self._locked() as index:
            active = index["domains"][key.domain]["active"]
            if active.get(key.algorithm) == key.selector:
                del active[key.algorithm]
        return self.key(domain, selector)

    def active_keys(self) -> dict[str, list[tuple[DkimKey, PrivateKey]]]:
        """Every domain's active keys, parsed, RSA first."""
        out: dict[str, list[tuple[DkimKey, PrivateKey]]] = {}
        for key in self.all_keys():
            if key.active:
                out.setdefault(key.domain, []).append((key, key.load()))
        for keys in out.values():
            keys.sort(key=lambda pair: ALGORITHMS.index(pair[0].algorithm))
        return out

    def index_stamp(self) -> tuple[int, int]:
        """Changes whenever the index is replaced."""
        try:
            stat = self.index_path.stat()
        except FileNotFoundError:
            return (0, 0)
        return (stat.st_ino, stat.st_mtime_ns)
