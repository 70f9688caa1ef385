"""SMTP submission: STARTTLS + AUTH with the API key, then the same path as an API job."""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from loadtests.harness import API_KEY, free_port
from loadtests.redis_cluster import Replicated
from mta.dkimkeys import KeyStore
from tests.conftest import Sink, need_tools
from tests.test_contact_policy_e2e import put

pytestmark = pytest.mark.slow

MESSAGE = (
    "From: Example Shop <news@shop.example.com>\r\n"
    "To: Aryan <aryan@inbox.example.org>\r\n"
    "Subject: Your cart {is} waiting\r\n"
    "X-Sluice-Category: cart_abandonment\r\n"
    'X-Sluice-Metadata: {"journey": "cart"}\r\n'
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/alternative; boundary=b1\r\n"
    "\r\n"
    "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHi, see https://shop.example.com/cart/7\r\n"
    '--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hi {{ name }}, <a href="https://shop.example.com/cart/7">cart</a></p>\r\n'
    "--b1--\r\n"
)


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # Sluice's self-generated certificate
    return context


def test_submission_delivers_signed_and_tracked(
    serve_factory: Any, sink: Sink, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    KeyStore(data).generate("shop.example.com", "s1")
    port = free_port()
    served = serve_factory(
        relay=sink.relay,
        workers=1,
        data_dir=data,
        extra_env={"SLUICE_SUBMISSION": f"127.0.0.1:{port}"},
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("crm.example")
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("news@shop.example.com", ["aryan@inbox.example.org"], MESSAGE)
        assert refused.value.smtp_code == 530, "no relaying without authentication"
        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.login("crm", API_KEY)  # AUTH is only offered after STARTTLS
        client.starttls(context=unverified())
        client.ehlo("crm.example")
        with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            client.login("crm", "not-the-key")
        assert wrong.value.smtp_code == 535
        client.login("crm", API_KEY)
        rejected = client.sendmail("news@shop.example.com", ["aryan@inbox.example.org"], MESSAGE)
        assert rejected == {}
        with pytest.raises(smtplib.SMTPDataError) as bare:
            client.sendmail(
                "news@shop.example.com",
                ["aryan@inbox.example.org"],
                MESSAGE.replace("Hi, see", "Hi,\nsee").encode(),
            )
        assert bare.value.smtp_code == 550 and b"bare CR or LF" in bare.value.smtp_error
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == ["aryan@inbox.example.org"]
    message = got.message
    assert message["DKIM-Signature"] is not None, "signed like an API job"
    assert message["Subject"] == "Your cart {is} waiting", "submitted text is not a template"
    html = message.get_body(("html",)).get_content()
    assert "/t/c/" in html and "{{ name }}" in html, "tracked, and braces kept as written"
    assert message["X-Sluice-Category"] is None, "Sluice's own headers are not delivered"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    assert put(served, "/v1/suppressions/gone@inbox.example.org", {"reason": "hard_bounce"}) == 201
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=unverified())
        client.login("crm", API_KEY)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as suppressed:
            client.sendmail("news@shop.example.com", ["gone@inbox.example.org"], MESSAGE)
        assert suppressed.value.recipients["gone@inbox.example.org"][0] == 550


def test_swaks_submits_too(serve_factory: Any, sink: Sink) -> None:
    need_tools("swaks")
    port = free_port()
    serve_factory(relay=sink.relay, workers=1, extra_env={"SLUICE_SUBMISSION": f"127.0.0.1:{port}"})
    done = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{port}",
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "crm",
            "--auth-password",
            API_KEY,
            "--from",
            "news@shop.example.com",
            "--to",
            "swaks@inbox.example.org",
            "--header",
            "Subject: from swaks",
            "--body",
            "Hello from swaks",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == ["swaks@inbox.example.org"]
    assert got.message["Subject"] == "from swaks"
    wrong = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{port}",
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "crm",
            "--auth-password",
            "nope",
            "--from",
            "news@shop.example.com",
            "--to",
            "swaks@inbox.example.org",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode != 0 and "535" in wrong.stdout


def test_capped_contacts_are_refused_at_rcpt(serve_factory: Any, sink: Sink) -> None:
    port = free_port()
    served = serve_factory(
        relay=sink.relay, workers=1, extra_env={"SLUICE_SUBMISSION": f"127.0.0.1:{port}"}
    )
    policy = {"frequency_caps": [{"category": "*", "limit": 1, "window_seconds": 3600}]}
    assert put(served, "/v1/policy", policy) == 200
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=unverified())
        client.login("crm", API_KEY)
        assert client.sendmail("news@shop.example.com", ["once@inbox.example.org"], MESSAGE) == {}
        with pytest.raises(smtplib.SMTPRecipientsRefused) as capped:
            client.sendmail("news@shop.example.com", ["once@inbox.example.org"], MESSAGE)
        code, text = capped.value.recipients["once@inbox.example.org"]
        assert code == 550 and b"capped" in text


def test_a_submission_the_replicas_have_not_confirmed_is_answered_250_not_451(
    serve_factory: Any, sink: Sink, tmp_path: Path
) -> None:
    """With ``SLUICE_REDIS_MIN_REPLICAS``, a batch on the primary but not on its replicas is
    a 503 on the API (a keyed retry settles it). SMTP has no such key: a 451 would make the
    client send the mail again, so submission answers 250 and the mail goes out once."""
    need_tools("redis-server")
    port = free_port()
    with Replicated() as redis_pair:
        serve_factory(
            relay=sink.relay,
            workers=1,
            extra_env={
                "SLUICE_SUBMISSION": f"127.0.0.1:{port}",
                "SLUICE_REDIS_URL": redis_pair.master_url,
                "SLUICE_REDIS_MIN_REPLICAS": "1",
            },
        )
        os.kill(redis_pair.replica_process.pid, signal.SIGSTOP)
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.starttls(context=unverified())
                client.login("crm", API_KEY)
                client.ehlo("crm.example")
                client.mail("news@shop.example.com")
                client.rcpt("aryan@inbox.example.org")
                code, reply = client.data(MESSAGE.encode())
        finally:
            os.kill(redis_pair.replica_process.pid, signal.SIGCONT)
        assert code == 250 and b"not yet confirmed by Redis replicas" in reply, reply
        [got] = sink.wait_for(1)
        assert got.rcpt_tos == ["aryan@inbox.example.org"]
