"""The HTTP API in-process against a real Redis: what an upstream tool sees."""

from __future__ import annotations

import time
from typing import Any

from aiohttp.test_utils import TestClient

from core.store import Store
from loadtests.harness import cart_reminder, fixture_batch

Client = TestClient[Any, Any]


async def test_accept_answers_per_recipient_and_queues_one_job_each(
    api: Client, store: Store
) -> None:
    response = await api.post("/v1/messages", json=fixture_batch(3))
    assert response.status == 202
    body = await response.json()
    assert [r["status"] for r in body["results"]] == ["queued"] * 3
    assert [r["index"] for r in body["results"]] == [0, 1, 2]
    assert (await store.gauges()).jobs == 3
    # content stored once for the batch
    assert (
        await store.redis.exists(store.shards.home(body["batch_id"]).keys.batch(body["batch_id"]))
        == 1
    )
    message = await (await api.get(f"/v1/messages/{body['results'][1]['message_id']}")).json()
    assert message["status"] == "queued"
    assert message["events"][0]["type"] == "queued"
    assert message["events"][0]["email"] == "user1@inbox.example.org"
    assert message["events"][0]["contact_id"] == "c-1"
    assert message["events"][0]["category"] == "cart_abandonment"


async def test_idempotency_key_replays_first_answer_and_queues_nothing_new(
    api: Client, store: Store
) -> None:
    body = fixture_batch(5)
    headers = {"Idempotency-Key": "cart-8f3a2c-attempt"}
    first = await api.post("/v1/messages", json=body, headers=headers)
    second = await api.post("/v1/messages", json=body, headers=headers)
    assert first.status == second.status == 202
    assert await first.json() == await second.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert (await store.gauges()).jobs == 5

    body["subject"] = "Another subject"
    conflict = await api.post("/v1/messages", json=body, headers=headers)
    assert conflict.status == 422
    assert (await conflict.json())["field"] == "Idempotency-Key"
    assert (await store.gauges()).jobs == 5


async def test_send_at_in_future_is_scheduled_not_queued(api: Client, store: Store) -> None:
    body = fixture_batch(2)
    body["send_at"] = time.time() + 3600
    answer = await (await api.post("/v1/messages", json=body)).json()
    assert {r["status"] for r in answer["results"]} == {"scheduled"}
    assert all(r["send_at"].endswith("Z") for r in answer["results"])
    assert (await store.gauges()).jobs == 0
    assert (await store.gauges()).delayed == 2


async def test_mail_scheduled_weeks_ahead_keeps_its_content_until_it_is_sent(
    api: Client, store: Store
) -> None:
    """``send_at`` may be 30 days ahead; the batch's content and message records must outlive
    it by the usual retention (7 days: retries, status), or the job finds nothing to send."""
    body = fixture_batch(1)
    ahead = 25 * 86400
    body["send_at"] = time.time() + ahead
    answer = await (await api.post("/v1/messages", json=body)).json()
    [result] = answer["results"]
    assert result["status"] == "scheduled"
    week = 7 * 86400
    assert (
        await store.redis.ttl(store.shards.home(answer["batch_id"]).keys.batch(answer["batch_id"]))
        >= ahead + week - 60
    )
    assert (
        await store.redis.ttl(
            store.shard_of(result["message_id"]).keys.message(result["message_id"])
        )
        >= ahead + week - 60
    )
    now = await (await api.post("/v1/messages", json=fixture_batch(1, start=5))).json()
    assert (
        await store.redis.ttl(store.shards.home(now["batch_id"]).keys.batch(now["batch_id"]))
        <= week + 60
    ), "no longer than needed"


async def test_undefined_variable_rejects_only_that_recipient(api: Client) -> None:
    body = cart_reminder()
    body["recipients"] = [
        {
            "email": "has@inbox.example.org",
            "data": {"product_name": "Shoes", "cart_url": "https://x.example/c"},
        },
        {"email": "lacks@inbox.example.org", "data": {"cart_url": "https://x.example/c"}},
    ]
    results = (await (await api.post("/v1/messages", json=body)).json())["results"]
    assert results[0]["status"] == "queued"
    assert results[1]["status"] == "rejected"
    assert "product_name" in results[1]["reason"]
    assert results[1]["message_id"] is None


async def test_events_are_paged_with_a_cursor(api: Client) -> None:
    await api.post("/v1/messages", json=fixture_batch(5))
    page1 = await (await api.get("/v1/events", params={"limit": "3"})).json()
    page2 = await (
        await api.get("/v1/events", params={"limit": "3", "after": page1["next"]})
    ).json()
    page3 = await (await api.get("/v1/events", params={"after": page2["next"]})).json()
    events = page1["events"] + page2["events"]
    assert len(page1["events"]) == 3
    # oldest first (over shards, by time: recipients of one batch may interleave)
    assert sorted(e["email"] for e in events) == [f"user{i}@inbox.example.org" for i in range(5)]
    assert len({e["id"] for e in events}) == 5
    assert page3 == {"events": [], "next": page2["next"]}


async def test_auth_is_required_on_v1_only(api: Client) -> None:
    no_auth = {"Authorization": ""}
    assert (await api.get("/v1/events", headers=no_auth)).status == 401
    assert (await api.get("/v1/events", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await api.get("/healthz", headers=no_auth)).status == 200


async def test_openapi_describes_every_route(api: Client) -> None:
    doc = await (await api.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    routes = {(r.method.lower(), r.resource.canonical) for r in api.app.router.routes()}  # type: ignore[union-attr]
    for method, path in routes:
        if method == "head" or path.startswith("/ui"):  # the console is HTML, not the API
            continue
        assert method in doc["paths"][path], f"{method.upper()} {path} is not in /openapi.json"
    required = doc["components"]["schemas"]["SendRequest"]["required"]
    assert set(required) == {"from", "subject", "stream", "recipients"}


async def test_metrics_count_requests_and_queue(api: Client) -> None:
    await api.post("/v1/messages", json=fixture_batch(4))
    text = await (await api.get("/metrics")).text()
    assert 'sluice_http_requests_total{route="/v1/messages",status="202"} 1' in text
    assert 'sluice_api_recipients_total{status="queued"} 4' in text
    assert "sluice_queue_jobs 4" in text


async def test_hostile_cursors_and_times_are_refused_not_failed(api: Client) -> None:
    """A cursor of the form pages over shards use is read on one shard too; times outside
    what a calendar holds are a 400."""
    accepted = await api.post("/v1/messages", json=fixture_batch(2))
    assert accepted.status == 202
    everything = await (await api.get("/v1/events", params={"after": "0-0"})).json()
    assert [e["type"] for e in everything["events"]] == ["queued", "queued"]
    for cursor in ("v1.0.5-0", "v1.0."):  # read as "from the start" on one shard
        answer = await api.get("/v1/events", params={"after": cursor})
        assert answer.status == 200, (cursor, await answer.text())
        assert (await answer.json())["events"] == everything["events"], cursor
    answer = await api.get("/v1/events", params={"after": "v1.99999999999999999999.0-0"})
    assert answer.status == 400, await answer.text()
    for params in (
        {"to": "9999-12-31T23:30:00Z", "resolution": "hour"},
        {"from": "0001-01-01"},
        {"to": "9" * 40},
    ):
        answer = await api.get("/v1/stats", params=params)
        assert answer.status == 400, (params, await answer.text())
