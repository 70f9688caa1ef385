"""Alert rules that act: a rate (complaints, hard bounces, deferrals, machine clicks,
unsubscribes) over a window and a scope (campaign, provider, IP x provider), with warning
and critical thresholds and a minimum volume; firing and resolving emit ``alert_fired`` and
``alert_resolved`` events (so webhooks carry them), and a critical alert of a campaign
whose rule says ``pause_campaign`` pauses it: its queued messages are held until a person
resumes it (``POST /v1/campaigns/{campaign}/resume``); one of an IP x provider whose rule
says ``pause_ip_provider`` stops that IP sending to that provider (other IPs of the pool
take over; with none left, messages wait) until ``POST /v1/senders/{ip}/{provider}/resume``.

Evaluated by the rollup counter that holds the lease (``gateway/rollups.py``), every few
seconds, from the hourly rollups: a window is rounded up to whole hours (the current one
included). Defaults at the mailbox providers' published lines: complaints 0.1% warning,
0.3% critical (Gmail); hard bounces 2% and 5%; both per campaign over the last 24 hours,
from 1,000 messages.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import msgpack

from core.errors import ValidationError
from core.events import EventType
from core.store import Store
from gateway import stats

log = logging.getLogger(__name__)

# metric -> (numerator, denominator counts, summed)
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "complaint": ("complained", ("delivered",)),
    "hard_bounce": ("bounced_hard", ("delivered", "bounced")),
    "deferral": ("deferred", ("delivered", "bounced", "deferred")),
    "unsubscribe": ("unsubscribed", ("delivered",)),
    "machine_click_share": ("clicked_machine", ("clicked", "clicked_machine")),
}


def rate_of(metric: str, counts: Mapping[str, int]) -> float | None:
    """``metric``'s rate in ``counts`` (``METRICS``); None when its denominator is 0."""
    numerator, over = METRICS[metric]
    volume = sum(counts[name] for name in over)
    return counts[numerator] / volume if volume else None


SCOPES: dict[str, tuple[str, ...]] = {
    "campaign": ("campaign",),
    "provider": ("provider",),
    "ip_provider": ("ip", "provider"),
}
ACTIONS = ("notify", "pause_campaign", "pause_ip_provider")
DEFAULT_RULES: list[dict[str, Any]] = [
    {
        "name": "complaint-rate",
        "metric": "complaint",
        "scope": "campaign",
        "window_seconds": 86400,
        "warn": 0.001,
        "critical": 0.003,
        "min_volume": 1000,
        "action": "pause_campaign",
    },
    {
        "name": "hard-bounce-rate",
        "metric": "hard_bounce",
        "scope": "campaign",
        "window_seconds": 86400,
        "warn": 0.02,
        "critical": 0.05,
        "min_volume": 1000,
        "action": "pause_campaign",
    },
]
RULE_FIELDS = (
    "name",
    "metric",
    "scope",
    "window_seconds",
    "warn",
    "critical",
    "min_volume",
    "action",
)
MAX_RULES = 50
EVALUATE_SECONDS = 5.0


def _number(rule: dict[str, Any], name: str, where: str, *, low: float, high: float) -> float:
    value = rule.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValidationError(
            f"'{where}.{name}' must be a number from {low:g} to {high:g}", field=f"{where}.{name}"
        )
    return float(value)


def validate_rules(document: Any) -> list[dict[str, Any]]:
    """The rules of a ``PUT /v1/alerts/rules`` body, checked and in their canonical form."""
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise ValidationError('the body must be {"rules": [...]}', field="rules")
    if len(document["rules"]) > MAX_RULES:
        raise ValidationError(f"at most {MAX_RULES} rules", field="rules")
    rules, names = [], set()
    for n, rule in enumerate(document["rules"]):
        where = f"rules[{n}]"
        if not isinstance(rule, dict):
            raise ValidationError(f"'{where}' must be an object", field=where)
        unknown = set(rule) - set(RULE_FIELDS)
        if unknown:
            raise ValidationError(
                f"'{where}' has unknown fields: {', '.join(sorted(unknown))}", field=where
            )
        name = rule.get("name")
        if (
            not isinstance(name, str)
            or not 1 <= len(name) <= 64
            or not name.replace("-", "").replace("_", "").isalnum()
        ):
            raise ValidationError(
                f"'{where}.name' must be 1-64 letters, digits, - or _", field=f"{where}.name"
            )
        if name in names:
            raise ValidationError(f"two rules are named {name!r}", field=f"{where}.name")
        names.add(name)
        for field, allowed in (("metric", METRICS), ("scope", SCOPES), ("action", ACTIONS)):
            if not isinstance(rule.get(field), str) or rule[field] not in allowed:
                raise ValidationError(
                    f"'{where}.{field}' must be one of {', '.join(allowed)}",
                    field=f"{where}.{field}",
                )
        if rule["action"] == "pause_campaign" and rule["scope"] != "campaign":
            raise ValidationError(
                f"'{where}': pause_campaign needs scope campaign", field=f"{where}.action"
            )
        if rule["action"] == "pause_ip_provider" and rule["scope"] != "ip_provider":
            raise ValidationError(
                f"'{where}': pause_ip_provider needs scope ip_provider", field=f"{where}.action"
            )
        warn = _number(rule, "warn", where, low=0, high=1)
        critical = _number(rule, "critical", where, low=0, high=1)
        if warn > critical:
            raise ValidationError(
                f"'{where}.warn' is above its critical threshold", field=f"{where}.warn"
            )
        window = _number(rule, "window_seconds", where, low=3600, high=30 * 86400)
        volume = _number(rule, "min_volume", where, low=1, high=1e9)
        rules.append(
            {
                "name": name,
                "metric": rule["metric"],
                "scope": rule["scope"],
                "window_seconds": int(window),
                "warn": warn,
                "critical": critical,
                "min_volume": int(volume),
                "action": rule["action"],
            }
        )
    return rules


