"""Session-wide fixtures: one real Redis for the whole run, and vectors.json."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

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
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.start()
    finally:
        server.stop()


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
