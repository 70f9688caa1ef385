"""The contact policy: who may be mailed, how often and when.

| module | holds |
|---|---|
| ``caps`` | frequency caps: the rule, whom it counts for, where it is enforced |
| ``quiet_hours`` | quiet hours: windows in the recipient's time zone as UTC intervals, the ramp |
| ``policy`` | the policy document of ``GET|PUT /v1/policy``: parsing, validation, loading |
| ``transfer`` | suppression lists in and out as CSV (``sluice suppress import|export``) |

The suppression list's model (reasons, scopes, the bucket layout) is
``core.suppressions`` and its storage ``core.store.suppressions``, because the accept
script checks it in the same atomic step as the caps; all three rules are enforced per
recipient in ``core/lua/accept.lua`` when a batch is accepted, and suppression again
just before delivery (``mta.worker``).
"""

from suppression.caps import CapRule, contact_key
from suppression.policy import Policy, load_policy, parse_policy
from suppression.quiet_hours import QuietHours

__all__ = ["CapRule", "Policy", "QuietHours", "contact_key", "load_policy", "parse_policy"]
