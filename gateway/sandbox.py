"""The sandbox: a message sent with ``"sandbox": true`` (or with the sandbox API key) runs the
whole path up to the wire and lands in the capture inbox instead of anyone's mailbox.

What runs: validation and rendering (the intake's ``prepare``), the contact policy read
without writing (suppression, frequency caps, quiet hours and ``send_at`` say what would
happen, nothing is counted), the tracking rewrite, the signed Return-Path and Message-ID, the
unsubscribe headers and DKIM, by the composer the delivery workers use (``mta.composer``).
What does not: the queue. A sandbox message never becomes a job, so no worker, warmup budget,
cap window or statistic ever sees it, and nothing a mistake in this module could do sends it.

A captured message is read back with what a marketer checks before launch
(``Sandbox.inspect``): its parts and headers, the DKIM result against the key the domain
publishes now, where each link leads, and the content checks of ``sluice preflight
--message`` with the message-level ones (unsubscribe headers, leftover merge tags)."""

from __future__ import annotations

import asyncio
import email.policy
import html as html_lib
import re
import time
from concurrent.futures import Executor
from dataclasses import asdict
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import dkim
from dkim.util import parse_tag_value

from core.addresses import domain_of
from core.events import iso_time
from core.ids import split_message_id
from core.jobs import CapRule, Job
from core.settings import Secret, Settings
from core.store import Store
from gateway.intake import Prepared, cap_rule_text, suppressed_reason
from gateway.preflight.content import content_checks, merge_tag_check, merge_tags
from gateway.preflight.model import Check, Dns, DnsFailure
from gateway.webhooks import GlobalOnlyResolver, RefusedTarget, check_literal
from mta.composer import Composer
from suppression.quiet_hours import after_quiet_hours
from tracking.links import rewrite_links
from tracking.tokens import TokenError

STATUS_QUEUED = "queued"
MAX_HOPS = 5  # redirects followed per link
MAX_FOLLOWED = 50  # links followed per message
FOLLOW_SECONDS = 8.0  # for all of a message's links together
ASK_SECONDS = 4.0  # for one request
_PIXEL_PATH = "/t/o/"
_CLICK_PATH = "/t/c/"
_UNSUBSCRIBE_PATH = "/t/u/"


def unstuff(wire: bytes) -> bytes:
    """The message itself from what DATA carries (``mta.smtp.WireMessage``): no final dot, no
    stuffed dots."""
    body = wire[:-3] if wire.endswith(b"\r\n.\r\n") else wire
    if body.startswith(b".."):
        body = body[1:]
    return body.replace(b"\r\n..", b"\r\n.")


def _checks_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]


