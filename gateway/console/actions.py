"""The console's actions (POST): signing in and out, and the changes an engineer makes from
the pages. Each runs what the matching API route runs; the middleware
(``gateway.console.common``) has checked the session, the CSRF token and the origin first.
A bulk queue action shows its dry run and asks again before it changes anything; the other
forms ask in the browser (``data-confirm``, ``static/console.js``)."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from typing import Any
from urllib.parse import quote

from aiohttp import web

from core import validate
from core.addresses import AddressError, normalize_address
from core.errors import ClientError, ValidationError
from gateway import queues
from gateway.api.common import STORE
from gateway.console import pages
from gateway.console.common import SESSIONS, local_path, render, see_other
from gateway.console.session import COOKIE, same_origin, set_cookie
from suppression import transfer
from suppression.policy import parse_policy
from warmup import actions as warmup_actions

log = logging.getLogger(__name__)
WRONG_KEY_DELAY_SECONDS = 1.0  # a wrong key waits: guessing is slow as well as hopeless


async def login_page(request: web.Request) -> web.Response:
    return render(request, "login.html", next=local_path(request.query.get("next")), problem=None)


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    target = local_path(str(form.get("next", "")))
    if not same_origin(request):
        return render(
            request, "login.html", 403, next=target, problem="Refused: another site sent this form."
        )
    sessions = request.app[SESSIONS]
    if not sessions.key_matches(str(form.get("key", ""))):
        await asyncio.sleep(WRONG_KEY_DELAY_SECONDS)
        log.warning("console sign-in refused from %s", request.remote)
        return render(request, "login.html", 401, next=target, problem="That is not the API key.")
    response = see_other(target)
    set_cookie(response, request, sessions.new())
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    response = see_other("/ui/login")
    response.del_cookie(COOKIE, path="/ui/")
    return response


def _field(form: Any, name: str, limit: int = 254) -> str:
    value = form.get(name, "")
    if not isinstance(value, str) or len(value) > limit:
        raise ValidationError(f"'{name}' is too long or not text", field=name)
    return value.strip()


async def warmup_pause(request: web.Request) -> web.StreamResponse:
    ip = validate.ip(request.match_info["ip"])
    change = (
        warmup_actions.pause if request.match_info["action"] == "pause" else warmup_actions.resume
    )
    await change(request.app[STORE], ip, time.time())
    log.info("console: warmup of %s %sd", ip, request.match_info["action"])
    return see_other("/ui/warmup")


async def campaign_pause(request: web.Request) -> web.StreamResponse:
    name = validate.campaign(request.match_info["campaign"])
    control = request.app[STORE].control
    if request.match_info["action"] == "pause":
        await control.pause(name, "paused from the console")
    else:
        await control.resume(name)
    log.info("console: campaign %s %sd", name, request.match_info["action"])
    return see_other(f"/ui/campaigns/{quote(name, safe='')}")


async def queue_action(request: web.Request) -> web.Response:
    """A bulk action: first its dry run and a confirmation form, then (``confirm``) the action."""
    form = await request.post()
    action = _field(form, "action", 20)
    given = {name: _field(form, name) for name in queues.FILTERS if _field(form, name)}
    confirmed = form.get("confirm") == "yes"
    outcome = await queues.act(
        request.app[STORE], {"action": action, "filter": given, "dry_run": not confirmed}
    )
    if confirmed:
        log.info("console: queue %s %s: %d changed", action, given, outcome["changed"])
    return await pages.queue_page(request, {**outcome, "filter": given})


async def suppression_add(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    try:
        email = normalize_address(_field(form, "email"))
    except AddressError as exc:
        raise ValidationError(f"not a valid address: {exc}", field="email") from exc
    reason = validate.reason(_field(form, "reason", 40) or "manual")
    category = _field(form, "category", 64) or None
    if category is not None:
        validate.category(category)
    await request.app[STORE].suppressions.add(
        email, reason=reason, source="console", category=category
    )
    log.info("console: suppression added (%s)", reason)
    return see_other(f"/ui/suppressions?q={quote(email)}&notice=" + quote(f"{email} suppressed"))


async def suppression_remove(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    email = _field(form, "email")
    category = _field(form, "category", 64) or None
    removed = await request.app[STORE].suppressions.remove(email, category)
    notice = f"{email} removed" if removed else f"{email} was not suppressed"
    return see_other("/ui/suppressions?notice=" + quote(notice))


async def suppression_import(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise ValidationError("choose a CSV file to import", field="file")
    reason = validate.reason(_field(form, "reason", 40) or "manual")
    try:
        content = upload.file.read().decode("utf-8-sig")
        report = await transfer.import_csv(
            request.app[STORE], io.StringIO(content), reason=reason, category=None, source="console"
        )
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValidationError(f"not a UTF-8 CSV file: {exc}", field="file") from exc
    notice = f"imported {report.imported} ({report.new} new), skipped {report.skipped}"
    if report.problems:
        notice += ": " + "; ".join(report.problems[:3])
    return see_other("/ui/suppressions?notice=" + quote(notice[:300]))


async def suppression_export(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="sluice-suppressions.csv"',
        }
    )
    await response.prepare(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    async for row in transfer.export_rows(request.app[STORE]):
        writer.writerow(row)
        if buffer.tell() > 64 * 1024:
            await response.write(buffer.getvalue().encode())
            buffer.seek(0)
            buffer.truncate()
    await response.write(buffer.getvalue().encode())
    await response.write_eof()
    return response


async def policy_save(request: web.Request) -> web.StreamResponse:
    """The form's rows as ``PUT /v1/policy`` takes them, validated by the same parser; a
    refused policy is shown again with the problem, nothing saved."""
    form = await request.post()
    caps = []
    for index in range(21):
        category = _field(form, f"cap{index}_category", 64)
        if not category:
            continue
        caps.append(
            {
                "category": category,
                "limit": _number(_field(form, f"cap{index}_limit", 10), f"cap {index + 1} limit"),
                "window_seconds": _number(
                    _field(form, f"cap{index}_window", 12), f"cap {index + 1} window"
                ),
                "action": _field(form, f"cap{index}_action", 10),
            }
        )
    document: dict[str, Any] = {"frequency_caps": caps}
    if _field(form, "quiet_start", 10) or _field(form, "quiet_end", 10):
        document["quiet_hours"] = {
            "start": _field(form, "quiet_start", 10),
            "end": _field(form, "quiet_end", 10),
            "default_timezone": _field(form, "quiet_timezone", 64) or "UTC",
        }
        ramp = _field(form, "quiet_ramp", 10)
        if ramp:
            document["quiet_hours"]["ramp_seconds"] = _number(ramp, "quiet hours ramp")
    try:
        policy = parse_policy(document)
    except ClientError as exc:
        return render(request, "policy.html", 400, policy=document, problem=exc.detail, notice="")
    text = policy.document()
    await request.app[STORE].set_policy(text)
    log.info("console: contact policy changed: %s", text)
    return see_other("/ui/policy?notice=saved")


def _number(text: str, name: str) -> int:
    if not text.isdigit():
        raise ValidationError(f"{name} must be a whole number", field=name)
    return int(text)
