"""Contact policy at accept time: suppression, frequency caps, quiet hours (real Redis).

Caps and quiet hours are exercised through ``gateway.accept`` with an injected clock
(``now``), the same code path as ``POST /v1/messages``; the HTTP routes are tested
through the real app.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import keys
from core.store import Store, open_store
from gateway import intake as accepting
from loadtests.harness import cart_reminder, fixture_batch
from suppression.policy import Policy, parse_policy

Client = TestClient[Any, Any]


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def body_for(
    count: int = 1,
    *,
    contact: str | None = "c-42",
    stream: str = "marketing",
    category: str | None = "cart_abandonment",
    timezone: str | None = None,
    send_at: float | None = None,
) -> dict[str, Any]:
    body = fixture_batch(count)
    body["stream"] = stream
    body["category"] = category
    for r in body["recipients"]:
        if contact is not None:
            r["contact_id"] = contact
        else:
            r.pop("contact_id", None)
        r.pop("timezone", None)
        if timezone is not None:
            r["timezone"] = timezone
    if send_at is not None:
        body["send_at"] = send_at
    return body


async def send(
    store: Store, body: dict[str, Any], now: float, policy: Policy
) -> list[dict[str, Any]]:
    prepared = accepting.prepare(body, now=now, policy=policy)
    response, _, _ = await accepting.accept(store, prepared, "", None, now=now)
    results: list[dict[str, Any]] = json.loads(response)["results"]
    return results


def policy_of(**doc: Any) -> Policy:
    return parse_policy(doc)


# --- frequency caps ---------------------------------------------------------------------


async def test_cap_drops_the_fourth_message_in_a_day_and_transactional_is_exempt(
    store: Store,
) -> None:
    policy = policy_of(
        frequency_caps=[
            {"category": "cart_abandonment", "limit": 3, "window_seconds": 86400, "action": "drop"}
        ]
    )
    now = at("2026-11-23T10:00:00")
    statuses = [(await send(store, body_for(), now + i, policy))[0]["status"] for i in range(5)]
    assert statuses == ["queued"] * 3 + ["capped"] * 2
    capped = (await send(store, body_for(), now + 10, policy))[0]
    assert (
        capped["reason"] == "frequency cap: at most 3 cart_abandonment messages per 86400 seconds"
    )
    found = await store.message(capped["message_id"])
    assert found is not None and found["status"] == "capped"
    assert found["events"][0]["type"] == "capped" and found["events"][0]["cap_limit"] == 3

    for i in range(5):  # transactional mail to the same contact always goes
        result = (await send(store, body_for(stream="transactional"), now + 20 + i, policy))[0]
        assert result["status"] == "queued"
    other = (await send(store, body_for(category="newsletter"), now + 30, policy))[0]
    assert other["status"] == "queued", "the rule counts its own category only"
    later = (await send(store, body_for(), now + 86400, policy))[0]
    assert later["status"] == "queued", "a rolling day later the first message left the window"


async def test_defer_schedules_at_the_earliest_moment_every_rule_allows(store: Store) -> None:
    policy = policy_of(
        frequency_caps=[
            {
                "category": "cart_abandonment",
                "limit": 1,
                "window_seconds": 3 * 86400,
                "action": "defer",
            },
            {"category": "*", "limit": 3, "window_seconds": 7 * 86400, "action": "defer"},
        ]
    )
    now = at("2026-11-23T10:00:00")
    first = (await send(store, body_for(), now, policy))[0]
    assert first["status"] == "queued"
    second = (await send(store, body_for(), now + 60, policy))[0]
    assert second["status"] == "scheduled"
    assert second["send_at"] == "2026-11-26T10:00:00.000Z"  # when the first leaves its 3 days
    news = (await send(store, body_for(category="newsletter"), now + 120, policy))[0]
    assert news["status"] == "queued"  # the week from the 23rd holds 3: cart, news, cart
    news = (await send(store, body_for(category="newsletter"), now + 180, policy))[0]
    # a 4th in the week ending on the 26th: deferred until the first cart leaves the week
    assert news["send_at"] == "2026-11-30T10:00:00.000Z", news
    third = (await send(store, body_for(), now + 240, policy))[0]
    # the cart rule allows the 29th 10:00; the weekly rule only once the 10:02 newsletter left
    assert third["send_at"] == "2026-11-30T10:02:00.000Z", third
    found = await store.message(third["message_id"])
    assert found is not None and found["events"][0]["held_by"] == "frequency_cap"


async def test_contact_identity_is_the_contact_id_else_the_address(store: Store) -> None:
    policy = policy_of(frequency_caps=[{"category": "*", "limit": 1, "window_seconds": 3600}])
    now = at("2026-11-23T10:00:00")
    by_id = body_for(contact="c-1")
    by_id["recipients"][0]["email"] = "one@inbox.example.org"
    assert (await send(store, by_id, now, policy))[0]["status"] == "queued"
    by_id["recipients"][0]["email"] = "other@inbox.example.org"  # same contact, new address
    assert (await send(store, by_id, now + 1, policy))[0]["status"] == "capped"
    anon = body_for(contact=None)
    anon["recipients"][0]["email"] = "anon@Inbox.Example.ORG"
    assert (await send(store, anon, now + 2, policy))[0]["status"] == "queued"
    anon["recipients"][0]["email"] = "anon@inbox.example.org"  # the domain is case-insensitive
    assert (await send(store, anon, now + 3, policy))[0]["status"] == "capped"


# --- the cap against a reference model --------------------------------------------------


def _window_ok(points: list[float], window: float, limit: int) -> bool:
    """The invariant: no window (p - W, p] ending at a send holds more than ``limit`` sends."""
    return all(sum(1 for q in points if p - window < q <= p) <= limit for p in points)


def reference(
    rules: list[dict[str, Any]], history: dict[int, list[float]], t: float, category: str
) -> tuple[str, float]:
    """(status, send time) for a marketing message of ``category`` due at ``t``."""
    applicable = [i for i, r in enumerate(rules) if r["category"] in ("*", category)]

    def allowed(moment: float) -> bool:
        return all(
            _window_ok([*history[i], moment], rules[i]["window_seconds"], rules[i]["limit"])
            for i in applicable
        )

    if any(
        rules[i]["action"] == "drop"
        and not _window_ok([*history[i], t], rules[i]["window_seconds"], rules[i]["limit"])
        for i in applicable
    ):
        return "capped", t
    candidates = sorted(
        {t} | {s + rules[i]["window_seconds"] for i in applicable for s in history[i]}
    )
    moment = next(c for c in candidates if c >= t and allowed(c))
    for i in applicable:
        history[i].append(moment)
    return ("queued" if moment <= t else "scheduled"), moment


rule_strategy = st.fixed_dictionaries(
    {
        "category": st.sampled_from(["*", "a", "b"]),
        "limit": st.integers(1, 3),
        "window_seconds": st.sampled_from([5, 10, 30, 60]),
        "action": st.sampled_from(["drop", "defer"]),
    }
)
step_strategy = st.tuples(
    st.integers(0, 20),  # seconds after the previous step
    st.sampled_from(["a", "b"]),  # category
    st.sampled_from(["marketing", "marketing", "transactional"]),
    st.sampled_from([0, 0, 0, 15, 45]),  # send_at this many seconds ahead
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rules=st.lists(
        rule_strategy,
        min_size=1,
        max_size=3,
        unique_by=lambda r: (r["category"], r["window_seconds"]),
    ),
    steps=st.lists(step_strategy, min_size=1, max_size=25),
)
def test_caps_agree_with_a_reference_model(
    redis_url: str, rules: list[dict[str, Any]], steps: list[tuple[int, str, str, int]]
) -> None:
    policy = policy_of(frequency_caps=rules)

    async def run() -> None:
        async with open_store(redis_url) as store:
            await store.redis.flushall()
            history: dict[int, list[float]] = {i: [] for i in range(len(rules))}
            now = at("2026-11-23T10:00:00")
            for gap, category, stream, ahead in steps:
                now += gap
                due = now + ahead if ahead else now
                body = body_for(category=category, stream=stream, send_at=due if ahead else None)
                [got] = await send(store, body, now, policy)
                if stream == "transactional":
                    assert got["status"] == ("scheduled" if ahead else "queued")
                    continue
                status, moment = reference(rules, history, due, category)
                if ahead and status == "queued":
                    status = "scheduled"  # due in the future: scheduled at its send_at
                assert got["status"] == status, (rules, steps, got)
                if status == "scheduled":
                    assert got["send_at"] == datetime.fromtimestamp(moment, UTC).isoformat(
                        timespec="milliseconds"
                    ).replace("+00:00", "Z"), (rules, steps, got)

    asyncio.run(run())


# --- quiet hours --------------------------------------------------------------------------

QUIET = {
    "start": "21:00",
    "end": "08:00",
    "default_timezone": "Europe/Istanbul",
    "ramp_seconds": 1800,
}


@pytest.mark.parametrize(
    ("timezone", "now", "window_end"),
    [
        # 23:00 NZDT (UTC+13) -> 08:00 NZDT the next morning
        ("Pacific/Auckland", "2026-11-23T10:00:00", "2026-11-23T19:00:00"),
        # 02:00 PST (UTC-8) -> 08:00 PST
        ("America/Los_Angeles", "2026-11-23T10:00:00", "2026-11-23T16:00:00"),
        # 23:00 TRT (UTC+3) -> 08:00 TRT
        ("Europe/Istanbul", "2026-11-23T20:00:00", "2026-11-24T05:00:00"),
        # 22:30 IST (UTC+5:30) -> 08:00 IST
        ("Asia/Kolkata", "2026-11-23T17:00:00", "2026-11-24T02:30:00"),
        # DST starts: 01:00 PST -> 08:00 PDT (UTC-7), an hour shorter night
        ("America/Los_Angeles", "2026-03-08T09:00:00", "2026-03-08T15:00:00"),
        # DST ends: 02:30 CEST -> 08:00 CET (UTC+1), an hour longer night
        ("Europe/Berlin", "2026-10-25T00:30:00", "2026-10-25T07:00:00"),
        # no zone given: the default (Istanbul), 21:30 TRT
        (None, "2026-11-23T18:30:00", "2026-11-24T05:00:00"),
    ],
)
async def test_quiet_hours_hold_mail_until_the_local_window_ends(
    store: Store, timezone: str | None, now: str, window_end: str
) -> None:
    policy = policy_of(quiet_hours=QUIET)
    results = await send(store, body_for(20, timezone=timezone), at(now), policy)
    end = at(window_end)
    times = [datetime.fromisoformat(r["send_at"]).timestamp() for r in results]
    assert all(r["status"] == "scheduled" for r in results), results
    assert all(end <= t < end + 1800 for t in times), (timezone, results[0]["send_at"])
    assert max(times) - min(times) > 600, "spread over the ramp, not all at 08:00:00"
    found = await store.message(results[0]["message_id"])
    assert found is not None
    event = found["events"][0]
    assert event["timezone"] == (timezone or "Europe/Istanbul")
    assert event["timezone_source"] == ("recipient" if timezone else "default")
    assert event["held_by"] == "quiet_hours"


async def test_quiet_hours_outside_the_window_send_now_and_apply_at_send_at(store: Store) -> None:
    policy = policy_of(quiet_hours=QUIET)
    noon = at("2026-11-23T09:00:00")  # 12:00 in Istanbul
    [now_result] = await send(store, body_for(timezone="Europe/Istanbul"), noon, policy)
    assert now_result["status"] == "queued"
    # send_at 22:00 local (19:00Z) falls in the window: held to 08:00 local (05:00Z)
    [later] = await send(
        store, body_for(timezone="Europe/Istanbul", send_at=at("2026-11-23T19:00:00")), noon, policy
    )
    assert (
        at("2026-11-24T05:00:00")
        <= datetime.fromisoformat(later["send_at"]).timestamp()
        < at("2026-11-24T05:30:00")
    )
    [transactional] = await send(
        store,
        body_for(timezone="Europe/Istanbul", stream="transactional"),
        at("2026-11-23T20:00:00"),
        policy,
    )
    assert transactional["status"] == "queued", "transactional mail ignores quiet hours"


async def test_a_window_within_one_day(store: Store) -> None:
    policy = policy_of(
        quiet_hours={"start": "12:00", "end": "14:00", "default_timezone": "UTC", "ramp_seconds": 0}
    )
    [held] = await send(store, body_for(), at("2026-11-23T12:30:00"), policy)
    assert held["send_at"] == "2026-11-23T14:00:00.000Z"
    [free] = await send(store, body_for(), at("2026-11-23T14:00:00"), policy)
    assert free["status"] == "queued"


# --- suppression at accept --------------------------------------------------------------


async def test_suppressed_addresses_are_not_queued(store: Store) -> None:
    now = at("2026-11-23T10:00:00")
    s = store.suppressions
    await s.add("user0@inbox.example.org", reason="hard_bounce", source="dsn:x")
    await s.add("user1@inbox.example.org", reason="unsubscribe", category="cart_abandonment")
    await s.add("user2@inbox.example.org", reason="unsubscribe")
    await s.add("user4@inbox.example.org", reason="soft_bounce_limit", source="soft-bounce:x")
    results = await send(store, body_for(5, contact=None), now, Policy())
    assert [r["status"] for r in results] == ["suppressed"] * 3 + ["queued", "suppressed"]
    assert results[0]["reason"] == "hard_bounce"
    assert results[4]["reason"] == "soft_bounce_limit"
    assert results[1]["reason"] == "unsubscribe (cart_abandonment)"
    found = await store.message(results[1]["message_id"])
    assert found is not None and found["status"] == "suppressed"
    assert found["events"][0] == {
        **found["events"][0],
        "type": "suppressed",
        "reason": "unsubscribe",
        "scope": "cart_abandonment",
    }
    # transactional mail ignores unsubscribes, never hard bounces nor soft ones that never end
    results = await send(store, body_for(5, contact=None, stream="transactional"), now, Policy())
    statuses = [r["status"] for r in results]
    assert statuses == ["suppressed", "queued", "queued", "queued", "suppressed"]
    # another category: only the global entries apply
    results = await send(store, body_for(5, contact=None, category="newsletter"), now, Policy())
    statuses = [r["status"] for r in results]
    assert statuses == ["suppressed", "queued", "suppressed", "queued", "suppressed"]


# --- the HTTP routes -----------------------------------------------------------------------


async def test_policy_routes_validate_and_round_trip(api: Client) -> None:
    got = await api.get("/v1/policy")
    assert await got.json() == {"frequency_caps": [], "quiet_hours": None}
    doc = {
        "frequency_caps": [
            {
                "category": "cart_abandonment",
                "limit": 1,
                "window_seconds": 259200,
                "action": "drop",
            },
            {"category": "*", "limit": 3, "window_seconds": 604800, "action": "defer"},
        ],
        "quiet_hours": {"start": "21:00", "end": "08:00", "default_timezone": "Europe/Istanbul"},
    }
    put = await api.put("/v1/policy", json=doc)
    assert put.status == 200, await put.text()
    expected = {**doc, "quiet_hours": {**doc["quiet_hours"], "ramp_seconds": 1800}}
    assert await (await api.get("/v1/policy")).json() == expected
    for bad, field in (
        (
            {"quiet_hours": {"start": "21:00", "end": "08:00", "default_timezone": "Mars/Olympus"}},
            "quiet_hours.default_timezone",
        ),
        ({"quiet_hours": {"start": "25:00", "end": "08:00"}}, "quiet_hours.start"),
        (
            {"frequency_caps": [{"category": "*", "limit": 0, "window_seconds": 60}]},
            "frequency_caps[0].limit",
        ),
        (
            {
                "frequency_caps": [
                    {"category": "*", "limit": 1, "window_seconds": 60, "action": "x"}
                ]
            },
            "frequency_caps[0].action",
        ),
        (
            {"frequency_caps": [{"category": "*", "limit": 1, "window_seconds": 60}] * 2},
            "frequency_caps[1]",
        ),
        ({"frequency_caps": "lots"}, "frequency_caps"),
        ({"extra": 1}, "policy.extra"),
    ):
        answer = await api.put("/v1/policy", json=bad)
        assert answer.status == 400, bad
        assert (await answer.json())["field"] == field, await answer.text()
    assert await (await api.get("/v1/policy")).json() == expected, (
        "a refused policy changes nothing"
    )


async def test_invalid_recipient_timezone_is_rejected_with_a_reason(api: Client) -> None:
    body = cart_reminder()
    body["recipients"][0]["timezone"] = "Europe/Atlantis"
    answer = await (await api.post("/v1/messages", json=body)).json()
    assert answer["results"][0]["status"] == "rejected"
    assert "unknown timezone 'Europe/Atlantis'" in answer["results"][0]["reason"]


async def test_suppression_routes(api: Client) -> None:
    put = await api.put(
        "/v1/suppressions/Someone@Example.COM",
        json={"reason": "unsubscribe", "category": "newsletter", "source": "crm"},
    )
    assert put.status == 201, await put.text()
    assert (await put.json())["email"] == "someone@example.com"
    assert (await api.put("/v1/suppressions/someone@example.com")).status == 201  # global, manual
    again = await api.put("/v1/suppressions/someone@example.com")
    assert again.status == 200, "already there: replaced"
    got = await (await api.get("/v1/suppressions/someone@example.com")).json()
    assert [(e["category"], e["reason"]) for e in got["suppressions"]] == [
        (None, "manual"),
        ("newsletter", "unsubscribe"),
    ]
    listing = await (await api.get("/v1/suppressions?limit=10")).json()
    assert listing["total"] == 2 and len(listing["suppressions"]) == 2
    assert (
        await api.delete("/v1/suppressions/someone@example.com?category=newsletter")
    ).status == 204
    assert (
        await api.delete("/v1/suppressions/someone@example.com?category=newsletter")
    ).status == 404
    assert (await api.delete("/v1/suppressions/someone@example.com")).status == 204
    assert (await api.get("/v1/suppressions/someone@example.com")).status == 404
    for path, field in (
        ("/v1/suppressions/not-an-address", "email"),
        ("/v1/suppressions/a%0d%0ab@example.com", "email"),
        ("/v1/suppressions?cursor=99999999", "cursor"),
        ("/v1/suppressions?limit=0", "limit"),
    ):
        answer = await api.get(path)
        assert answer.status == 400 and (await answer.json())["field"] == field, path
    bad = await api.put("/v1/suppressions/x@example.com", json={"reason": "because"})
    assert bad.status == 400 and (await bad.json())["field"] == "reason"


# --- the schedule ------------------------------------------------------------------------


async def test_due_mail_is_promoted_exactly_once_by_competing_nodes(
    store: Store, redis_url: str
) -> None:
    now = at("2026-11-23T10:00:00")
    body = body_for(500, contact=None)
    body["send_at"] = now + 60
    results = await send(store, body, now, Policy())
    assert {r["status"] for r in results} == {"scheduled"}
    assert (await store.gauges()).jobs == 0

    async def node() -> int:  # another gateway or worker process with its own connection
        async with open_store(redis_url) as other:
            moved = 0
            for _ in range(10):
                moved += await other.promote_due(now=now + 61, limit=37)
            return moved

    moved = await asyncio.gather(*(node() for _ in range(8)))
    assert sum(moved) == 500
    entries = await store.redis.xrange(keys.JOBS, "-", "+")
    ids = [msgpack.unpackb(fields[b"j"])["m"] for _, fields in entries]
    assert len(ids) == len(set(ids)) == 500, "every job once, none twice"
    assert (await store.gauges()).delayed == 0
