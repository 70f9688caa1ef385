"""`POST /v3/mail/send`: the official `sendgrid` library, pointed at Sluice, sends real mail."""

from __future__ import annotations

from typing import Any

import pytest
from python_http_client.exceptions import BadRequestsError, UnauthorizedError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import CustomArg, Mail, Personalization, To

from gateway.api.sendgrid import to_sluice
from loadtests.harness import API_KEY
from tests.conftest import Sink
from tests.test_end_to_end import get


def two_personalizations() -> Mail:
    mail = Mail(
        from_email="news@shop.example.com",
        subject="{{first_name}}, your cart is waiting",
        html_content='<p>Hi {{first_name}}, <a href="https://shop.example.com/cart/{{cart}}">your cart</a></p>',
        plain_text_content="Hi {{first_name}}, see https://shop.example.com/cart/{{cart}}",
    )
    for email, name, cart in (
        ("ann@inbox.example.org", "Ann", "a1"),
        ("bob@inbox.example.org", "Bob", "b2"),
    ):
        personalization = Personalization()
        personalization.add_to(To(email))
        personalization.dynamic_template_data = {"first_name": name, "cart": cart}
        personalization.add_custom_arg(CustomArg("journey", "cart-reminder"))
        mail.add_personalization(personalization)
    return mail


@pytest.mark.slow
def test_the_sendgrid_library_sends_through_sluice(serve_factory: Any, sink: Sink) -> None:
    served = serve_factory(relay=sink.relay, workers=1)
    client = SendGridAPIClient(api_key=API_KEY, host=served.url)
    answer = client.send(two_personalizations())
    assert answer.status_code == 202
    batch_id = answer.headers["X-Message-Id"]
    received = {r.rcpt_tos[0]: r.message for r in sink.wait_for(2)}
    for email, name in (("ann@inbox.example.org", "Ann"), ("bob@inbox.example.org", "Bob")):
        message = received[email]
        assert message["Subject"] == f"{name}, your cart is waiting"
        assert f"Hi {name}," in message.get_body(("plain",)).get_content()
        assert "/t/c/" in message.get_body(("html",)).get_content(), "tracked like an API job"
    events = get(served, "/v1/events")["events"]
    [ann] = [e for e in events if e["type"] == "queued" and e["email"] == "ann@inbox.example.org"]
    assert ann["message_id"].startswith(f"{batch_id}-"), "X-Message-Id is the batch's id"
    event = get(served, f"/v1/messages/{ann['message_id']}")["events"][0]
    assert event["metadata"] == {"journey": "cart-reminder"}, "custom_args -> metadata"

    with pytest.raises(UnauthorizedError):
        SendGridAPIClient(api_key="wrong", host=served.url).send(two_personalizations())
    unsupported = two_personalizations()
    unsupported.template_id = "d-123"
    with pytest.raises(BadRequestsError) as refused:
        client.send(unsupported)
    assert b"template_id is not supported" in refused.value.body


def test_mapping_and_refusals() -> None:
    body = {
        "personalizations": [
            {"to": [{"email": "a@x.example", "name": "A"}], "substitutions": {"-name-": "Ann"}},
            {
                "to": [{"email": "b@x.example"}],
                "substitutions": {"-name-": "Bob"},
                "subject": "Other",
            },
        ],
        "from": {"email": "news@shop.example.com", "name": "Shop"},
        "subject": "Hello -name-",
        "content": [{"type": "text/plain", "value": "Dear -name-"}],
        "categories": ["cart", "eu"],
        "custom_args": {"campaign": "c1"},
        "asm": {"group_id": 42},
        "tracking_settings": {"click_tracking": {"enable": False}},
    }
    out = to_sluice(body)
    assert out["subject"] == "{{ __subject }}", "two different subjects: per recipient"
    assert out["text"] == "Dear {{ __sub0 }}"
    assert [r["data"]["__sub0"] for r in out["recipients"]] == ["Ann", "Bob"]
    assert [r["data"]["__subject"] for r in out["recipients"]] == ["Hello -name-", "Other"]
    assert out["category"] == "asm-42" and out["tags"] == ["cart", "eu"]
    assert out["metadata"] == {"campaign": "c1"} and out["stream"] == "marketing"
    assert out["tracking"] == {"opens": True, "clicks": False}
    for change, field in (
        ({"template_id": "d-1"}, "template_id"),
        ({"attachments": []}, "attachments"),
        (
            {
                "personalizations": [
                    {"to": [{"email": "a@x.example"}], "cc": [{"email": "c@x.example"}]}
                ]
            },
            "personalizations[0].cc",
        ),
        ({"content": [{"type": "text/calendar", "value": "x"}]}, "content[0]"),
        ({"frobnicate": 1}, "frobnicate"),
    ):
        with pytest.raises(Exception) as refused:
            to_sluice({**body, **change})
        assert getattr(refused.value, "field", None) == field, change
