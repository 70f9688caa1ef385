"""Composing benchmark: what one message costs a delivery worker before it reaches the wire,
in units of the raw RSA-2048 signature measured in the same run.

Run::

    .venv/bin/python -m loadtests.bench_compose [--messages N] [--rounds R] [--json]

One process, one core. The fixture cart reminder for 1,000 personalized recipients, one
batch as the API validates it: its ``MessageBuilder`` (``mta.compose``) planned once, each message built as the worker
builds it (``MessageLinks`` with the batch's link table and a fresh tracking key, the signed
Message-ID and List-Unsubscribe header fields given as ``Extras``), with an RSA-2048 key made
by ``KeyStore.generate``. ``bench_e2e`` is the figure that counts; this one is steadier (no
sockets, no other process) and says where a message's microseconds go.

Rows, each the best of ``--rounds`` rounds of ``--messages`` messages, rounds interleaved:

- **raw RSA-2048**: the RSA operation alone (``bench_dkim``'s baseline).
- **message, RSA-2048** / **message, unsigned**: ``MessageBuilder.build``, whole.
- **signing beyond the RSA operation**: the first minus the second and the raw signature
  (body hash, header canonicalization, folding, base64).
- the steps of an unsigned build: the HTML part's values (its template rendered with
  fences), its slots (link tokens, the pixel, the tag holding the cart URL), its lines
  (quoted-printable, stuffing and canonical form of the lines holding a slot), the text part's
  values and lines, the header block.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.jobs import Job
from gateway.schemas import parse_send_request
from loadtests.bench_dkim import raw_rsa
from loadtests.bench_links import micros
from loadtests.harness import fixture_batch, print_result
from mta.compose import Extras, MessageBuilder
from mta.dkim import SigningKey
from mta.dkimkeys import KeyStore
from mta.render import Templates
from tracking.links import MessageLinks, url_indexes
from tracking.tokens import Tokens

BATCH_ID = "agrcbwkro6ikatlngffnjid5mi"
PUBLIC_URL = "https://track.shop.example.com"
RECIPIENTS = 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as data_dir:  # the key, read
        store = KeyStore(Path(data_dir))
        store.generate("shop.example.com", "s1", "rsa", 2048)
        [(key, private)] = store.active_keys()["shop.example.com"]
    keys = [SigningKey.of(key, private)]
    request = parse_send_request(fixture_batch(RECIPIENTS), now=time.time())  # as the API does
    batch = request.content
    builder = MessageBuilder(
        batch, Templates(batch.subject, batch.html, batch.text), text_links=False
    )
    assert builder.fast, "the fixture takes the compiled way"
    table = url_indexes(list(builder.link_table))
    tokens = Tokens([(1, bytes(range(32)))])
    jobs = [
        Job(
            message_id=f"{BATCH_ID}-{i}",
            batch_id=BATCH_ID,
            position=i,
            email=r.email,
            accepted_at=1.0,
            name=r.name,
            data=r.data,
        )
        for i, r in enumerate(request.recipients)
    ]
    extras = Extras(
        f"{BATCH_ID}-0.c2lnbmF0dXJl@shop.example.com",
        {
            "List-Unsubscribe": f"<{PUBLIC_URL}/t/u/AQGtoken>, <mailto:unsubscribe+x@shop.example.com>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )

    def links(i: int) -> MessageLinks:
        return MessageLinks(tokens, PUBLIC_URL, jobs[i % RECIPIENTS].message_id, table)

    def build(signing: list[SigningKey]) -> Callable[[int], object]:
        return lambda i: builder.build(jobs[i % RECIPIENTS], links(i), signing, extras)

    # the steps, on inputs made before the clock starts (the private parts are the steps)
    html, text = builder._html, builder._text
    assert html is not None and text is not None
    text_part, html_part = builder._parts
    data = [job.data for job in jobs]
    html_values = [html.fenced.split(d) or [] for d in data]
    text_values = [text.split(d) or [] for d in data]
    message_links = [links(i) for i in range(RECIPIENTS)]
    for each in message_links:
        each.open_url()  # the message token: counted in the slots of the first round only
    html_slots = [
        html.fill(v, message_links[i], builder.link_table) for i, v in enumerate(html_values)
    ]

    def lines(part: Any, slots: list[list[str]]) -> Callable[[int], object]:
        return lambda i: part.lines(slots[i % RECIPIENTS], [], [], alone=False)

    rows: dict[str, Callable[[int], object]] = {
        "raw RSA-2048": raw_rsa(private),  # type: ignore[arg-type]
        "message, RSA-2048": build(keys),
        "message, unsigned": build([]),
        "html values": lambda i: html.fenced.split(data[i % RECIPIENTS]),
        "html slots": lambda i: html.fill(
            html_values[i % RECIPIENTS], links(i), builder.link_table
        ),
        "html lines": lines(html_part, html_slots),
        "text values": lambda i: text.split(data[i % RECIPIENTS]),
        "text lines": lines(text_part, text_values),
        "header block": lambda i: builder.head.lines(jobs[i % RECIPIENTS], "subject", extras),
    }
    best = dict.fromkeys(rows, float("inf"))
    for _ in range(args.rounds):
        for name, work in rows.items():
            work(0)
            best[name] = min(best[name], micros(work, args.messages))
    raw = best["raw RSA-2048"]
    beyond = best["message, RSA-2048"] - best["message, unsigned"] - raw
    result: dict[str, Any] = {"signed_message_bytes": len(build(keys)(0).data)}  # type: ignore[attr-defined]
    for name, us in [*best.items(), ("signing beyond the RSA operation", beyond)]:
        result[f"{name} (us)"] = round(us, 1)
    result["message, RSA-2048, in raw signatures"] = round(best["message, RSA-2048"] / raw, 2)
    result["message, unsigned, in raw signatures"] = round(best["message, unsigned"] / raw, 2)
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
