"""What goes on the wire: CRLF only, dot-stuffing, no SMTP smuggling through message bodies."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.harness import cart_reminder
from tests.conftest import Sink
from tests.test_end_to_end import post, wait_status

pytestmark = pytest.mark.slow

SMUGGLED = (
    "MAIL FROM:<attacker@evil.example>\r\nRCPT TO:<victim@evil.example>\r\nDATA\r\nSmuggled\r\n"
)
# The end-of-data variants of the SMTP smuggling research (2023): bare LF and bare CR forms.
ENDINGS = ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r", "\r\r\n.\r\n", "\r\n.\r\n"]


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")


@pytest.mark.parametrize("ending", ENDINGS, ids=[repr(e) for e in ENDINGS])
def test_smuggling_sequences_arrive_as_one_message_with_crlf_only(
    ending: str, serve_factory: Any, sink: Sink
) -> None:
    served = serve_factory(relay=sink.relay, workers=1)
    body = cart_reminder()
    text = f"Hello{ending}{SMUGGLED}.\r\n..starts with two dots\n.starts with a dot\nend"
    body["text"] = text
    body["html"] = f"<p>Hello</p>{ending}{SMUGGLED}<p>.</p>\n.dot line"
    body["tracking"] = {"opens": False, "clicks": False}  # the HTML as written
    status, answer = post(served, "/v1/messages", body)
    assert status == 202, answer
    message_id = answer["results"][0]["message_id"]
    assert wait_status(served, message_id, "delivered")["status"] == "delivered"

    received = sink.wait_for(1)
    assert len(received) == 1, "exactly one message, no smuggled second one"
    got = received[0]
    assert got.rcpt_tos == ["aryan@inbox.example.org"]
    assert "evil.example" not in got.mail_from
    raw = got.data
    assert b"\r" not in raw.replace(b"\r\n", b""), "bare CR on the wire"
    assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF on the wire"
    msg = got.message
    assert _lines(msg.get_body(("plain",)).get_content()) == _lines(text)
    html = msg.get_body(("html",)).get_content()
    assert _lines(html)[-1] == ".dot line"
    assert sink.snapshot() == received  # nothing else arrived later
