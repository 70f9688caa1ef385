"""The request schema's shortcuts hold to what they stand for."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.schemas import _size_bound

_FLAT = st.dictionaries(
    st.text(max_size=20),
    st.one_of(
        st.text(max_size=200),
        st.none(),
        st.booleans(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(2**70), max_value=2**70),
    ),
    max_size=12,
)


@given(_FLAT)
def test_the_size_bound_of_recipient_data_is_never_below_its_json(value: dict[str, Any]) -> None:
    bound = _size_bound(value)
    encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if bound is not None:
        assert len(encoded.encode("utf-8", "surrogatepass")) <= bound


def test_nested_data_is_measured_exactly() -> None:
    assert _size_bound({"items": [1, 2]}) is None
    assert _size_bound({"n": 2**80}) is None
