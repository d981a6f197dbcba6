"""The one async Redis client of a process, built from config."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["connect", "own_pool"]


def connect(url: str) -> redis.Redis:
    """A pooled client with short timeouts: a dead Redis must fail calls fast, not hang.

    Only a failed connection is retried (a pooled connection the server dropped, say
    after a restart). A timeout is not: the command may have run, and most of ours
    (claims, counters, appends) must not run twice.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=2.0,
        health_check_interval=30,
        # Retry's default list includes timeouts: name the one error to retry instead.
        retry=Retry(
            ExponentialBackoff(cap=0.2, base=0.01),
            retries=2,
            supported_errors=(RedisConnectionError,),
        ),
        max_connections=256,
    )


def own_pool(client: redis.Redis, *, max_connections: int) -> redis.Redis:
    """A client of the same server and settings as `client`, with a pool of its own."""
    pool = client.connection_pool
    return redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class,
            max_connections=max_connections,
            **pool.connection_kwargs,
        )
    )
