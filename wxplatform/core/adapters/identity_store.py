"""What core keeps about users' logins: mini-program session keys, sealed.

A user's session key is replaced by each login (`jscode2session` hands out a new one).
The store keeps the current one and the one it replaced, both sealed by the vault (the
store never sees a key in the clear): data a mini program encrypted just before the
user logged in again can then be recognised as made with the replaced key.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from wxplatform.core.adapters import redis_keys
from wxplatform.errors import StoreUnavailable

__all__ = ["IdentityStore"]

# KEYS: the user's session-key hash. ARGV: the new sealed key, now ms, ttl ms.
_ROTATE = """
local current = redis.call('HGET', KEYS[1], 'current')
if current then redis.call('HSET', KEYS[1], 'previous', current) end
redis.call('HSET', KEYS[1], 'current', ARGV[1], 'at', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class IdentityStore:
    """Sealed session keys of mini-program users."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._rotate = client.register_script(_ROTATE)

    async def replace_session_key(
        self, app_id: str, openid: str, sealed: str, *, now_ms: int, ttl_ms: int
    ) -> None:
        """Make `sealed` the user's current session key; the current one becomes previous."""
        key = redis_keys.session_key(app_id, openid)
        try:
            await self._rotate([key], [sealed, now_ms, ttl_ms])
        except RedisError as exc:
            raise StoreUnavailable("identity store unreachable") from exc

    async def session_keys(self, app_id: str, openid: str) -> tuple[str | None, str | None]:
        """The user's current and previous sealed session keys (None where there is none)."""
        key = redis_keys.session_key(app_id, openid)
        try:
            current, previous = await self._redis.hmget(key, ["current", "previous"])
        except RedisError as exc:
            raise StoreUnavailable("identity store unreachable") from exc
        return _text(current), _text(previous)