class Sandbox:
    """Capture (``capture``, from the intake) and inspection (``inspect``, for the API and
    the console). ``executor``: where composing and signing run, off the event loop."""

    def __init__(
        self, settings: Settings, store: Store, verp_key: Secret, executor: Executor
    ) -> None:
        self.settings = settings
        self.store = store
        self.composer = Composer(settings, store, verp_key, executor, shared_links=False)
        self.composer.load()
        self.public_url = settings.http.public_url.rstrip("/")
        self.retention = settings.sandbox.retention
        self.dns = Dns(settings.delivery.nameserver)  # DKIM keys, through SLUICE_NAMESERVER

    async def capture(self, prepared: Prepared, body: dict[str, Any], now: float) -> dict[str, Any]:
        """Compose every recipient the policy would let through at ``now`` (``prepared``:
        the intake's ``Prepared``), keep each in the capture inbox, and answer like ``POST
        /v1/messages`` would (with ``"sandbox": true``)."""
        content = prepared.content
        fates = await self._policy(prepared, now)
        sending_domain = domain_of(content.sender.email)
        checks = _checks_json(await asyncio.to_thread(content_checks, sending_domain, body))
        by_id = {r["message_id"]: r for r in prepared.results if r.get("message_id")}
        records: list[dict[str, Any]] = []
        for entry, fate in zip(prepared.entries, fates, strict=True):
            result = by_id[entry.message_id]
            result.update(fate)
            if fate["status"] in ("suppressed", "capped"):
                continue
            job = Job.unpack(entry.job)
            wire = await self.composer.compose(content, job)
            await asyncio.sleep(0)  # signing is on the loop: let other requests through
            raw = unstuff(wire.data)
            records.append(
                {
                    "message_id": entry.message_id,
                    "batch_id": prepared.batch_id,
                    "captured_at": round(time.time(), 6),
                    "email": job.email,
                    "from": content.sender.email,
                    "subject": _subject(raw),
                    "campaign": content.campaign or content.category,
                    "category": content.category,
                    "stream": content.stream,
                    "would_be": fate,
                    "raw": raw,
                    "checks": checks,
                }
            )
        await self.store.sandbox.capture([(_summary(r), r) for r in records], self.retention)
        return {"batch_id": prepared.batch_id, "sandbox": True, "results": prepared.results}

    async def _policy(self, prepared: Prepared, now: float) -> list[dict[str, Any]]:
        """What the contact policy would say of each recipient, read without counting."""
        content = prepared.content
        entries = prepared.entries
        stops = await self.store.suppressions.check_many(
            [(e.suppression_field, content.category, e.transactional) for e in entries]
        )
        broken_caps = await self._caps_broken(prepared, now)
        fates: list[dict[str, Any]] = []
        for entry, stop, broken in zip(entries, stops, broken_caps, strict=True):
            if stop is not None:
                reason = suppressed_reason(stop.reason, stop.category or "global")
                fates.append({"status": "suppressed", "reason": reason})
                continue
            fate: dict[str, Any] = {"status": STATUS_QUEUED}
            send_at = max(now, entry.due)
            if broken is not None:
                rule, counted = broken
                rule_text = cap_rule_text(rule.category, rule.limit, rule.window_seconds)
                what = f"frequency cap: {counted} of {rule_text} already sent"
                fate = {"status": "capped" if rule.action == "drop" else "scheduled"}
                fate["reason"] = what + ("" if rule.action == "drop" else "; deferred")
            if fate["status"] == "capped":
                fates.append(fate)
                continue
            quiet = prepared.policy.zones.get(entry.timezone or "", [])
            windows = tuple(zip(quiet[::2], quiet[1::2], strict=True))
            held_until = after_quiet_hours(windows, send_at, entry.ramp_offset)
            if held_until != send_at:
                fate.setdefault("reason", f"quiet hours in {entry.timezone}")
                send_at = held_until
            if send_at > now + 1:
                fate["status"] = "scheduled"
                fate["send_at"] = iso_time(send_at)
            fates.append(fate)
        return fates

    async def _caps_broken(
        self, prepared: Prepared, now: float
    ) -> list[tuple[CapRule, int] | None]:
        """Per entry, the first cap rule its contact has used up, with its count, read in one
        round trip (the sandbox counts nothing)."""
        pairs: list[tuple[str, CapRule]] = []  # (message id, rule) of each count asked
        asked: list[tuple[str, str, str, float]] = []
        for entry in prepared.entries:
            if entry.contact is None:
                continue
            for rule in prepared.policy.rules:
                pairs.append((entry.message_id, rule))
                asked.append(
                    (rule.key, entry.contact, entry.suppression_field, rule.window_seconds)
                )
        broken: dict[str, tuple[CapRule, int]] = {}
        for (message_id, rule), counted in zip(
            pairs, await self.store.capped_many(asked, now), strict=True
        ):
            if counted >= rule.limit:
                broken.setdefault(message_id, (rule, counted))  # its first rule used up
        return [broken.get(entry.message_id) for entry in prepared.entries]

    # --- reading the inbox --------------------------------------------------------------

    async def recent(
        self, limit: int, before: tuple[float, str] | None = None
    ) -> list[dict[str, Any]]:
        """The newest captures, without their bodies."""
        return await self.store.sandbox.recent(limit, before)

    async def inspect(self, message_id: str, *, follow: bool = False) -> dict[str, Any] | None:
        """One capture, read back; ``follow``: each link's redirects are followed too."""
        record = await self._record(message_id)
        if record is None:
            return None
        found = await asyncio.to_thread(self._inspect, record)
        if follow:
            await self._follow(found["links"])
        return found

    async def html(self, message_id: str) -> str | None:
        """A capture's HTML part alone (the console's preview frame): no DKIM, no links."""
        record = await self._record(message_id)
        if record is None:
            return None
        part = _parsed(record["raw"]).get_body(("html",))
        return None if part is None else str(part.get_content())

    async def _record(self, message_id: str) -> dict[str, Any] | None:
        if split_message_id(message_id) is None:  # not a message id: nothing to ask
            return None
        return await self.store.sandbox.get(message_id)

    async def _follow(self, links: list[dict[str, Any]]) -> None:
        """Where each link finally leads: its destination asked with HEAD (GET where HEAD is
        refused), redirects followed up to ``MAX_HOPS``, public addresses only (unless
        ``SLUICE_SANDBOX_FOLLOW_PRIVATE``). Adds ``final`` ({url, status} or {problem}) and
        ``hops`` to each link that has a destination."""
        private = self.settings.sandbox.follow_private
        resolver = None if private else GlobalOnlyResolver("SLUICE_SANDBOX_FOLLOW_PRIVATE")
        connector = aiohttp.TCPConnector(resolver=resolver)
        timeout = aiohttp.ClientTimeout(total=ASK_SECONDS)
        wanted = [link for link in links if link.get("leads_to")][:MAX_FOLLOWED]
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                async with asyncio.timeout(FOLLOW_SECONDS):
                    await asyncio.gather(
                        *(self._follow_one(session, link, private) for link in wanted)
                    )
            except TimeoutError:
                for link in wanted:
                    link.setdefault(
                        "final", {"problem": f"no answer within {FOLLOW_SECONDS:.0f} s"}
                    )

    async def _follow_one(
        self, session: aiohttp.ClientSession, link: dict[str, Any], private: bool
    ) -> None:
        url: str = link["leads_to"]
        hops: list[dict[str, Any]] = []
        link["hops"] = hops
        try:
            for _ in range(MAX_HOPS + 1):
                if urlsplit(url).scheme not in ("http", "https"):
                    link["final"] = {"url": url, "status": None}
                    return
                if not private:
                    check_literal(url)
                status, location = await _ask(session, url)
                hops.append({"url": url, "status": status})
                if location is None or not 300 <= status < 400:
                    link["final"] = {"url": url, "status": status}
                    return
                url = urljoin(url, location)
            link["final"] = {"problem": f"more than {MAX_HOPS} redirects"}
        except (aiohttp.ClientError, TimeoutError, RefusedTarget, ValueError) as exc:
            link["final"] = {"problem": str(exc) or exc.__class__.__name__}

    def _inspect(self, record: dict[str, Any]) -> dict[str, Any]:
        raw: bytes = record["raw"]
        message = _parsed(raw)
        html_part = message.get_body(("html",))
        text_part = message.get_body(("plain",))
        html = html_part.get_content() if html_part is not None else None
        text = text_part.get_content() if text_part is not None else None
        headers = [(name, _shown(value)) for name, value in message.raw_items()]
        marketing = record.get("stream") != "transactional"
        checks = list(record.get("checks", []))
        checks += _checks_json(_message_checks(message, html, text, marketing))
        return {
            **_summary(record),
            "headers": [{"name": n, "value": v} for n, v in headers],
            "html": html,
            "text": text,
            "raw": raw.decode("utf-8", "replace"),
            "size": len(raw),
            "dkim": self._dkim(raw),
            "links": self._links(html, text),
            "checks": checks,
        }

    def _dkim(self, raw: bytes) -> list[dict[str, Any]]:
        """Each DKIM signature verified against the key published now (dkimpy), through
        ``SLUICE_NAMESERVER`` when set."""

        def lookup(qname: bytes, timeout: float = 5) -> bytes:
            try:
                return self.dns.dkim_txt(qname, timeout)
            except (DnsFailure, UnicodeDecodeError):
                return b""

        checker = dkim.DKIM(raw)
        signatures = [v for k, v in checker.headers if k.lower() == b"dkim-signature"]
        out: list[dict[str, Any]] = []
        for index, value in enumerate(signatures):
            try:
                tags = parse_tag_value(value)
            except dkim.InvalidTagValueList:
                tags = {}
            domain = tags.get(b"d", b"").decode("ascii", "replace")
            selector = tags.get(b"s", b"").decode("ascii", "replace")
            algorithm = tags.get(b"a", b"").decode("ascii", "replace")
            try:
                good = bool(checker.verify(idx=index, dnsfunc=lookup))
                detail = "" if good else "the signature does not verify with the published key"
            except dkim.DKIMException as exc:
                good, detail = False, str(exc)
            out.append(
                {
                    "domain": domain,
                    "selector": selector,
                    "algorithm": algorithm,
                    "result": "pass" if good else "fail",
                    "detail": detail,
                    "record": f"{selector}._domainkey.{domain}",
                }
            )
        return out

    def _links(self, html: str | None, text: str | None) -> list[dict[str, Any]]:
        """Every link of the message (and its open pixel), with where it leads once Sluice's
        redirect is read."""
        urls: list[str] = []
        if html:
            _, found = rewrite_links(html, lambda url: url)
            urls += found
        for match in re.finditer(r"https?://[^\s<>\"']+", text or ""):
            if match.group(0) not in urls:
                urls.append(match.group(0))
        pixel = re.search(re.escape(self.public_url + _PIXEL_PATH) + r"[^\"'\s>]+", html or "")
        if pixel is not None:
            urls.append(html_lib.unescape(pixel.group(0)))
        out = []
        for url in urls:
            out.append({"url": url, **self._leads_to(url)})
        return out

    def _leads_to(self, url: str) -> dict[str, Any]:
        if not url.startswith(self.public_url + "/t/"):
            return {"tracked": False, "leads_to": url}
        path = url[len(self.public_url) :]
        token = path[5:].split("?", 1)[0]
        tokens = self.composer.tokens
        if path.startswith(_CLICK_PATH):
            try:
                opened = tokens.open(token, expect="click")
            except TokenError as exc:
                return {"tracked": True, "leads_to": None, "problem": str(exc)}
            return {"tracked": True, "kind": "click", "leads_to": opened.url}
        if path.startswith(_UNSUBSCRIBE_PATH):
            return {"tracked": True, "kind": "unsubscribe", "leads_to": url}
        if path.startswith(_PIXEL_PATH):
            return {"tracked": True, "kind": "open", "leads_to": None}
        return {"tracked": True, "leads_to": url}


