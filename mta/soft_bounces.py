"""Which messages end *soft-bounced*: failed for good, without proof that the address is dead.

An address whose last ``SLUICE_SOFT_BOUNCE_MESSAGES`` messages all ended soft-bounced, the
first at least ``SLUICE_SOFT_BOUNCE_DAYS`` before the last, with no delivery in between, is
suppressed with reason ``soft_bounce_limit`` (``core.suppressions.SoftBounceLimit``; counted
in ``core/lua/lib/soft_bounces.lua``). Messages count, not attempts: a deferral is not a soft
bounce, a message whose retries ran out is. What counts is judged by the failure that
ended the message:

- it **expired** (``SLUICE_MAX_DEFERRAL`` passed) after its last attempt failed at the
  recipient's side: a 4xx reply, or no answer from its mail servers (a timeout, a refused
  connection, a failed DNS lookup);
- it **bounced** without being hard: a 5xx reply from the recipient's server, or a DSN
  report about it, that does not prove the address dead (a full or disabled mailbox, a
  relay that gave up delivering in time, an unexplained failure).

Not counted, because they say nothing about the address: a failure judged as about the
sender or the message (classes ``policy``, ``spam``, ``content``: blocklists, reputation,
authentication, a virus), a push-back (throttling), and Sluice's own holds (a warming IP's
budget, a paused sender, a batch whose content expired before any attempt). A hard bounce
suppresses at once (``hard_bounce``) and needs no count.
"""

from __future__ import annotations

from core.errors import SenderPaused, TransientDeliveryError, WarmupDeferral

# bounce classes (``mta.replies``) that judge the sender or the message, not the address
ABOUT_THE_SENDER = frozenset({"policy", "spam", "content"})

# the fields of the ``suppressed`` event of an address this message took to the limit,
# recorded with the outcome only if it does (the outcome scripts decide)
LIMIT_EVENT = {
    "reason": "soft_bounce_limit",
    "scope": "global",
    "stage": "outcome",  # the address, suppressed by this message's outcome
}


def bounce_is_soft(bounce_class: str | None, hard: bool) -> bool:
    """A bounce (a 5xx reply, or a DSN report) that counts toward the soft-bounce limit."""
    return not hard and (bounce_class or "other") not in ABOUT_THE_SENDER


def expiry_is_soft(last: TransientDeliveryError) -> bool:
    """An expiry that counts: ``last``, the failure of the attempt that ended the message,
    came from the recipient's side."""
    if isinstance(last, (WarmupDeferral, SenderPaused)) or last.throttle:
        return False
    return last.bounce_class not in ABOUT_THE_SENDER