async def rules_of(store: Store) -> list[dict[str, Any]]:
    saved = await store.control.alert_rules()
    return DEFAULT_RULES if saved is None else saved


async def evaluate(store: Store, now: float | None = None) -> list[dict[str, Any]]:
    """Evaluate every rule; fire, escalate, resolve and act. The alerts that changed."""
    now = time.time() if now is None else now
    firing = await store.control.alerts()
    changed = []
    seen = set()
    for rule in await rules_of(store):
        hours = math.ceil(rule["window_seconds"] / 3600)
        dims = SCOPES[rule["scope"]]
        query = stats.Query("hour", now - hours * 3600 + 1, now, dims)
        _, over = METRICS[rule["metric"]]
        for group, counts in (await stats.totals(store, query)).items():
            target = dict(zip(dims, group, strict=True))
            if not all(target.values()):
                continue  # no campaign, no IP: nothing to act on
            key = "|".join([rule["name"], *group])
            seen.add(key)
            volume = sum(counts[name] for name in over)
            rate = rate_of(rule["metric"], counts) or 0.0
            severity = None
            if volume >= rule["min_volume"]:
                if rate >= rule["critical"]:
                    severity = "critical"
                elif rate >= rule["warn"]:
                    severity = "warning"
            before = firing.get(key)
            if severity is None:
                if before is not None:
                    changed.append(await _resolve(store, key, before, rate, now))
                continue
            if before is not None and before["severity"] == severity:
                continue
            if before is not None and before["severity"] == "critical":
                continue  # down to warning: stays critical until it resolves
            changed.append(
                await _fire(store, key, rule, target, severity, rate, volume, now, before)
            )
    for key, before in firing.items():
        if key not in seen:  # nothing counted in the window any more
            changed.append(await _resolve(store, key, before, 0.0, now))
    return changed


async def _fire(
    store: Store,
    key: str,
    rule: dict[str, Any],
    target: dict[str, str],
    severity: str,
    rate: float,
    volume: int,
    now: float,
    before: dict[str, Any] | None,
) -> dict[str, Any]:
    threshold = rule["critical"] if severity == "critical" else rule["warn"]
    acted = None
    reason = f"alert {rule['name']}: {rule['metric']} rate {rate:.4%} over {threshold:.4%}"
    critical = severity == "critical"
    if critical and rule["action"] == "pause_campaign":
        if await store.control.pause(target["campaign"], reason):
            acted = "paused_campaign"
            log.warning("campaign %s paused by %s", target["campaign"], reason)
    elif (
        critical
        and rule["action"] == "pause_ip_provider"
        and await store.control.pause_sender(target["ip"], target["provider"], reason)
    ):
        acted = "paused_ip_provider"
        log.warning("%s paused at %s by %s", target["ip"], target["provider"], reason)
    state = {
        "key": key,
        "rule": rule["name"],
        "metric": rule["metric"],
        "scope": rule["scope"],
        "target": target,
        "severity": severity,
        "rate": round(rate, 6),
        "threshold": threshold,
        "volume": volume,
        "window_seconds": rule["window_seconds"],
        "action": rule["action"],
        "acted": acted or (before or {}).get("acted"),
        "since": (before or {}).get("since", round(now, 3)),
    }
    await store.control.set_alert(key, state)
    await store.control.record_event(
        _event(EventType.ALERT_FIRED, now, {k: v for k, v in state.items() if k != "since"})
    )
    return state


async def _resolve(
    store: Store, key: str, before: dict[str, Any], rate: float, now: float
) -> dict[str, Any]:
    await store.control.set_alert(key, None)
    resolved = {**before, "severity": "resolved", "rate": round(rate, 6)}
    await store.control.record_event(
        _event(EventType.ALERT_RESOLVED, now, {k: v for k, v in resolved.items() if k != "since"})
    )
    return resolved


def _event(kind: EventType, now: float, fields: dict[str, Any]) -> bytes:
    return msgpack.packb({"type": kind.value, "timestamp": round(now, 3), **fields})  # type: ignore[no-any-return]
