"""The one async Redis client of a process, built from config."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["connect"]


def connect(url: str) -> redis.Redis:
    """A pooled client with short timeouts: a dead Redis must fail calls fast, not hang."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=2.0,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        max_connections=256,
    )
