"""Schemathesis against the real ``sluice serve``: every operation of ``/openapi.json`` is called
with generated requests, valid and invalid. No answer may be a 5xx, and every answer must match
the schema (status code documented, body and content type as declared), and a request that
breaks the schema must be refused with a 4xx.

One check is left out: schemathesis's "schema-valid request accepted". The API validates what a
JSON schema cannot say (an address must have a deliverable domain, a page cursor must come from
an earlier page, quiet hours must not start and end at the same minute), so a schema-valid
request can rightly get a 400.

The number of examples per operation is bounded so the suite stays fast: 25, or
``SLUICE_FUZZ_EXAMPLES`` for a deeper run by hand.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation.case import Case

from gateway.api.openapi import openapi_document
from loadtests.harness import Served, served

pytestmark = pytest.mark.slow

FUZZ_EXAMPLES = int(os.environ.get("SLUICE_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def gateway() -> Iterator[Served]:
    with served() as server:
        yield server


# The document the gateway serves at /openapi.json (a test below checks they are the same).
# The live event stream never ends: tests/test_events_stream.py calls it.
schema = schemathesis.openapi.from_dict(openapi_document("http://127.0.0.1")).exclude(
    path="/v1/events/stream"
)


def test_the_fuzzed_document_is_the_served_one(gateway: Served) -> None:
    with urllib.request.urlopen(gateway.url + "/openapi.json") as answer:
        served_document = json.load(answer)
    served_document.pop("servers", None)
    local = openapi_document("http://127.0.0.1")
    local.pop("servers", None)
    assert served_document == local


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_5xx_and_every_answer_matches_the_schema(case: Case, gateway: Served) -> None:
    case.call_and_validate(
        base_url=gateway.url,
        headers={"Authorization": gateway.headers["Authorization"]},
        excluded_checks=[positive_data_acceptance],
    )
