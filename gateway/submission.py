"""SMTP submission (``--submission HOST:PORT``): tools with a "custom SMTP" setting send through Sluice.

aiosmtpd with STARTTLS (the certificate from ``SLUICE_SUBMISSION_CERT`` and
``SLUICE_SUBMISSION_KEY``, else one generated into the data dir), AUTH PLAIN and
LOGIN only after STARTTLS, with any user name and the API key as the password.
Nothing is relayed without authentication (530). A suppressed recipient is
refused at RCPT time (550 5.7.1), as is one already at a ``*`` frequency cap. Bare CR or LF in the data is refused (RFC 5321
2.3.8; the SMTP smuggling defence). The message becomes a Sluice send request:
its From, Reply-To, Subject and text/html parts, one recipient per RCPT TO, and
``X-Sluice-Category``, ``X-Sluice-Campaign``, ``X-Sluice-Stream`` (marketing by default) and
``X-Sluice-Metadata`` (a JSON object) headers, which are not delivered. It then
takes the API's path (contact policy, queue, DKIM, tracking) and 250 means what
202 means: durable. Attachments and other MIME parts are refused (554 5.6.1).
"""

from __future__ import annotations

import asyncio
import datetime
import email.policy
import hmac
import json
import logging
import re
import ssl
import time
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from core.addresses import AddressError, normalize_address
from core.errors import ClientError, ValidationError
from core.settings import HostPort, Secret, Settings
from core.store import ReplicasBehind, StoreError
from gateway.intake import Intake
from suppression.caps import contact_key
from suppression.policy import load_policy

log = logging.getLogger(__name__)
_AIOSMTPD = logging.getLogger("mail.log")
_AIOSMTPD.setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
# ... and warns on every successful AUTH about an attribute it sets itself (aiosmtpd 1.4)
_AIOSMTPD.addFilter(lambda record: "login_data is deprecated" not in record.getMessage())

