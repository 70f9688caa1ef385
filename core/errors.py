"""Sluice's error tree.

    SluiceError
    ├── ClientError              bad input; the API answers 4xx ``{error, detail, field?}``
    │   ├── ValidationError      400: a field is missing, mistyped or hostile
    │   ├── PayloadTooLarge      413: the body is over the configured limit
    │   ├── UnsupportedMedia     415: the body is not JSON
    │   ├── Unauthorized         401: missing or wrong API key
    │   ├── NotFound             404
    │   ├── IdempotencyConflict  422: an Idempotency-Key reused with another body
    │   └── TemplateTooExpensive 422: a template over its render budget for any recipient
    ├── DeliveryError            an SMTP transaction did not end in 2xx
    │   ├── TransientDeliveryError   retry later (4xx, network trouble, timeouts)
    │   └── PermanentDeliveryError   bounce (5xx); may suppress the address
    └── ConfigurationError       wrong settings; raised at start with the name of what is wrong

Library and protocol exceptions (redis, SMTP, jinja2) are translated at the edge
with ``raise ... from exc``; nothing above the edge sees them.
"""

from __future__ import annotations


class SluiceError(Exception):
    """Root of every error Sluice raises on purpose."""


class ClientError(SluiceError):
    status = 400
    code = "bad_request"

    def __init__(self, detail: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        if code is not None:
            self.code = code

    def as_json(self) -> dict[str, str]:
        body = {"error": self.code, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        return body


class ValidationError(ClientError):
    status = 400
    code = "invalid_request"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class UnsupportedMedia(ClientError):
    status = 415
    code = "unsupported_media_type"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"


class Forbidden(ClientError):
    status = 403
    code = "forbidden"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class IdempotencyConflict(ClientError):
    status = 422
    code = "idempotency_conflict"


class TemplateTooExpensive(ClientError):
    """Well-formed, but rendering it would take more time or memory than any message needs
    (a template that is merely invalid is a ``ValidationError``, ``invalid_template``)."""

    status = 422
    code = "template_too_expensive"


class DeliveryError(SluiceError):
    """An SMTP transaction that did not end in a 2xx reply (or could not take place)."""

    def __init__(
        self,
        detail: str,
        *,
        smtp_code: int | None = None,
        host: str | None = None,
        bounce_class: str = "other",
        hard: bool = False,
        status: str | None = None,
        throttle: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.smtp_code = smtp_code
        self.host = host
        self.bounce_class = bounce_class  # bad-mailbox, bad-domain, quota, policy, spam, ...
        self.hard = hard  # the address is dead: suppress it
        self.status = status  # the RFC 3463 code of the reply ("5.1.1"), when known
        self.throttle = throttle  # the destination asks us to slow down
        self.retry_after = retry_after  # seconds before the destination takes mail again
        self.source_ip: str | None = None  # the sending IP of the attempt, once one was chosen


class TransientDeliveryError(DeliveryError):
    """Try again later."""


class WarmupDeferral(TransientDeliveryError):
    """No sending IP of the pool has warmup budget left now: wait ``retry_after`` exactly
    (not the retry schedule), then try again."""


class SenderPaused(TransientDeliveryError):
    """Every IP the message may leave from is paused at its provider (an alert, or a person):
    wait ``retry_after``, then look again."""


class PermanentDeliveryError(DeliveryError):
    """Do not try again: bounce."""


class ConfigurationError(SluiceError):
    """Settings that cannot work; raised at start, naming what is wrong."""
