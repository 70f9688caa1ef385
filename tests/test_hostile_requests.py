"""Hostile requests: each gets a precise 4xx or a per-recipient `rejected`, none a 5xx,
and nothing hostile reaches the wire.

Every case in ``CASES`` is sent to one real ``sluice serve`` (one delivery worker,
relaying into a real SMTP sink, body limit lowered to ``BODY_LIMIT``). A case expects one of:

* ``Refused``: the whole request gets this 4xx with ``{error, detail}`` and, where
  the request names one, this ``field``;
* ``Rejected``: 202, the hostile recipient is ``rejected`` with a reason, its valid
  neighbour in the same batch is ``queued`` (and so legitimately reaches the sink);
* ``Defused``: 202 and every recipient queued; the hostile part is allowed but must
  be harmless on the wire (SMTP smuggling in the body, address lists in a display name).

Every refused body still names a valid recipient (``BLOCKED``) so a refusal that
was in fact a send would show up at the sink. After all cases a canary is sent;
once it arrives the sink must hold exactly the canary and the expected neighbours,
with no injected byte anywhere. Hypothesis then throws random strings and JSON
values into every field of the in-process app, and template CPU bombs get their
own throw-away server.
"""

from __future__ import annotations

import copy
import email.policy
import email.utils
import http.client
import json
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiosmtpd.controller import Controller
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtests.harness import API_KEY, Served, cart_reminder, fixture_batch, free_port, start_serve
from tests.conftest import Received, Sink, SinkHandler

pytestmark = pytest.mark.slow

BODY_LIMIT = 1024 * 1024  # SLUICE_MAX_BODY_BYTES of the server under attack
DOMAIN = "inbox.example.org"
BLOCKED = f"must-not-arrive@{DOMAIN}"  # the recipient of every refused request
CART = "https://shop.example.com/cart/8f3a2c"
EVIL = "evil.example"  # appears only in hostile input: never on the wire
SMUGGLED = "smuggled.example"  # may appear in bodies and display names, never in an envelope

# --- building requests -------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One HTTP request, byte for byte. A header set to None is left out."""

    body: bytes = b""
    method: str = "POST"
    path: str = "/v1/messages"
    headers: dict[str, str | bytes | None] = field(default_factory=dict)
    chunked: bool = False


DEFAULT_HEADERS: dict[str, str | bytes | None] = {
    "Authorization": f"Bearer {API_KEY}",
    "Content-Type": "application/json",
}


def recipient(address: str, **fields: Any) -> dict[str, Any]:
    """A personalized recipient of the fixture message; ``data`` entries are merged."""
    data = {
        "first_name": "Ada",
        "product_name": "Trail running shoes",
        "cart_url": CART,
        **fields.pop("data", {}),
    }
    return {"email": address, "contact_id": "c-1", "data": data, **fields}


