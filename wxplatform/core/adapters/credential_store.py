"""Shared storage of an app's WeChat credentials (access token, JS-SDK ticket) in Redis.

One hash per credential: `value`, `expires_ms` and the `fence` of the refresh that wrote
it. Refreshing takes a lock whose value is a fencing number from a per-credential
counter; `store` succeeds only while no newer fence has taken the lock or written, so a
refresher that stalled past its lock (GC pause, network) can never overwrite a newer
credential. `invalidate` is compare-and-set on the value, so a burst of
reports about one rejected token invalidates it once, and reports about an older token
change nothing.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from wxplatform.core.adapters import redis_keys
from wxplatform.core.model import StoredCredential
from wxplatform.errors import StoreUnavailable

__all__ = ["CredentialStore"]

# KEYS: lock, fence counter. ARGV: lock ttl ms. → fence, or 0 when someone holds the lock.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence, 'PX', ARGV[1])
return fence
"""

# KEYS: credential hash, lock, fence counter. ARGV: fence, value, expires_ms.
# → 1 stored, 0 fenced off. A holder whose lock expired under it (a starved process)
# may still write while nobody has taken the lock since: what it fetched from WeChat
# is the newest credential, and discarding it would cost another fetch.
_STORE = """
local holder = redis.call('GET', KEYS[2])
if holder ~= ARGV[1] then
  if holder or tonumber(redis.call('GET', KEYS[3]) or '0') ~= tonumber(ARGV[1]) then
    return 0
  end
end
local written = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if written > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'expires_ms', ARGV[3], 'fence', ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: lock. ARGV: fence.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: credential hash. ARGV: the rejected value. → 1 when it was current (and not
# already invalidated by an earlier report).
_INVALIDATE = """
if redis.call('HGET', KEYS[1], 'value') == ARGV[1]
   and tonumber(redis.call('HGET', KEYS[1], 'expires_ms') or '0') > 0 then
  redis.call('HSET', KEYS[1], 'expires_ms', 0)
  return 1
end
return 0
"""

# KEYS: force-refresh record. ARGV: now ms, day number, min gap ms, daily limit.
# → 0 allowed (and recorded), -1 daily limit reached, else ms until the gap has passed.
_FORCE = """
local last = tonumber(redis.call('HGET', KEYS[1], 'last_ms') or '0')
local day = tonumber(redis.call('HGET', KEYS[1], 'day') or '-1')
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
if day ~= tonumber(ARGV[2]) then count = 0 end
if count >= tonumber(ARGV[4]) then return -1 end
local wait = last + tonumber(ARGV[3]) - tonumber(ARGV[1])
if wait > 0 then return wait end
redis.call('HSET', KEYS[1], 'last_ms', ARGV[1], 'day', ARGV[2], 'count', count + 1)
redis.call('PEXPIRE', KEYS[1], 2 * 86400 * 1000)
return 0
"""


class CredentialStore:
    """Locks, fenced writes and compare-and-set invalidation for one kind of credential."""

    def __init__(self, client: redis.Redis, kind: str, *, lock_ms: int = 10_000) -> None:
        self._redis = client
        self._kind = kind
        self._lock_ms = lock_ms
        self._acquire = client.register_script(_ACQUIRE)
        self._store = client.register_script(_STORE)
        self._release = client.register_script(_RELEASE)
        self._invalidate = client.register_script(_INVALIDATE)
        self._force = client.register_script(_FORCE)

    def _keys(self, app_id: str) -> tuple[str, str, str]:
        return (
            redis_keys.credential(app_id, self._kind),
            redis_keys.credential_lock(app_id, self._kind),
            redis_keys.credential_fence(app_id, self._kind),
        )

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except RedisError as exc:
            raise StoreUnavailable("credential store unreachable") from exc

    async def read(self, app_id: str) -> StoredCredential | None:
        """The stored credential, if any (it may be expired or invalidated)."""
        try:
            raw = cast(dict[bytes, bytes], await self._redis.hgetall(self._keys(app_id)[0]))
        except RedisError as exc:
            raise StoreUnavailable("credential store unreachable") from exc
        if b"value" not in raw:
            return None
        return StoredCredential(
            raw[b"value"].decode(), int(raw.get(b"expires_ms", b"0")), int(raw.get(b"fence", b"0"))
        )

    async def acquire(self, app_id: str) -> int:
        """Take the refresh lock: its fencing number, or 0 when another refresher holds it."""
        _, lock, fence = self._keys(app_id)
        return int(await self._run(self._acquire, [lock, fence], [self._lock_ms]))

    async def store(self, app_id: str, fence: int, value: str, expires_ms: int) -> bool:
        """Write a fetched credential if `fence` still holds the lock; releases it."""
        data, lock, counter = self._keys(app_id)
        return bool(await self._run(self._store, [data, lock, counter], [fence, value, expires_ms]))

    async def release(self, app_id: str, fence: int) -> None:
        """Give the lock back without writing (the fetch failed)."""
        _, lock, _ = self._keys(app_id)
        await self._run(self._release, [lock], [fence])

    async def invalidate(self, app_id: str, value: str) -> bool:
        """Mark `value` expired if it is still the current credential."""
        data, _, _ = self._keys(app_id)
        return bool(await self._run(self._invalidate, [data], [value]))

    async def allow_forced_refresh(
        self, app_id: str, now_ms: int, day: int, *, gap_ms: int, per_day: int
    ) -> int:
        """Record a forced refresh if WeChat's limits allow.

        0: allowed (and recorded); -1: the daily cap is reached; else the milliseconds
        until the minimum gap since the last forced refresh has passed.
        """
        key = redis_keys.forced_refreshes(app_id, self._kind)
        return int(await self._run(self._force, [key], [now_ms, day, gap_ms, per_day]))
