"""Session-wide fixtures: one real Redis for the whole run, and vectors.json."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as redis

from tests.support import SECRETS
from wxplatform.core.adapters.redis_client import connect
from wxplatform.embedded_redis import EmbeddedRedis

if os.environ.get("WXP_LEAK_PROBE") == "1":
    import tests.leak_probe  # noqa: F401 - installs itself (make test-busy PROBE=1)

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`WXP_TEST_REDIS_URL`, or an embedded redis-server started for this session."""
    configured = os.environ.get("WXP_TEST_REDIS_URL")
    if configured:
        yield configured
        assert_no_secret_stored(configured)
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        url = server.start()
        yield url
        assert_no_secret_stored(url)
    finally:
        server.stop()


def assert_no_secret_stored(url: str) -> None:
    """No secret the suite configured or was handed is in any key or value in Redis."""
    if not SECRETS:
        return
    client: Any = sync_redis.Redis.from_url(url)  # typed loosely: values are bytes here
    try:
        stored = bytearray()
        for key in client.scan_iter(match="wxp:*", count=1000):
            stored += key
            kind = client.type(key)
            if kind == b"string":
                stored += client.get(key) or b""
            elif kind == b"hash":
                stored += b"".join(k + v for k, v in client.hgetall(key).items())
            elif kind == b"set":
                stored += b"".join(client.smembers(key))
            elif kind == b"zset":
                stored += b"".join(client.zrange(key, 0, -1))
            elif kind == b"stream":
                for _id, fields in client.xrange(key):
                    stored += b"".join(k + v for k, v in fields.items())
    finally:
        client.close()
    found = sorted(s[:6] + "…" for s in SECRETS if len(s) >= 8 and s.encode() in stored)
    assert not found, f"secrets stored in Redis in the clear (first characters): {found}"


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    """A client of the session's Redis."""
    client = connect(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    """The official WeChat test vectors (tests/vectors.json; docs/wechat.md §8)."""
    data: dict[str, Any] = json.loads((HERE / "vectors.json").read_text(encoding="utf-8"))
    return data