async def _ask(session: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    """(status, Location) of ``url``, without following: HEAD, or GET where HEAD is refused."""
    headers = {"User-Agent": "Sluice-Sandbox/1 (link check)"}
    async with session.head(url, allow_redirects=False, headers=headers) as answer:
        if answer.status not in (405, 501):
            return answer.status, answer.headers.get("Location")
    async with session.get(url, allow_redirects=False, headers=headers) as answer:
        return answer.status, answer.headers.get("Location")


def _shown(raw_value: str) -> str:
    """A header field's value as a person reads it: unfolded, RFC 2047 words decoded where
    they decode (a custom header is shown as written when they do not)."""
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", raw_value).strip()
    try:
        return str(make_header(decode_header(unfolded)))
    except (ValueError, LookupError, UnicodeDecodeError, HeaderParseError):
        return unfolded


def _parsed(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def _subject(raw: bytes) -> str:
    message = BytesParser(policy=email.policy.default).parsebytes(raw, headersonly=True)
    return str(message.get("Subject", ""))


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "message_id": record["message_id"],
        "batch_id": record["batch_id"],
        "captured_at": record["captured_at"],
        "email": record["email"],
        "from": record["from"],
        "subject": record["subject"],
        "campaign": record.get("campaign"),
        "category": record.get("category"),
        "stream": record.get("stream"),
        "would_be": record.get("would_be", {}),
    }


def _message_checks(
    message: EmailMessage, html: str | None, text: str | None, marketing: bool
) -> list[Check]:
    """What only the composed message shows: its unsubscribe headers and leftover merge tags."""
    checks = []
    unsubscribe = str(message.get("List-Unsubscribe", ""))
    one_click = str(message.get("List-Unsubscribe-Post", ""))
    has_https = "<https://" in unsubscribe or "<http://" in unsubscribe
    if not marketing:
        checks.append(
            Check("message.unsubscribe", "pass", "transactional: no unsubscribe headers needed")
        )
    elif has_https and one_click.strip() == "List-Unsubscribe=One-Click":
        checks.append(
            Check(
                "message.unsubscribe",
                "pass",
                "List-Unsubscribe with one-click (RFC 8058)",
                unsubscribe[:300],
            )
        )
    else:
        checks.append(
            Check(
                "message.unsubscribe",
                "fail",
                "no one-click List-Unsubscribe header",
                unsubscribe[:300],
                "Gmail and Yahoo require one-click unsubscribe from bulk senders",
            )
        )
    leftovers = merge_tags(" ".join(p for p in (str(message.get("Subject", "")), html, text) if p))
    checks.append(merge_tag_check("message.merge_tags", leftovers))
    return checks
