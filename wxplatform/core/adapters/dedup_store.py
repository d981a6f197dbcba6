"""Cross-replica dedup of inbound messages, with the first delivery's reply kept.

One Redis key per (app, dedup key). The first delivery claims it with `SET NX` as
`pending`; when its reply is computed the key holds `done:` + the reply. A retry that
finds `done` gets the stored reply; one that finds `pending` (the first delivery is
still in flight, perhaps on another replica) waits for it, so WeChat gets the same
answer twice and the message is processed once.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from wxplatform.core.adapters.redis_keys import app_key
from wxplatform.errors import StoreUnavailable

__all__ = ["Claim", "DedupStore"]

_PENDING = b"pending"
_DONE = b"done:"


@dataclass(frozen=True)
class Claim:
    """Outcome of claiming a dedup key: ours to process, or someone else's result."""

    owned: bool
    reply: bytes | None = None  # the stored reply when not owned (b"" = no reply)


class DedupStore:
    """Dedup records in Redis."""

    def __init__(self, client: redis.Redis, *, ttl_seconds: int, pending_seconds: int = 10) -> None:
        self._redis = client
        self._ttl_ms = ttl_seconds * 1000
        self._pending_ms = pending_seconds * 1000

    async def claim(self, app_id: str, dedup_key: str, *, wait_seconds: float) -> Claim:
        """Claim the key, or return the first delivery's reply (waiting up to `wait_seconds`)."""
        key = app_key(app_id, "dedup", dedup_key)
        try:
            if await self._redis.set(key, _PENDING, nx=True, px=self._pending_ms):
                return Claim(owned=True)
            deadline = asyncio.get_running_loop().time() + wait_seconds
            delay = 0.005
            while True:
                value = cast(bytes | None, await self._redis.get(key))
                if value is None:  # the first delivery gave up: take over.
                    if await self._redis.set(key, _PENDING, nx=True, px=self._pending_ms):
                        return Claim(owned=True)
                    continue
                if value.startswith(_DONE):
                    return Claim(owned=False, reply=value[len(_DONE) :])
                if asyncio.get_running_loop().time() >= deadline:
                    raise StoreUnavailable("an earlier delivery of this message is still in flight")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
        except RedisError as exc:
            raise StoreUnavailable("dedup store unreachable") from exc

    async def complete(self, app_id: str, dedup_key: str, reply: bytes) -> None:
        """Record the result of the owned delivery for the dedup TTL."""
        try:
            await self._redis.set(
                app_key(app_id, "dedup", dedup_key), _DONE + reply, px=self._ttl_ms
            )
        except RedisError as exc:
            raise StoreUnavailable("dedup store unreachable") from exc

    async def release(self, app_id: str, dedup_key: str) -> None:
        """Give up an owned claim after a failure, so a retry can process the message."""
        with contextlib.suppress(RedisError):  # if it fails, the pending marker expires anyway
            await self._redis.delete(app_key(app_id, "dedup", dedup_key))
