"""Locust load test of a running ``sluice serve``: upstream tools sending batches, recipients
opening and clicking.

Headless, against a gateway started on the same machine (see the README)::

    SLUICE_API_KEY=... SLUICE_DATA_DIR=./sluice-data .venv/bin/locust \\
        -f loadtests/locustfile.py --headless -u 40 -r 10 -t 60s --host http://127.0.0.1:8025

Two kinds of users:

- ``Sender`` (an upstream marketing tool): POSTs the cart-reminder fixture to ``/v1/messages`` in
  batches of ``SLUICE_LOCUST_BATCH`` (default 100) personalized recipients, each batch with its
  own ``Idempotency-Key`` and fresh addresses, and now and then reads one message's status.
  Every answer must be 202 with one result per recipient.
- ``Reader`` (a recipient's mail client): fetches the open pixel and follows a tracked link of a
  message a ``Sender`` queued. Its tokens are sealed with the data dir's tracking keys exactly as
  the delivery worker seals them, so it needs ``SLUICE_DATA_DIR`` (the gateway's data dir, on
  this machine); without it only ``Sender`` runs.

Delivery is not part of this load: start ``sluice serve`` with ``--workers 0`` to measure the
API alone, or with a relay (``python -m loadtests.fault_sink --listen 127.0.0.1:2525`` and
``--relay 127.0.0.1:2525``) to measure the API while workers deliver.
"""

from __future__ import annotations

import itertools
import os
import random
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

from loadtests.harness import fixture_batch
from tracking.tokens import Tokens, load_keys

BATCH = int(os.environ.get("SLUICE_LOCUST_BATCH", "100"))
API_KEY = os.environ.get("SLUICE_API_KEY", "")
DATA_DIR = os.environ.get("SLUICE_DATA_DIR", "")
CLICKED_URL = "https://shop.example.com/p/100?utm_source=email&utm_campaign=cart"

# Message ids a Sender queued, for Readers to open and click (shared within this process).
QUEUED: deque[str] = deque(maxlen=50_000)
_RUN = uuid.uuid4().hex[:8]  # fresh addresses on every run: no frequency cap or suppression hit
_NUMBERS = itertools.count()
_TOKENS: Tokens | None = None


@events.test_start.add_listener
def _check_setup(environment: Any, **_: Any) -> None:
    global _TOKENS
    if not API_KEY:
        raise SystemExit("set SLUICE_API_KEY to the gateway's API key")
    if DATA_DIR:
        _TOKENS = Tokens(load_keys(Path(DATA_DIR)))


class Sender(HttpUser):
    """An upstream tool: a batch of personalized recipients every 0.5-1.5 s."""

    weight = 1
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {API_KEY}"

    @task(10)
    def send_batch(self) -> None:
        start = next(_NUMBERS) * BATCH
        body = fixture_batch(BATCH, start=start, domain=f"{_RUN}.inbox.example.org")
        with self.client.post(
            "/v1/messages",
            json=body,
            headers={"Idempotency-Key": f"{_RUN}-{start}"},
            name=f"/v1/messages [{BATCH} recipients]",
            catch_response=True,
        ) as answer:
            if answer.status_code != 202:
                answer.failure(f"{answer.status_code}: {answer.text[:200]}")
                return
            results = answer.json()["results"]
            if len(results) != BATCH:
                answer.failure(f"{len(results)} results for {BATCH} recipients")
                return
            QUEUED.extend(r["message_id"] for r in results if r["message_id"])

    @task(1)
    def read_status(self) -> None:
        if QUEUED:
            self.client.get(
                f"/v1/messages/{random.choice(QUEUED)}", name="/v1/messages/{message_id}"
            )


class Reader(HttpUser):
    """A recipient's mail client: loads the pixel, and one time in three clicks a link."""

    weight = 3
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        if _TOKENS is None:
            self.stop()  # no data dir: no tokens to open

    @task(3)
    def open_pixel(self) -> None:
        if QUEUED and _TOKENS is not None:
            token = _TOKENS.seal("open", random.choice(QUEUED))
            with self.client.get(
                f"/t/o/{token}", name="/t/o/{token}", catch_response=True
            ) as answer:
                if answer.headers.get("Content-Type") != "image/gif":
                    answer.failure(f"not a GIF: {answer.headers.get('Content-Type')}")

    @task(1)
    def click(self) -> None:
        if QUEUED and _TOKENS is not None:
            token = _TOKENS.seal("click", random.choice(QUEUED), CLICKED_URL)
            with self.client.get(
                f"/t/c/{token}", name="/t/c/{token}", allow_redirects=False, catch_response=True
            ) as answer:
                if answer.status_code != 302 or answer.headers.get("Location") != CLICKED_URL:
                    answer.failure(f"{answer.status_code} to {answer.headers.get('Location')}")