MAX_MESSAGE_BYTES = 10 * 1024 * 1024
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def tls_context(settings: Settings, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """The configured certificate, else a self-signed one kept in the data dir."""
    if cert is None or key is None:
        cert, key = (
            settings.data_dir / "submission-cert.pem",
            settings.data_dir / "submission-key.pem",
        )
        if not cert.exists() or not key.exists():
            _self_signed(cert, key, settings.delivery.ehlo_name)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _self_signed(cert: Path, key: Path, name: str) -> None:
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.parent.mkdir(parents=True, exist_ok=True)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _raw(text: str) -> str:
    """Submitted content is final text, not a template."""
    if "endraw" in text:
        raise ValidationError("the message contains the text 'endraw', which Sluice cannot carry")
    return "{% raw %}" + text + "{% endraw %}"


def to_request(message: EmailMessage, recipients: list[str]) -> dict[str, Any]:
    """A ``/v1/messages`` body for a submitted message."""
    sender = message.get("From")
    if sender is None or not sender.addresses:
        raise ValidationError("the message has no From header")
    frm = sender.addresses[0]
    body: dict[str, Any] = {
        "from": {
            "email": frm.addr_spec,
            **({"name": frm.display_name} if frm.display_name else {}),
        },
        "subject": _raw(str(message.get("Subject", ""))),
        "stream": str(message.get("X-Sluice-Stream", "marketing")).strip(),
        "recipients": [{"email": r} for r in recipients],
        "tracking": {"opens": True, "clicks": True},
    }
    if message.get("X-Sluice-Category"):
        body["category"] = str(message["X-Sluice-Category"]).strip()
    if message.get("X-Sluice-Campaign"):
        body["campaign"] = str(message["X-Sluice-Campaign"]).strip()
    if message.get("X-Sluice-Metadata"):
        try:
            body["metadata"] = json.loads(str(message["X-Sluice-Metadata"]))
        except ValueError as exc:
            raise ValidationError("X-Sluice-Metadata must be a JSON object") from exc
    reply_to = message.get("Reply-To")
    if reply_to is not None and reply_to.addresses:
        body["reply_to"] = {"email": reply_to.addresses[0].addr_spec}
    for part in message.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        if kind not in ("text/plain", "text/html") or part.get_filename():
            raise ValidationError(f"{kind} parts (attachments) are not supported")
        key = "text" if kind == "text/plain" else "html"
        if key in body:
            raise ValidationError(f"more than one {kind} part")
        body[key] = _raw(part.get_content())
    if "text" not in body and "html" not in body:
        raise ValidationError("the message has no text/plain or text/html part")
    return body


class SubmissionHandler:
    def __init__(self, intake: Intake, api_key: Secret) -> None:
        self.intake = intake
        self.store = intake.store
        self.api_key = api_key.reveal().encode()

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and hmac.compare_digest(data.password, self.api_key)
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 235 or 535

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        try:
            normalized = normalize_address(address)
        except AddressError as exc:
            return f"553 5.1.3 {address[:100]} is not a valid address: {exc}"
        if len(envelope.rcpt_tos) >= 1000:
            return "452 4.5.3 at most 1000 recipients per message"
        found = await self.store.suppressions.check(normalized, None)
        if found is not None and found.reason != "unsubscribe":
            return f"550 5.7.1 {normalized} is suppressed ({found.reason})"
        if found is not None:
            return f"550 5.7.1 {normalized} unsubscribed"
        capped = await self._capped(normalized)
        if capped:
            return f"550 5.7.1 {normalized} is capped: {capped}"
        envelope.rcpt_tos.append(normalized)
        return "250 2.1.5 OK"

    async def _capped(self, address: str) -> str | None:
        """An early answer for a contact already at a ``*`` drop cap (the category is not known
        before DATA; the accept script makes the binding decision then, for every rule)."""
        policy = load_policy(await self.store.policy())
        now = time.time()
        contact = contact_key(None, address)
        rules = [r for r in policy.rules_for("marketing", None) if r.action == "drop"]
        counts = await self.store.capped_many(
            [(rule.key, contact, address, rule.window_seconds) for rule in rules], now
        )
        for rule, counted in zip(rules, counts, strict=True):
            if counted >= rule.limit:
                return f"at most {rule.limit} messages per {rule.window_seconds} seconds"
        return None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = bytes(envelope.original_content or b"")
        if _BARE.search(raw):
            return "550 5.6.0 bare CR or LF in the message (RFC 5321 2.3.8); send CRLF line ends"
        try:
            message = await self.intake.off_loop(
                lambda: BytesParser(policy=email.policy.default).parsebytes(raw)
            )
            body = to_request(message, list(envelope.rcpt_tos))
            submitted = await self.intake.submit(body, reject_if="all")
        except ClientError as exc:  # invalid, no recipient renders, or a template too expensive
            return f"554 5.6.1 {exc.detail}"[:500].replace("\r", " ").replace("\n", " ")
        except (ValueError, LookupError) as exc:  # a header the parser cannot read
            return f"554 5.6.0 the message cannot be read: {exc}"[:300]
        except ReplicasBehind as exc:
            # Queued on the primary, not yet on the replicas. A 451 would make the client
            # send it again, and SMTP has no idempotency key: the mail would go out twice.
            log.warning("submission: %s; answered 250", exc)
            return f"250 2.0.0 queued as {exc.batch_id} (not yet confirmed by Redis replicas)"
        except StoreError:
            return "451 4.3.0 the queue is unavailable; try again"
        fates = json.loads(submitted.response)["results"]
        queued = sum(r["status"] in ("queued", "scheduled") for r in fates)
        log.info("submission batch %s: %s", submitted.batch_id, submitted.counts)
        return f"250 2.0.0 queued as {submitted.batch_id} ({queued} of {len(fates)} recipients)"


async def start_submission(
    intake: Intake,
    settings: Settings,
    api_key: Secret,
    listen: HostPort,
    context: ssl.SSLContext,
    *,
    insecure_loopback: bool = False,
) -> asyncio.Server:
    handler = SubmissionHandler(intake, api_key)
    loopback = listen.host in ("127.0.0.1", "::1", "localhost")
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(
            handler,
            hostname=settings.delivery.ehlo_name,
            decode_data=False,
            data_size_limit=MAX_MESSAGE_BYTES,
            tls_context=context,
            require_starttls=False,
            auth_required=True,
            auth_require_tls=not (insecure_loopback and loopback),
            authenticator=handler.authenticate,
            timeout=120,
        ),
        listen.host,
        listen.port,
    )
    log.info("SMTP submission on %s (STARTTLS, AUTH with the API key)", listen)
    return server
