"""The store packs Redis commands with hiredis's C packer: the same bytes as redis-py's."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from core.store.store import _HiredisPacking, _TcpConnection

_ARG = st.one_of(
    st.text(max_size=30),
    st.binary(max_size=30),
    st.integers(min_value=-(2**62), max_value=2**62),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(
    name=st.sampled_from(["SET", "EVALSHA", "CLIENT SETNAME", "XADD", b"HSET", b"CONFIG GET"]),
    args=st.lists(_ARG, max_size=12),
)
def test_hiredis_packing_writes_what_redis_py_writes(name: Any, args: list[Any]) -> None:
    expected = b"".join(Connection().pack_command(name, *args))
    assert b"".join(_TcpConnection().pack_command(name, *args)) == expected


async def test_the_store_talks_to_redis_through_it(store: Any) -> None:
    assert issubclass(store.redis.connection_pool.connection_class, _HiredisPacking)
    await store.redis.set("sluice:{sluice}:test:é", "ü" * 3)
    assert (await store.redis.get("sluice:{sluice}:test:é")).decode() == "üüü"