def message(changes: dict[str, Any] | None = None, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fixture message to ``BLOCKED`` with top-level ``changes`` and ``drop``ped fields."""
    body = cart_reminder()
    body["recipients"] = [recipient(BLOCKED)]
    body.update(copy.deepcopy(changes or {}))
    for key in drop:
        del body[key]
    return body


def post(body: Any, **headers: str | bytes | None) -> Call:
    """POST /v1/messages with ``body`` as JSON (ASCII-escaped, so NUL and lone surrogates survive)."""
    return Call(json.dumps(body).encode(), headers=headers)


def get(path: str, **headers: str | bytes | None) -> Call:
    return Call(method="GET", path=path, headers=headers)


def send(base_url: str, call: Call, timeout: float = 30) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.putrequest(call.method, call.path, skip_accept_encoding=True)
        for name, value in {**DEFAULT_HEADERS, **call.headers}.items():
            if value is not None:
                conn.putheader(name, value)
        if call.chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        elif call.body or call.method != "GET":
            conn.putheader("Content-Length", str(len(call.body)))
        conn.endheaders()
        try:
            if call.chunked:
                for start in range(0, len(call.body), 64 * 1024):
                    chunk = call.body[start : start + 64 * 1024]
                    conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                conn.send(b"0\r\n\r\n")
            elif call.body:
                conn.send(call.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer 413 and close before reading it all
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- what each case expects ------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    status: int
    error: str | None = None  # the `error` code; None: any
    field: str | None = None  # the `field`; None: not checked
    json_body: bool = True  # False: refused by the HTTP parser before Sluice sees it


@dataclass(frozen=True)
class Rejected:
    index: int  # the hostile recipient; every other one is valid and must be queued
    reason: str  # part of the `reason`


@dataclass(frozen=True)
class Defused:
    """Accepted with every recipient queued; the sink checks make sure it is harmless."""


@dataclass(frozen=True)
class Case:
    id: str
    call: Call
    expect: Refused | Rejected | Defused
    before: tuple[Call, ...] = ()  # sent first, each must get a 202 (idempotency)

    def deliveries(self) -> Counter[str]:
        """The addresses this case legitimately sends to."""
        out: Counter[str] = Counter()
        for call in self.before:
            out.update({r["email"].lower() for r in json.loads(call.body)["recipients"]})
        if not isinstance(self.expect, Refused):
            recipients = json.loads(self.call.body)["recipients"]
            skip = self.expect.index if isinstance(self.expect, Rejected) else -1
            out.update({r["email"].lower() for i, r in enumerate(recipients) if i != skip})
        return out


def assert_answer(case: Case, status: int, raw: bytes) -> None:
    """The one assertion every case goes through."""
    shown = f"{case.id}: got {status} {raw[:400]!r}"
    assert status < 500, shown
    expect = case.expect
    if isinstance(expect, Refused):
        assert status == expect.status, f"expected {expect.status}; {shown}"
        if not expect.json_body:
            return
        answer = json.loads(raw)
        assert isinstance(answer.get("error"), str) and answer["error"], shown
        assert isinstance(answer.get("detail"), str) and answer["detail"], shown
        if expect.error is not None:
            assert answer["error"] == expect.error, shown
        if expect.field is not None:
            assert answer.get("field") == expect.field, f"expected field {expect.field!r}; {shown}"
        return
    assert status == 202, f"expected 202; {shown}"
    answer = json.loads(raw)
    results = {r["index"]: r for r in answer["results"]}
    sent = json.loads(case.call.body)["recipients"]
    assert sorted(results) == list(range(len(sent))), shown
    for index, result in results.items():
        if isinstance(expect, Rejected) and index == expect.index:
            assert result["status"] == "rejected", shown
            assert result["message_id"] is None, shown
            assert expect.reason in result.get("reason", ""), f"expected {expect.reason!r}; {shown}"
        else:
            assert result["status"] == "queued", shown
            assert isinstance(result["message_id"], str), shown


# --- the table ---------------------------------------------------------------------------


def refused(
    case_id: str, call: Call, status: int = 400, error: str | None = None, field: str | None = None
) -> Case:
    return Case(case_id, call, Refused(status, error, field))


def invalid(case_id: str, body: Any, field: str, error: str = "invalid_request") -> Case:
    """A JSON body that must be refused with 400 naming ``field``."""
    return refused(case_id, post(body), 400, error, field)


def too_expensive(case_id: str, body: Any, field: str) -> Case:
    """A well-formed template over its render budget whatever the data: 422."""
    return refused(case_id, post(body), 422, "template_too_expensive", field)


def neighbour(case_id: str) -> str:
    return f"ok-{case_id}@{DOMAIN}"


def rejected(
    case_id: str,
    hostile: dict[str, Any],
    reason: str,
    changes: dict[str, Any] | None = None,
    ok: dict[str, Any] | None = None,
) -> Case:
    """[valid neighbour, hostile recipient]: the hostile one (index 1) is rejected."""
    body = message(changes)
    body["recipients"] = [ok or recipient(neighbour(case_id)), hostile]
    return Case(case_id, post(body), Rejected(1, reason))


def defused(case_id: str, changes: dict[str, Any] | None = None, **fields: Any) -> Case:
    body = message(changes)
    body["recipients"] = [recipient(neighbour(case_id), **fields)]
    return Case(case_id, post(body), Defused())


def with_header(name: str, value: Any) -> dict[str, Any]:
    return message({"headers": {name: value}})


VALID = json.dumps(message()).encode()
NESTED = b"[" * 100_000 + b"]" * 100_000
LONG_ADDRESS = "a" * 60 + "@" + ".".join(["b" * 60] * 4) + ".org"  # 310 characters
SMUGGLE = f"\r\n.\r\nMAIL FROM:<x@{EVIL}>\r\nRCPT TO:<spy@{EVIL}>\r\nDATA\r\n"
CPU_LOOP = "{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}{% endfor %}{% endfor %}{% endfor %}"
IDEMPOTENCY_KEY = "hostile-reuse-0001"

CASES: list[Case] = [
    # -- malformed JSON and transport ------------------------------------------------
    refused("json-truncated", Call(VALID[:-7]), 400, "invalid_json"),
    refused("json-trailing-garbage", Call(VALID + b"}{"), 400, "invalid_json"),
    refused("json-empty-body", Call(b""), 400, "invalid_json"),
    refused("json-nan", post(message({"send_at": float("nan")})), 400, "invalid_json"),
    refused("json-infinity", post(message({"send_at": float("-inf")})), 400, "invalid_json"),
    refused(
        "json-not-utf8", Call(VALID.replace(b"Example Shop", b"Caf\xe9 Shop")), 400, "invalid_json"
    ),
    refused("json-nested-100k-arrays", Call(NESTED), 400, "invalid_json"),
    refused(
        "json-deep-in-data",
        Call(VALID.replace(b'"data": {', b'"data": {"x": ' + b"[" * 5000 + b"]" * 5000 + b",")),
        400,
        "invalid_json",
    ),
    refused(
        "json-huge-integer",
        Call(VALID[:-1] + b', "send_at": ' + b"9" * 5000 + b"}"),
        400,
        "invalid_json",
    ),
    invalid("json-top-level-array", [message()], ""),
    invalid("json-top-level-string", "hello", ""),
    invalid("json-top-level-null", None, ""),
    refused(
        "content-type-text-plain",
        Call(VALID, headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
        "Content-Type",
    ),
    refused(
        "content-type-missing",
        Call(VALID, headers={"Content-Type": None}),
        415,
        "unsupported_media_type",
        "Content-Type",
    ),
    refused(
        "content-type-form",
        Call(VALID, headers={"Content-Type": "application/x-www-form-urlencoded"}),
        415,
        "unsupported_media_type",
        "Content-Type",
    ),
    refused("auth-missing", Call(VALID, headers={"Authorization": None}), 401, "unauthorized"),
    refused(
        "auth-wrong-key",
        Call(VALID, headers={"Authorization": "Bearer not-the-key"}),
        401,
        "unauthorized",
    ),
    refused(
        "auth-basic-scheme",
        Call(VALID, headers={"Authorization": f"Basic {API_KEY}"}),
        401,
        "unauthorized",
    ),
    refused(
        "auth-key-prefix",
        Call(VALID, headers={"Authorization": f"Bearer {API_KEY[:-1]}"}),
        401,
        "unauthorized",
    ),
    refused(
        "auth-non-ascii-byte",
        Call(VALID, headers={"Authorization": b"Bearer \xff" + API_KEY.encode()}),
        401,
        "unauthorized",
    ),
    refused("method-put", Call(VALID, method="PUT"), 405, "method_not_allowed"),
    refused("body-oversized", post(message({"html": "x" * BODY_LIMIT})), 413, "payload_too_large"),
    refused(
        "body-oversized-chunked",
        Call(json.dumps(message({"html": "x" * BODY_LIMIT})).encode(), chunked=True),
        413,
        "payload_too_large",
    ),
    # -- missing and mistyped fields --------------------------------------------------
    invalid("missing-from", message(drop=("from",)), "from"),
    invalid("missing-subject", message(drop=("subject",)), "subject"),
    invalid("missing-stream", message(drop=("stream",)), "stream"),
    invalid("missing-recipients", message(drop=("recipients",)), "recipients"),
    invalid("missing-html-and-text", message(drop=("html", "text")), "html"),
    invalid("from-null", message({"from": None}), "from"),
    invalid("from-number", message({"from": 42}), "from"),
    invalid("from-email-number", message({"from": {"email": 42}}), "from.email"),
    invalid("subject-number", message({"subject": 42}), "subject"),
    invalid("subject-blank", message({"subject": "   "}), "subject"),
    invalid("html-array", message({"html": ["<p>hi</p>"]}), "html"),
    invalid("stream-unknown", message({"stream": "bulk"}), "stream"),
    invalid("recipients-object", message({"recipients": {"email": f"a@{DOMAIN}"}}), "recipients"),
    invalid("recipients-string", message({"recipients": f"a@{DOMAIN}"}), "recipients"),
    invalid("recipients-empty", message({"recipients": []}), "recipients"),
    invalid(
        "recipients-1001", message({"recipients": fixture_batch(1001)["recipients"]}), "recipients"
    ),
    invalid("recipient-a-string", message({"recipients": [f"a@{DOMAIN}"]}), "recipients[0]"),
    invalid(
        "recipient-email-missing", message({"recipients": [{"name": "Ada"}]}), "recipients[0].email"
    ),
    invalid(
        "recipient-email-number", message({"recipients": [{"email": 7}]}), "recipients[0].email"
    ),
    invalid(
        "recipient-data-array",
        message({"recipients": [{**recipient(BLOCKED), "data": [1]}]}),
        "recipients[0].data",
    ),
    invalid(
        "recipient-unknown-field",
        message({"recipients": [recipient(BLOCKED, cc=f"spy@{EVIL}")]}),
        "recipients[0].cc",
    ),
    invalid("tracking-opens-string", message({"tracking": {"opens": "yes"}}), "tracking.opens"),
    invalid("tracking-unknown-field", message({"tracking": {"pixels": True}}), "tracking.pixels"),
    invalid("headers-list", message({"headers": ["X-Campaign: spring"]}), "headers"),
    invalid("tags-number", message({"tags": [1]}), "tags"),
    invalid("tags-crlf", message({"tags": [f"spring\r\nBcc: spy@{EVIL}"]}), "tags[0]"),
    invalid("metadata-nested", message({"metadata": {"source": {"a": 1}}}), "metadata.source"),
    invalid("metadata-over-4kb", message({"metadata": {"blob": "x" * 5000}}), "metadata"),
    invalid("unknown-field-bcc", message({"bcc": [f"spy@{EVIL}"]}), "bcc"),
    invalid("category-spaces", message({"category": "cart abandonment"}), "category"),
    invalid("category-crlf", message({"category": f"cart\r\nBcc: spy@{EVIL}"}), "category"),
    invalid("ip-pool-path", message({"ip_pool": "../../etc"}), "ip_pool"),
    # -- CR, LF, NUL and SMTP smuggling in headers and the envelope sender --------------
    invalid("subject-crlf", message({"subject": f"Hi\r\nBcc: spy@{EVIL}"}), "subject"),
    invalid("subject-bare-lf", message({"subject": f"Hi\nBcc: spy@{EVIL}"}), "subject"),
    invalid("subject-bare-cr", message({"subject": f"Hi\rBcc: spy@{EVIL}"}), "subject"),
    invalid("subject-nul", message({"subject": "Hi\0there"}), "subject"),
    invalid("subject-smtp-smuggling", message({"subject": f"Hi{SMUGGLE}"}), "subject"),
    invalid(
        "from-name-crlf",
        message({"from": {"email": "news@shop.example.com", "name": f"Shop\r\nBcc: spy@{EVIL}"}}),
        "from.name",
    ),
    invalid(
        "from-name-nul",
        message({"from": {"email": "news@shop.example.com", "name": "Shop\0"}}),
        "from.name",
    ),
    invalid(
        "from-email-crlf",
        message({"from": {"email": f"news@shop.example.com\r\nBcc: spy@{EVIL}"}}),
        "from.email",
    ),
    invalid(
        "from-string-crlf",
        message({"from": f"news@shop.example.com\r\nBcc: spy@{EVIL}"}),
        "from.email",
    ),
    invalid(
        "from-email-smtp-smuggling",
        message({"from": {"email": f"news@shop.example.com{SMUGGLE}"}}),
        "from.email",
    ),
    invalid("from-email-no-at", message({"from": "news.shop.example.com"}), "from.email"),
    invalid("from-email-ip-literal", message({"from": "news@[127.0.0.1]"}), "from.email"),
    invalid(
        "reply-to-crlf",
        message({"reply_to": {"email": f"help@shop.example.com\r\nBcc: spy@{EVIL}"}}),
        "reply_to.email",
    ),
    invalid(
        "reply-to-name-lf",
        message({"reply_to": {"email": "help@shop.example.com", "name": f"Help\nBcc: spy@{EVIL}"}}),
        "reply_to.name",
    ),
    invalid(
        "header-value-crlf",
        with_header("X-Campaign", f"spring\r\nBcc: spy@{EVIL}"),
        "headers.X-Campaign",
    ),
    invalid(
        "header-value-bare-lf",
        with_header("X-Campaign", f"spring\nBcc: spy@{EVIL}"),
        "headers.X-Campaign",
    ),
    invalid("header-value-nul", with_header("X-Campaign", "spring\0"), "headers.X-Campaign"),
    invalid(
        "header-value-smtp-smuggling",
        with_header("X-Campaign", f"spring{SMUGGLE}"),
        "headers.X-Campaign",
    ),
    invalid("header-value-number", with_header("X-Campaign", 7), "headers.X-Campaign"),
    invalid("header-value-over-998", with_header("X-Campaign", "x" * 999), "headers.X-Campaign"),
    invalid(
        "header-name-crlf",
        with_header(f"X-A\r\nBcc: spy@{EVIL}\r\nX-B", "1"),
        f"headers.X-A\r\nBcc: spy@{EVIL}\r\nX-B",
    ),
    invalid(
        "header-name-colon", with_header("X-A: 1\r\nBcc", f"spy@{EVIL}"), "headers.X-A: 1\r\nBcc"
    ),
    invalid("header-name-space", with_header("X A", "1"), "headers.X A"),
    invalid("header-name-nul", with_header("X-A\0", "1"), "headers.X-A\0"),
    invalid("header-name-empty", with_header("", "1"), "headers."),
    invalid("header-name-non-ascii", with_header("X-Prüfung", "1"), "headers.X-Prüfung"),
    invalid("header-reserved-bcc", with_header("Bcc", f"spy@{EVIL}"), "headers.Bcc"),
    invalid(
        "header-reserved-dkim-signature",
        with_header("DKIM-Signature", "v=1; a=rsa-sha256; d=evil.example"),
        "headers.DKIM-Signature",
    ),
    invalid(
        "header-reserved-content-type-lowercase",
        with_header("content-type", "text/html"),
        "headers.content-type",
    ),
    invalid(
        "header-reserved-return-path",
        with_header("Return-Path", f"<spy@{EVIL}>"),
        "headers.Return-Path",
    ),
    invalid(
        "header-reserved-list-unsubscribe",
        with_header("List-Unsubscribe", f"<https://{EVIL}/>"),
        "headers.List-Unsubscribe",
    ),
    invalid("html-nul", message({"html": "<p>hi\0</p>"}), "html"),
    invalid("text-nul", message({"text": "hi\0"}), "text"),
    # -- templates: syntax errors and sandbox escapes (400), resource limits (422) -----------
    invalid(
        "template-syntax-error-html",
        message({"html": "<p>{% if %}</p>"}),
        "html",
        "invalid_template",
    ),
    invalid(
        "template-unclosed-subject",
        message({"subject": "Hi {{ first_name"}),
        "subject",
        "invalid_template",
    ),
    # There is nothing to load: include/import/extends are refused before any rendering.
    invalid(
        "template-include-file",
        message({"text": "{% include '/etc/passwd' %}"}),
        "text",
        "invalid_template",
    ),
    invalid(
        "template-import-module",
        message({"html": "{% import 'os' as os %}{{ os.system('id') }}"}),
        "html",
        "invalid_template",
    ),
    invalid(
        "template-extends",
        message({"html": "{% extends '/etc/passwd' %}"}),
        "html",
        "invalid_template",
    ),
    invalid(
        "sandbox-str-mro",
        message({"subject": "{{ ''.__class__.__mro__ }}"}),
        "subject",
        "invalid_template",
    ),
    invalid(
        "sandbox-subclasses",
        message({"subject": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}),
        "subject",
        "invalid_template",
    ),
    invalid(
        "sandbox-cycler-globals",
        message({"html": "{{ cycler.__init__.__globals__.os.popen('id').read() }}"}),
        "html",
        "invalid_template",
    ),
    invalid(
        "sandbox-template-reference",
        message({"text": "{{ self._TemplateReference__context }}"}),
        "text",
        "invalid_template",
    ),
    invalid(
        "sandbox-lipsum-globals",
        message({"text": "{{ lipsum.__globals__['os'] }}"}),
        "text",
        "invalid_template",
    ),
    invalid(
        "sandbox-str-format",
        message({"text": "{{ '{0.__class__}'.format(1) }}"}),
        "text",
        "invalid_template",
    ),
    invalid(
        "sandbox-attr-filter",
        message({"text": "{{ ''|attr('__class__') }}"}),
        "text",
        "invalid_template",
    ),
    invalid(
        "sandbox-list-mutation", message({"text": "{{ [1].pop() }}"}), "text", "invalid_template"
    ),
    too_expensive(
        "template-range-1e9", message({"html": "{% for i in range(10**9) %}x{% endfor %}"}), "html"
    ),
    too_expensive(
        "template-recursive-macro",
        message({"text": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"}),
        "text",
    ),
    too_expensive("template-5000-digit-number", message({"text": "{{ 10**5000 }}"}), "text"),
    # -- other fields --------------------------------------------------------------------
    invalid("send-at-90-days-ahead", message({"send_at": time.time() + 90 * 86400}), "send_at"),
    invalid("send-at-without-offset", message({"send_at": "2030-01-01T09:00:00"}), "send_at"),
    invalid("send-at-garbage", message({"send_at": "tomorrow"}), "send_at"),
    invalid("send-at-boolean", message({"send_at": True}), "send_at"),
    invalid("send-at-400-digit-integer", message({"send_at": int("9" * 400)}), "send_at"),
    invalid(
        "send-at-year-1-east-of-utc", message({"send_at": "0001-01-01T00:00:00+14:00"}), "send_at"
    ),
    invalid(
        "send-at-year-9999-west-of-utc",
        message({"send_at": "9999-12-31T23:59:59-14:00"}),
        "send_at",
    ),
    refused("lone-surrogate-in-subject", post(message({"subject": "Hi \ud800"})), 400),
    refused(
        "lone-surrogate-in-data",
        post(message({"recipients": [recipient(BLOCKED, data={"first_name": "\udfff"})]})),
        400,
    ),
    refused(
        "lone-surrogate-with-idempotency-key",
        post(
            message({"metadata": {"source": "\ud800"}}),
            **{"Idempotency-Key": "hostile-surrogate-1"},
        ),
        400,
    ),
    # -- Idempotency-Key -------------------------------------------------------------------
    refused(
        "idempotency-key-tab",
        post(message(), **{"Idempotency-Key": "key\twith-tab"}),
        400,
        "invalid_request",
        "Idempotency-Key",
    ),
    refused(
        "idempotency-key-256-chars",
        post(message(), **{"Idempotency-Key": "k" * 256}),
        400,
        "invalid_request",
        "Idempotency-Key",
    ),
    refused(
        "idempotency-key-non-ascii",
        post(message(), **{"Idempotency-Key": b"key-\xc3\xa9"}),
        400,
        "invalid_request",
        "Idempotency-Key",
    ),
    # aiohttp's HTTP parser refuses control characters in any header before Sluice runs:
    # a 400 in text/plain, not the JSON error body.
    Case(
        "idempotency-key-control-char",
        post(message(), **{"Idempotency-Key": b"key\x01"}),
        Refused(400, json_body=False),
    ),
    Case(
        "idempotency-key-reused-with-another-body",
        post(message({"subject": "Another subject"}), **{"Idempotency-Key": IDEMPOTENCY_KEY}),
        Refused(422, "idempotency_conflict", "Idempotency-Key"),
        before=(
            post(
                message({"recipients": [recipient(neighbour("idempotency"))]}),
                **{"Idempotency-Key": IDEMPOTENCY_KEY},
            ),
        ),
    ),
    # -- read endpoints ---------------------------------------------------------------------
    refused("get-message-garbage", get("/v1/messages/garbage"), 404, "not_found"),
    refused("get-message-nul", get("/v1/messages/%00%0d%0a"), 404, "not_found"),
    refused("get-message-unknown-id", get("/v1/messages/" + "a" * 26 + "-9999"), 404, "not_found"),
    refused(
        "get-message-no-auth", get("/v1/messages/garbage", Authorization=None), 401, "unauthorized"
    ),
    refused("events-limit-zero", get("/v1/events?limit=0"), 400, "invalid_request", "limit"),
    refused("events-limit-negative", get("/v1/events?limit=-1"), 400, "invalid_request", "limit"),
    refused("events-limit-1001", get("/v1/events?limit=1001"), 400, "invalid_request", "limit"),
    refused(
        "events-limit-superscript-digit",
        get("/v1/events?limit=%C2%B2"),
        400,
        "invalid_request",
        "limit",
    ),
    refused(
        "events-after-garbage", get("/v1/events?after=garbage"), 400, "invalid_request", "after"
    ),
    refused(
        "events-after-crlf", get("/v1/events?after=1-0%0d%0a"), 400, "invalid_request", "after"
    ),
    refused(
        "events-after-beyond-uint64",
        get("/v1/events?after=99999999999999999999-0"),
        400,
        "invalid_request",
        "after",
    ),
    # -- per recipient: one rejected, its valid neighbour queued ------------------------
    rejected(
        "rcpt-email-crlf", recipient(f"a@{DOMAIN}\r\nRCPT TO:<spy@{EVIL}>"), "invalid address"
    ),
    rejected("rcpt-email-bare-lf", recipient(f"a@{DOMAIN}\nBcc: spy@{EVIL}"), "invalid address"),
    rejected("rcpt-email-nul", recipient(f"a@{DOMAIN}\0spy@{EVIL}"), "invalid address"),
    rejected("rcpt-email-smtp-smuggling", recipient(f"a@{DOMAIN}{SMUGGLE}"), "invalid address"),
    rejected("rcpt-email-no-at", recipient(f"a.{DOMAIN}"), "invalid address"),
    rejected("rcpt-email-two-at", recipient(f"spy@{EVIL}@{DOMAIN}"), "invalid address"),
    rejected("rcpt-email-ip-literal", recipient("spy@[127.0.0.1]"), "invalid address"),
    rejected("rcpt-email-space", recipient(f"a b@{DOMAIN}"), "invalid address"),
    rejected("rcpt-email-300-chars", recipient(LONG_ADDRESS), "invalid address"),
    rejected(
        "rcpt-email-quoted-local-part", recipient(f'"spy@{EVIL}"@{DOMAIN}'), "invalid address"
    ),
    rejected("rcpt-email-angle-brackets", recipient(f"<spy@{EVIL}>"), "invalid address"),
    rejected("rcpt-email-single-label-domain", recipient("root@localhost"), "invalid address"),
    rejected("rcpt-email-empty", recipient(""), "invalid address"),
    rejected(
        "rcpt-name-crlf", recipient(f"b@{DOMAIN}", name=f"Bob\r\nBcc: spy@{EVIL}"), "invalid name"
    ),
    rejected("rcpt-name-nul", recipient(f"b@{DOMAIN}", name="Bob\0"), "invalid name"),
    rejected(
        "rcpt-contact-id-crlf",
        recipient(f"b@{DOMAIN}", contact_id="c-1\r\nX: y"),
        "invalid contact_id",
    ),
    rejected(
        "rcpt-timezone-unknown",
        recipient(f"b@{DOMAIN}", timezone="Mars/Olympus_Mons"),
        "unknown timezone",
    ),
    rejected(
        "rcpt-timezone-path",
        recipient(f"b@{DOMAIN}", timezone="../../../etc/passwd"),
        "unknown timezone",
    ),
    rejected(
        "rcpt-duplicate",
        recipient(neighbour("rcpt-duplicate").replace(DOMAIN, DOMAIN.upper())),
        "duplicate",
    ),
    rejected(
        "rcpt-undefined-template-variable",
        {
            "email": f"b@{DOMAIN}",
            "data": {"first_name": "Bob", "cart_url": CART},
        },  # no product_name
        "undefined template variable",
        changes={
            "subject": "{{ first_name | default('friend') }}, your {{ product_name }} is waiting"
        },
        ok={
            "email": neighbour("rcpt-undefined-template-variable"),
            "data": {"product_name": "Shoes", "cart_url": CART},
        },  # no first_name: the default applies
    ),
    rejected(
        "rcpt-data-crlf-into-subject",
        recipient(f"b@{DOMAIN}", data={"first_name": f"Bob\r\nBcc: spy@{EVIL}"}),
        "subject",
    ),
    rejected(
        "rcpt-data-smuggling-into-subject",
        recipient(f"b@{DOMAIN}", data={"product_name": SMUGGLE}),
        "subject",
    ),
    rejected(
        "rcpt-data-nul-into-body",
        recipient(f"b@{DOMAIN}", data={"cart_url": "https://shop.example.com/\0"}),
        "NUL",
    ),
    rejected(
        "rcpt-data-subject-over-500",
        recipient(f"b@{DOMAIN}", data={"product_name": "x" * 600}),
        "500",
    ),
    # -- allowed, but must be harmless on the wire ------------------------------------------
    defused(
        "body-smtp-smuggling-text",
        {
            "text": f"Hi\r\n.\r\nMAIL FROM:<x@{SMUGGLED}>\r\nRCPT TO:<y@{SMUGGLED}>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
        },
    ),
    defused(
        "body-smtp-smuggling-html-bare-lf",
        {"html": f"<p>Hi</p>\n.\nMAIL FROM:<x@{SMUGGLED}>\nRCPT TO:<y@{SMUGGLED}>\nDATA\n.\n"},
    ),
    defused(
        "body-smtp-smuggling-in-data",
        data={"cart_url": f"{CART}\r\n.\r\nRCPT TO:<y@{SMUGGLED}>\r\n"},
    ),
    defused("rcpt-name-address-list", name=f'Ada" <a@{SMUGGLED}>, y@{SMUGGLED}, "'),
    defused(
        "from-name-address-list",
        {"from": {"email": "news@shop.example.com", "name": f"Shop <x@{SMUGGLED}>, y@{SMUGGLED}"}},
    ),
    defused("header-value-at-998-chars", {"headers": {"X-Campaign": "x" * 998}}),
]


def test_at_least_30_distinct_hostile_cases() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30


async def test_the_base_messages_are_valid(api: TestClient[Any, Any]) -> None:
    """Control: unchanged, the messages the cases are built on are queued, so each
    refusal above is caused by the one hostile change."""
    for body in (message(), fuzz_base()):
        response = await api.post("/v1/messages", json=body)
        answer = await response.json()
        assert response.status == 202, answer
        assert [r["status"] for r in answer["results"]] == ["queued"], answer


# --- one real server under attack -----------------------------------------------------------


@dataclass
class Attack:
    served: Served
    sink: Sink
    expected: Counter[str] = field(default_factory=Counter)  # legitimate deliveries so far


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attack]:
    port = free_port()
    sink = Sink("127.0.0.1", port)
    controller = Controller(SinkHandler(sink), hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    served = start_serve(
        tmp_path_factory.mktemp("hostile") / "data",
        relay=sink.relay,
        workers=1,
        extra_env={"SLUICE_MAX_BODY_BYTES": str(BODY_LIMIT)},
    )
    yield Attack(served, sink)
    if served.stop(timeout=20) != 0:
        served.kill_group()
    controller.stop()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_request(attack: Attack, case: Case) -> None:
    attack.expected.update(case.deliveries())
    for call in case.before:
        status, raw = send(attack.served.url, call)
        assert status == 202, f"{case.id} (setup): {status} {raw[:300]!r}"
    status, raw = send(attack.served.url, case.call)
    assert_answer(case, status, raw)


CANARY = f"user0@canary.{DOMAIN}"


@pytest.fixture(scope="module")
def delivered(attack: Attack) -> list[Received]:
    """Send the canary after every case, wait for it and every expected neighbour."""
    status, raw = send(attack.served.url, post(fixture_batch(1, domain=f"canary.{DOMAIN}")))
    assert status == 202, raw
    expected = attack.expected + Counter([CANARY])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = Counter(r.lower() for m in attack.sink.snapshot() for r in m.rcpt_tos)
        if not expected - got:
            break
        time.sleep(0.1)
    time.sleep(0.5)  # anything queued before the canary has been sent by now; catch stragglers
    return attack.sink.snapshot()


def test_sink_holds_exactly_the_canary_and_the_valid_neighbours(
    attack: Attack, delivered: list[Received]
) -> None:
    got = Counter(r.lower() for m in delivered for r in m.rcpt_tos)
    expected = attack.expected + Counter([CANARY])
    assert got[CANARY] == 1, "the canary did not arrive"
    assert BLOCKED not in got, "a refused request was sent"
    assert not got - expected, f"unexpected deliveries: {sorted((got - expected).elements())}"
    assert not expected - got, f"missing deliveries: {sorted((expected - got).elements())}"
    assert all(len(m.rcpt_tos) == 1 for m in delivered)
    # the envelope sender is Sluice's signed VERP return path on the From domain, nothing else
    verp = re.compile(r"bounce\+[a-z2-7]{26}-\d+(\.\d+)?\.[a-z2-7]{10}@shop\.example\.com")
    assert all(verp.fullmatch(m.mail_from) for m in delivered), {m.mail_from for m in delivered}


def test_no_hostile_byte_on_the_wire(delivered: list[Received]) -> None:
    assert delivered
    for received in delivered:
        data = received.data
        where = received.rcpt_tos[0]
        assert EVIL.encode() not in data.lower(), where
        assert b"\0" not in data, where
        assert b"\n" not in data.replace(b"\r\n", b""), f"bare LF to {where}"
        assert b"\r" not in data.replace(b"\r\n", b""), f"bare CR to {where}"
        assert not any(SMUGGLED in r for r in received.rcpt_tos), where
        head = data.split(b"\r\n\r\n", 1)[0]
        assert not re.search(rb"^(bcc|mail from|rcpt to|data)\b", head, re.I | re.M), where
        msg = email.message_from_bytes(data, policy=email.policy.default)
        assert len(msg.get_all("From", [])) == 1, where
        assert len(msg.get_all("Subject", [])) == 1, where
        tos = email.utils.getaddresses([str(v) for v in msg.get_all("To", [])])
        assert [addr.lower() for _, addr in tos] == [where.lower()], f"To header of {where}: {tos}"
        froms = email.utils.getaddresses([str(msg["From"])])
        assert [addr for _, addr in froms] == ["news@shop.example.com"], froms


def test_smtp_commands_in_a_body_arrive_as_body_text(delivered: list[Received]) -> None:
    by_rcpt = {m.rcpt_tos[0].lower(): m.message for m in delivered}
    msg = by_rcpt[neighbour("body-smtp-smuggling-text")]
    assert msg["Subject"] == "Ada, your Trail running shoes is waiting"
    text = msg.get_body(("plain",)).get_content()
    assert f"MAIL FROM:<x@{SMUGGLED}>" in text
    assert "Subject: smuggled" in text
    html = by_rcpt[neighbour("body-smtp-smuggling-html-bare-lf")].get_body(("html",)).get_content()
    assert f"RCPT TO:<y@{SMUGGLED}>" in html


def test_no_line_over_998_octets_on_the_wire(delivered: list[Received]) -> None:
    for received in delivered:
        longest = max(len(line) for line in received.data.split(b"\r\n"))
        assert longest <= 998, f"a {longest}-octet line to {received.rcpt_tos[0]}"


def test_server_logged_no_unexpected_error(attack: Attack, delivered: list[Received]) -> None:
    log = attack.served.log()
    for needle in ("unexpected error on", "failed unexpectedly", "rejected before sending"):
        lines = [line for line in log.splitlines() if needle in line]
        assert not lines, "\n".join(lines[:10])


# --- template CPU bombs, each on a server of its own -----------------------------------------

CPU_BOMBS = {
    "nested-loops-1e9-iterations": message({"text": CPU_LOOP}),
    "huge-power": message({"text": "{{ 7 ** 99999999 }}"}),
}


@pytest.mark.parametrize("body", list(CPU_BOMBS.values()), ids=list(CPU_BOMBS))
def test_template_cpu_bomb_is_refused_promptly(serve_factory: Any, body: dict[str, Any]) -> None:
    """A template that would render for minutes is refused within seconds, not left spinning."""
    served = serve_factory(relay=None, workers=0)
    try:
        status, raw = send(served.url, post(body), timeout=5)
    except TimeoutError:
        pytest.fail("no answer within 5 s: the template is rendering without a budget")
    assert status < 500, raw
    if status == 202:
        assert [r["status"] for r in json.loads(raw)["results"]] == ["rejected"], raw
    else:
        answer = json.loads(raw)
        assert (status, answer["error"], answer.get("field")) == (
            422,
            "template_too_expensive",
            "text",
        )


# --- Hypothesis: random input in every field of the in-process app ---------------------------

# Paths of the fixture message's fields; ints index into lists.
FIELD_PATHS: list[tuple[str | int, ...]] = [
    ("from", "email"),
    ("from", "name"),
    ("reply_to", "email"),
    ("reply_to", "name"),
    ("subject",),
    ("html",),
    ("text",),
    ("category",),
    ("stream",),
    ("ip_pool",),
    ("send_at",),
    ("headers", "X-Campaign"),
    ("tags", 0),
    ("metadata", "source"),
    ("tracking", "opens"),
    ("recipients", 0, "email"),
    ("recipients", 0, "name"),
    ("recipients", 0, "contact_id"),
    ("recipients", 0, "timezone"),
    ("recipients", 0, "data", "first_name"),
    ("recipients", 0, "metadata", "segment"),
]

FRAGMENTS = [
    "\r\n",
    "\n",
    "\r",
    "\0",
    "\t",
    "\x0b",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "@",
    "<",
    ">",
    '"',
    ",",
    ":",
    ";",
    "\\",
    ".",
    "\r\n.\r\n",
    "Bcc: ",
    "MAIL FROM:<x@y.z>",
    "{{",
    "}}",
    "{%",
    "%}",
    "{{ first_name }}",
    "{{ nope }}",
    "{{ ''.__class__ }}",
    "|safe",
    "news@shop.example.com",
    "Europe/Istanbul",
    "2030-01-01T00:00:00Z",
    "é",
    "💌",
]

hostile_text = st.lists(
    st.one_of(st.text(st.characters(codec="utf-8"), max_size=8), st.sampled_from(FRAGMENTS)),
    max_size=6,
).map("".join)

# Any code point, lone surrogates included (JSON carries them as "\\ud800" escapes).
# (st.text with such an alphabet almost never draws one; a list of characters does.)
any_text = st.lists(st.characters() | st.characters(categories=["Cs"]), max_size=12).map("".join)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | hostile_text
    | any_text,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def fuzz_base() -> dict[str, Any]:
    body = message(
        {
            "headers": {"X-Campaign": "spring"},
            "tags": ["spring"],
            "metadata": {"source": "fuzz"},
            "ip_pool": "shared",
        }
    )
    body["recipients"] = [recipient(f"fuzz@{DOMAIN}", name="Ada", metadata={"segment": "a"})]
    return body


FUZZ_BASE = fuzz_base()


def mutated(changes: list[tuple[tuple[str | int, ...], Any]]) -> dict[str, Any]:
    body = copy.deepcopy(FUZZ_BASE)
    for path, value in changes:
        target: Any = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return body


async def assert_not_5xx(api: TestClient[Any, Any], data: bytes) -> None:
    response = await api.post(
        "/v1/messages", data=data, headers={"Content-Type": "application/json"}
    )
    raw = await response.read()
    assert response.status < 500, (response.status, raw[:300])
    answer = json.loads(raw)
    if response.status == 202:
        assert {r["status"] for r in answer["results"]} <= {"queued", "scheduled", "rejected"}
    else:
        assert 400 <= response.status < 500
        assert answer["error"] and answer["detail"], answer


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(FIELD_PATHS), hostile_text), min_size=1, max_size=4))
async def test_random_strings_in_every_field_never_cause_5xx(
    api: TestClient[Any, Any], changes: list[tuple[tuple[str | int, ...], str]]
) -> None:
    await assert_not_5xx(api, json.dumps(mutated(changes)).encode())


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(FIELD_PATHS), any_text | json_values), min_size=1, max_size=2
    )
)
async def test_random_json_values_in_every_field_never_cause_5xx(
    api: TestClient[Any, Any], changes: list[tuple[tuple[str | int, ...], Any]]
) -> None:
    await assert_not_5xx(api, json.dumps(mutated(changes)).encode())


@FUZZ
@given(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)))
async def test_random_bodies_never_cause_5xx(api: TestClient[Any, Any], data: bytes) -> None:
    await assert_not_5xx(api, data)
