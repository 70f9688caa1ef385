"""The console's pages (GET): each answers one question from the same functions the API
uses (``gateway.stats``, ``gateway.queues``, ``warmup.gate``, the store), rendered on the
server. Actions are in ``gateway.console.actions``."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from core import suppressions as suppression_entries
from core.addresses import AddressError, normalize_domain
from core.errors import NotFound, ValidationError
from core.events import iso_time
from core.ids import split_message_id
from gateway import alerts, queues, stats
from gateway.api import messages as messages_api
from gateway.api.common import SANDBOX, SETTINGS, STORE
from gateway.console.charts import Series, line_chart
from gateway.console.common import render
from gateway.console.session import secure_headers
from gateway.preflight import run_checks
from mta.dkimkeys import KeyStore
from suppression.policy import load_policy
from warmup.gate import status as warmup_status
from warmup.report import history
from warmup.schedules import PROVIDERS

_SEVERITY = {"fail": 0, "error": 0, "warn": 1, "pass": 2}
SCANNED_EVENTS = 5000  # how far back the message search and the reply lists look
LEVELS = {"delivery": (0.95, 0.90), "deferral": (0.05, 0.20)}  # warn, bad: the rest from alerts


def _thresholds(rules: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    found = dict(LEVELS)
    for rule in rules:
        found.setdefault(rule["metric"], (rule["warn"], rule["critical"]))
    return found


def _level(
    metric: str, value: float | None, thresholds: dict[str, tuple[float, float]], few: bool
) -> str:
    """ok, warn or bad: delivery is bad when low, every other rate when high; "few" under
    ``stats.MIN_VOLUME`` messages, where a rate says little (as the alert rules' min_volume)."""
    if value is None or metric not in thresholds:
        return ""
    if few:
        return "few"
    warn, bad = thresholds[metric]
    if metric == "delivery":
        return "bad" if value < bad else "warn" if value < warn else "ok"
    return "bad" if value >= bad else "warn" if value >= warn else "ok"


def _row(
    name: str, counts: dict[str, Any], thresholds: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    judged = stats.rates_of(counts)
    rates = judged["rates"]
    rates["deferral"] = alerts.rate_of("deferral", counts)
    return {
        "name": name,
        "counts": counts,
        "rates": {
            metric: (
                rates.get(metric),
                _level(metric, rates.get(metric), thresholds, judged["low_volume"]),
            )
            for metric in ("delivery", "deferral", "hard_bounce", "complaint")
        },
    }


async def _per(
    request: web.Request,
    seconds: int,
    group: str,
    thresholds: dict[str, tuple[float, float]],
    **filters: str,
) -> list[dict[str, Any]]:
    """Rows of ``group`` over the last ``seconds``, rates coloured by ``thresholds``."""
    now = time.time()
    query = stats.Query("hour", now - seconds + 1, now, (group,), tuple(filters.items()))
    found = await stats.totals(request.app[STORE], query)
    return [
        _row(key[0] or "(not sent yet)", counts, thresholds)
        for key, counts in sorted(found.items())
    ]


async def overview(request: web.Request) -> web.Response:
    store = request.app[STORE]
    firing = await store.control.alerts()
    thresholds = _thresholds(await alerts.rules_of(store))
    return render(
        request,
        "overview.html",
        periods=[
            ("Last hour", await _per(request, 3600, "provider", thresholds)),
            ("Last day", await _per(request, 86400, "provider", thresholds)),
        ],
        alerts=sorted(firing.values(), key=lambda a: a["since"]),
    )


async def providers(request: web.Request) -> web.Response:
    provider = request.query.get("provider") or None
    if provider is not None and provider not in PROVIDERS:
        raise NotFound(f"no provider group {provider[:40]!r}")
    store = request.app[STORE]
    waiting = await queues.view(
        store, "ip" if provider else "provider", {"provider": provider} if provider else {}
    )
    latest = await store.latest_events(SCANNED_EVENTS)
    replies = [
        e
        for e in latest
        if e["type"] in ("deferred", "bounced")
        and (provider is None or e.get("provider") == provider)
    ]
    reasons = Counter((e["type"], (e.get("reason") or "")[:120]) for e in replies)
    thresholds = _thresholds(await alerts.rules_of(store))
    if provider is None:
        rows = await _per(request, 86400, "provider", thresholds)
    else:
        rows = await _per(request, 86400, "ip", thresholds, provider=provider)
    return render(
        request,
        "providers.html",
        provider=provider,
        providers=PROVIDERS,
        rows=rows,
        waiting=waiting["groups"],
        reasons=reasons.most_common(10),
        replies=replies[:10],
    )


async def warmup(request: web.Request) -> web.Response:
    store = request.app[STORE]
    now = time.time()
    found = await warmup_status(store, now)
    charts = {}
    for ip in found["ips"]:
        series = await history(store, ip["ip"], now)
        if not series:
            continue
        days = next(iter(series.values()))
        labels = [d.day.strftime("%m-%d") for d in days]
        lines = [Series("planned per provider", [d.planned for d in days], dashed=True)]
        lines += [Series(p, [float(d.sent) for d in ds]) for p, ds in series.items()]
        charts[ip["ip"]] = line_chart(
            f"{ip['ip']}: planned and sent per day", labels, lines, unit="messages per day"
        )
    return render(request, "warmup.html", ips=found["ips"], today=found["date"], charts=charts)


async def campaigns(request: web.Request) -> web.Response:
    store = request.app[STORE]
    now = time.time()
    listed = await stats.campaigns(store, stats.Query("day", now - 30 * 86400 + 1, now))
    paused = await store.control.paused()
    names = [c["campaign"] for c in listed["campaigns"]]
    held = await store.control.parked(names) if names else {}
    return render(
        request, "campaigns.html", campaigns=listed["campaigns"], paused=paused, held=held
    )


async def campaign(request: web.Request) -> web.Response:
    name = request.match_info["campaign"]
    store = request.app[STORE]
    now = time.time()
    try:
        report = await stats.campaign_report(
            store, name, stats.Query("day", now - 30 * 86400 + 1, now)
        )
    except ValidationError:
        report = None
    if report is None:
        raise NotFound(f"no messages of campaign {name[:64]!r} in the last 30 days")
    paused = (await store.control.paused()).get(name)
    held = (await store.control.parked([name]))[name]
    hours = _every_hour(report["timeline"])
    chart = line_chart(
        f"{name}: messages per hour (UTC)",
        [start[11:16] for start in hours],
        [
            Series(step, [float(hours[start].get(step, 0)) for start in hours])
            for step in ("accepted", "delivered", "opened", "clicked")
        ],
        unit="messages per hour",
        bars=len(hours) <= 3,
    )
    return render(request, "campaign.html", report=report, paused=paused, held=held, chart=chart)


def _every_hour(timeline: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The report's hourly rows (only hours that counted something), with the hours between
    them filled with zeros: a chart's x axis is time."""
    if not timeline:
        return {}
    counted = {row["start"]: row["counts"] for row in timeline}
    first = datetime.fromisoformat(timeline[0]["start"])
    last = datetime.fromisoformat(timeline[-1]["start"])
    out: dict[str, dict[str, int]] = {}
    moment = first
    while moment <= last:
        stamp = iso_time(moment.timestamp())
        out[stamp] = counted.get(stamp, {})
        moment += timedelta(hours=1)
    return out


async def queue(request: web.Request) -> web.Response:
    return await queue_page(request, None)


async def queue_page(request: web.Request, outcome: dict[str, Any] | None) -> web.Response:
    """The queue by state and provider; ``outcome``: a bulk action's dry run or result."""
    found, truncated = await queues.items(request.app[STORE])  # one read, two groupings
    return render(
        request,
        "queue.html",
        by_state=queues.grouped(found, truncated, "state", {}),
        by_provider=queues.grouped(found, truncated, "provider", {}),
        actions=queues.ACTIONS,
        filters=queues.FILTERS,
        states=queues.STATES,
        outcome=outcome,
    )


async def live(request: web.Request) -> web.Response:
    return render(request, "live.html")


async def live_stream(request: web.Request) -> web.StreamResponse:
    """The API's event stream, for the signed-in console (EventSource sends no header)."""
    return await messages_api.stream_events(request)


async def messages(request: web.Request) -> web.Response:
    asked = (request.query.get("q") or "").strip()[:254]
    store = request.app[STORE]
    found: list[dict[str, Any]] = []
    kind = ""
    if asked:
        if split_message_id(asked) is not None:
            kind = "message id"
            one = await store.message(asked)
            found = [one] if one else []
        else:
            kind = "address" if "@" in asked else "campaign"
            field = "email" if kind == "address" else "campaign"
            wanted = asked.lower() if kind == "address" else asked
            ids: list[str] = []
            for event in await store.latest_events(SCANNED_EVENTS):
                value = event.get(field) or (event.get("category") if kind == "campaign" else None)
                value = value.lower() if kind == "address" and value else value
                if value == wanted and event.get("message_id") and event["message_id"] not in ids:
                    ids.append(event["message_id"])
                if len(ids) >= 20:
                    break
            found = [m for m in await asyncio.gather(*map(store.message, ids)) if m]
    return render(request, "messages.html", q=asked, kind=kind, found=found, scanned=SCANNED_EVENTS)


async def suppressions(request: web.Request) -> web.Response:
    store = request.app[STORE].suppressions
    asked = (request.query.get("q") or "").strip()[:254]
    cursor_text = request.query.get("cursor", "0")
    cursor = int(cursor_text) if cursor_text.isdigit() and len(cursor_text) <= 6 else 0
    if asked:
        entries = await store.of(asked) if "@" in asked else []
        following = None
    else:
        entries, following = await store.page(cursor, 50)
    return render(
        request,
        "suppressions.html",
        q=asked,
        entries=entries,
        following=following,
        total=await store.count(),
        reasons=sorted(suppression_entries.REASONS),
        notice=request.query.get("notice", "")[:300],
    )


async def policy(request: web.Request) -> web.Response:
    current = load_policy(await request.app[STORE].policy()).as_json()
    return render(
        request,
        "policy.html",
        policy=current,
        problem=None,
        notice=request.query.get("notice", "")[:100],
    )


def _sending_domains(request: web.Request) -> list[str]:
    keys = KeyStore(request.app[SETTINGS].data_dir).all_keys()
    return sorted({k.domain for k in keys})


async def checklist(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    domains = _sending_domains(request)
    asked = (request.query.get("domain") or (domains[0] if domains else "")).strip().lower()[:253]
    checks = []
    if asked:
        try:
            asked = normalize_domain(asked)
        except AddressError as exc:
            raise ValidationError(f"not a domain: {exc}", field="domain") from exc
        ips = [s.ip for s in settings.delivery.ips]
        found = await asyncio.to_thread(
            run_checks, settings, asked, [], ips, settings.delivery.nameserver
        )
        checks = sorted(found, key=lambda c: _SEVERITY.get(c.status, 0))  # problems first
    return render(request, "checklist.html", domains=domains, domain=asked, checks=checks)


async def sandbox_list(request: web.Request) -> web.Response:
    captured = await request.app[SANDBOX].recent(100)
    return render(request, "sandbox.html", captured=captured)


async def sandbox_message(request: web.Request) -> web.Response:
    message_id = request.match_info["message_id"]
    follow = request.query.get("follow") == "1"
    found = await request.app[SANDBOX].inspect(message_id, follow=follow)
    if found is None:
        raise NotFound("no such captured message (kept for SLUICE_SANDBOX_RETENTION)")
    images = request.query.get("images") == "1"
    return render(request, "sandbox_message.html", m=found, images=images, follow=follow)


# the frame a captured message's HTML is shown in: no script, no form, no other origin, and
# remote images only when asked for; the frame itself is sandboxed too (sandbox_message.html)
PREVIEW_CSP = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:{images}; "
    "font-src data:; frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)


async def sandbox_preview(request: web.Request) -> web.Response:
    html = await request.app[SANDBOX].html(request.match_info["message_id"])
    if html is None:
        raise NotFound("no HTML part to show")
    images = " https: http:" if request.query.get("images") == "1" else ""
    response = web.Response(text=html, content_type="text/html", charset="utf-8")
    secure_headers(response, csp=PREVIEW_CSP.format(images=images))
    return response
