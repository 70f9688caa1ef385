"""Tracked links benchmark: a sealed token per link (before) against link tokens (now).

Run::

    .venv/bin/python -m loadtests.bench_links [--messages N] [--rounds R] [--json]

One process, one core. The fixture cart reminder rendered for 100 recipients
(17 links: 16 written in the template, the cart link from recipient data), all
rendered before the clock starts; tokens under a fresh key.

Rows, each the best of ``--rounds`` rounds, interleaved so that a noisy neighbour
hurts every row alike, in microseconds per operation:

- **seal, one link**: ``Tokens.seal("click", message_id, url)``, what every link
  cost before (AEAD with a random nonce, the URL inside, base64url).
- **link, one link**: ``Tokens.link(message_token, index)``, what a link in the
  batch's table costs now (keyed BLAKE2b of token and index, base64url).
- **message, before**: rewriting the HTML part with a sealed token per link and
  the pixel with a sealed open token, as ``mta.worker`` did.
- **message, now**: the same through ``tracking.links.MessageLinks`` with the
  batch's link table: one sealed message token, 16 link tokens, one sealed click
  token for the cart link.

Also the size of the HTML part either way (link tokens carry no URL).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from loadtests.harness import fixture_batch, print_result
from mta.render import Templates
from tracking.links import MessageLinks, add_pixel, rewrite_links, static_links, url_indexes
from tracking.tokens import Tokens

PUBLIC_URL = "https://track.shop.example.com"
BATCH_ID = "agrareeadmi5kof6mrqhemz3z4"


def micros(work: Callable[[int], object], count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        work(i)
    return (time.perf_counter() - started) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    body = fixture_batch(100)
    templates = Templates(body["subject"], body["html"], body.get("text"))
    parts = [templates.render(r["data"]).html or "" for r in body["recipients"]]
    table = url_indexes(static_links(parts[1], body["html"]))
    tokens = Tokens([(1, bytes(range(32)))])
    message_token = tokens.seal_message(f"{BATCH_ID}-1")
    url = next(iter(table))

    def before(i: int) -> str:
        message_id = f"{BATCH_ID}-{i}"

        def tracked(url: str) -> str:
            return f"{PUBLIC_URL}/t/c/{tokens.seal('click', message_id, url)}"

        markup, _ = rewrite_links(parts[i % 100], tracked)
        return add_pixel(markup, f"{PUBLIC_URL}/t/o/{tokens.seal('open', message_id)}")

    def now(i: int) -> str:
        links = MessageLinks(tokens, PUBLIC_URL, f"{BATCH_ID}-{i}", table)
        markup, _ = rewrite_links(parts[i % 100], links.click_url)
        return add_pixel(markup, links.open_url())

    n = args.messages
    rows: dict[str, tuple[Callable[[int], object], int]] = {
        "seal, one link": (lambda i: tokens.seal("click", f"{BATCH_ID}-{i}", url), n * 17),
        "link, one link": (lambda i: tokens.link(message_token, i % 16), n * 17),
        "message, before": (before, n),
        "message, now": (now, n),
    }
    best = dict.fromkeys(rows, float("inf"))
    for _ in range(args.rounds):
        for name, (work, count) in rows.items():
            best[name] = min(best[name], micros(work, count))
    result: dict[str, object] = {f"{name} (us)": round(v, 2) for name, v in best.items()}
    result["links in table / in message"] = f"{len(table)} / {len(rewrite_links(parts[1], str)[1])}"
    result["html part bytes, before / now"] = f"{len(before(1))} / {len(now(1))}"
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
