"""What every part of the Redis access layer shares: the error, the script wrapper, limits."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import SluiceError

RETENTION_SECONDS = 7 * 86400  # batch content and message records outlive the longest deferral
EVENTS_MAXLEN = 2_000_000  # approximate cap on the events stream

Arg = str | bytes | int | float
# One Redis, or a Redis Cluster (every key Sluice has shares one hash slot: ``core.keys``).
Client = aioredis.Redis | RedisCluster
_U64_MAX = 2**64 - 1


class StoreError(SluiceError):
    """Redis could not be reached or answered with an error."""


# What a Redis call can raise: redis-py's cluster client raises ``RedisClusterException``
# (no slot owner known, cluster unreachable), which is not a ``RedisError``.
REDIS_ERRORS = (RedisError, RedisClusterException)


class Script:
    """A Lua script of ``core/lua/``, loaded once (EVALSHA, reloaded after a Redis restart) and
    called with every key it touches in ``keys``: none is built inside the script, so each
    runs unchanged wherever its keys' slot lives."""

    def __init__(self, client: Client, name: str, *, libraries: Sequence[str] = ()) -> None:
        """``libraries``: files of ``core/lua/lib/`` whose functions the script uses,
        prepended in order (a library may use those before it)."""
        self.name = name
        lua = resources.files("core").joinpath("lua")
        source = "".join(lua.joinpath("lib", f).read_text() for f in libraries)
        source += lua.joinpath(name).read_text()
        self.client = client
        self._script = client.register_script(source)

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        return await self._script(keys=list(keys), args=list(args))

    async def then_wait(
        self, keys: Sequence[str], args: Sequence[Arg], replicas: int, ms: int
    ) -> tuple[Any, int]:
        """Run the script and then ``WAIT replicas ms`` on the same connection (WAIT counts
        the replicas that acknowledged that connection's writes): the script's answer and
        how many replicas have its writes. A cluster's pipeline refuses scripts, so there a
        connection of the master that owns the keys' slot is taken directly; a ``MOVED``
        (the slot has a new owner) refreshes the slot map and tries once more, anything else
        the cluster says (``ASK``, ``TRYAGAIN`` while the slot moves) is a ``StoreError``
        that the caller's retry settles."""
        client = self.client
        if not isinstance(client, RedisCluster):
            async with client.pipeline(transaction=False) as pipe:
                await self._script(keys=list(keys), args=list(args), client=pipe)
                pipe.execute_command("WAIT", replicas, ms)
                result, acked = await pipe.execute()
            return result, int(acked)
        try:
            return await self._then_wait_on_node(client, keys, args, replicas, ms)
        except MovedError:
            await client.nodes_manager.initialize()
            return await self._then_wait_on_node(client, keys, args, replicas, ms)

    async def _then_wait_on_node(
        self, client: RedisCluster, keys: Sequence[str], args: Sequence[Arg], replicas: int, ms: int
    ) -> tuple[Any, int]:
        call = ("EVALSHA", self._script.sha, len(keys), *keys, *args)
        node = client.get_node_from_key(keys[0])
        if node is None:  # typed Optional; redis-py raises SlotNotCoveredError instead
            raise StoreError(f"no master serves the slot of {keys[0]}")
        connection = node.acquire_connection()
        try:
            for _ in range(2):
                await connection.send_packed_command(
                    connection.pack_commands([call, ("WAIT", replicas, ms)])
                )
                try:
                    result = await connection.read_response()
                except NoScriptError:  # a restarted or promoted node: load it, run it again
                    await connection.read_response()
                    await connection.send_command("SCRIPT", "LOAD", self._script.script)
                    await connection.read_response()
                    continue
                except ResponseError:
                    await connection.read_response()  # WAIT's answer: the connection stays usable
                    raise
                return result, int(await connection.read_response())
            raise StoreError(f"{self.name} could not be loaded on {node.name}")
        except ResponseError:
            raise
        except (RedisConnectionError, RedisTimeoutError):
            await connection.disconnect()  # its replies may be half read
            await client.nodes_manager.initialize()  # the node may be gone: ask the others
            raise
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            node.release(connection)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def lines(value: Any) -> list[str]:
    joined = text(value or b"")
    return joined.split("\n") if joined else []


def valid_stream_id(cursor: str) -> bool:
    """``<ms>-<seq>`` with both parts within Redis's 64-bit range."""
    ms, _, seq = cursor.partition("-")
    return ms.isascii() and seq.isascii() and int(ms) <= _U64_MAX and int(seq) <= _U64_MAX


def after(cursor: str) -> str | None:
    """The first stream id after ``cursor``; None if nothing can come after it."""
    ms, seq = (int(part) for part in cursor.split("-"))
    ms, seq = (ms, seq + 1) if seq < _U64_MAX else (ms + 1, 0)
    return None if ms > _U64_MAX else f"{ms}-{seq}"
