"""ScriptBatcher against the session's Redis: one pipeline per loop turn, own outcomes."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from wxplatform.background import Background
from wxplatform.core.adapters.redis_client import connect
from wxplatform.core.adapters.script_batch import ScriptBatcher

# Appends ARGV[1] to a list and returns its new length; refuses "bad".
_SCRIPT = """
if ARGV[1] == 'bad' then return redis.error_reply('refused ' .. ARGV[1]) end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


@pytest.fixture
async def fresh_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    """Its own pool, and a name by which Redis lists its connections."""
    client = redis.Redis.from_url(redis_url, client_name=f"batch-{secrets.token_hex(4)}")
    yield client
    await client.aclose()


async def connections_named(observer: redis.Redis, name: str) -> int:
    return sum(1 for c in await observer.client_list() if c["name"] == name)


async def test_calls_of_one_turn_share_a_connection_and_keep_their_results(
    fresh_client: redis.Redis, redis_client: redis.Redis
) -> None:
    key = f"test:batch:{secrets.token_hex(4)}"
    script = fresh_client.register_script(_SCRIPT)
    batcher = ScriptBatcher(fresh_client, Background())
    results = await asyncio.gather(
        *(batcher.run(script, [key], [f"v{n}"]) for n in range(50)), return_exceptions=True
    )
    assert sorted(r for r in results if isinstance(r, int)) == list(range(1, 51))
    # Without batching 50 concurrent calls would each take a connection from the pool.
    name = await fresh_client.client_getname()
    assert await connections_named(redis_client, str(name)) == 1
    assert await fresh_client.llen(key) == 50
    await fresh_client.delete(key)


async def test_a_failing_call_fails_alone(fresh_client: redis.Redis) -> None:
    key = f"test:batch:{secrets.token_hex(4)}"
    script = fresh_client.register_script(_SCRIPT)
    batcher = ScriptBatcher(fresh_client, Background())
    outcomes: list[object] = await asyncio.gather(
        batcher.run(script, [key], ["a"]),
        batcher.run(script, [key], ["bad"]),
        batcher.run(script, [key], ["b"]),
        return_exceptions=True,
    )
    good, bad, also_good = outcomes
    assert isinstance(bad, ResponseError)
    assert "refused bad" in str(bad)
    assert {good, also_good} == {1, 2}
    await fresh_client.delete(key)


async def test_a_flushed_script_cache_is_reloaded(fresh_client: redis.Redis) -> None:
    key = f"test:batch:{secrets.token_hex(4)}"
    script = fresh_client.register_script(_SCRIPT)
    batcher = ScriptBatcher(fresh_client, Background())
    await batcher.run(script, [key], ["first"])
    await fresh_client.script_flush()  # as after a Redis restart
    results = await asyncio.gather(*(batcher.run(script, [key], [f"v{n}"]) for n in range(5)))
    assert sorted(results) == [2, 3, 4, 5, 6]
    await fresh_client.delete(key)


async def test_a_caller_that_gives_up_does_not_disturb_the_others(
    fresh_client: redis.Redis,
) -> None:
    key = f"test:batch:{secrets.token_hex(4)}"
    script = fresh_client.register_script(_SCRIPT)
    batcher = ScriptBatcher(fresh_client, Background())
    impatient = asyncio.ensure_future(batcher.run(script, [key], ["x"]))
    patient = asyncio.ensure_future(batcher.run(script, [key], ["y"]))
    await asyncio.sleep(0)
    impatient.cancel()  # before its turn's pipeline went out: its script never runs
    assert await patient == 1
    assert impatient.cancelled()
    assert await fresh_client.lrange(key, 0, -1) == [b"y"]
    await fresh_client.delete(key)


async def test_a_dead_redis_fails_every_call_of_the_batch() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = connect(f"redis://127.0.0.1:{port}/0")
    try:
        script = client.register_script(_SCRIPT)
        batcher = ScriptBatcher(client, Background())
        results = await asyncio.gather(
            *(batcher.run(script, ["k"], [str(n)]) for n in range(3)), return_exceptions=True
        )
    finally:
        await client.aclose()
    assert all(isinstance(r, RedisConnectionError) for r in results), results
