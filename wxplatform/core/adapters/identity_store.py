"""What core keeps about users' logins: session keys, OAuth states, tokens and profiles.

A mini-program user's session key is replaced by each login (`jscode2session` hands
out a new one). The store keeps the current one and the one it replaced, both sealed by
the vault (the store never sees a key or token in the clear): data a mini program
encrypted just before the user logged in again can then be recognised as made with the
replaced key.

Web login: a `state` is one hash that expires with the flow; `claim_state` marks it used
by one code in the same step that checks the browser binding, so a state serves one
code only, and a second request with the same code (a reload) learns that it should
wait for the first one's result, which `record_exchange` keeps for the code's lifetime.
A user's OAuth tokens (sealed) and last profile are kept per openid.
"""

from __future__ import annotations

from collections.abc import Mapping
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


# KEYS: state. ARGV: browser binding, the code's hash, now ms.
# → {'go', scope, return_url} claimed now; {'busy'} claimed by this code before;
#   {'invalid'} unknown, expired, another browser's, or claimed by another code.
# Expiry is judged by the service's clock (`expires_ms`); the key's TTL only cleans up.
_CLAIM_STATE = """
local fields = redis.call('HMGET', KEYS[1], 'binding', 'scope', 'return_url', 'used',
                          'expires_ms')
if not fields[1] or fields[1] ~= ARGV[1] then return {'invalid'} end
if tonumber(fields[5]) <= tonumber(ARGV[3]) then return {'invalid'} end
if fields[4] then
  if fields[4] == ARGV[2] then return {'busy'} end
  return {'invalid'}
end
redis.call('HSET', KEYS[1], 'used', ARGV[2])
return {'go', fields[2], fields[3]}
"""

# KEYS: state. ARGV: the code's hash. Undo a claim whose code never reached WeChat.
_RELEASE_STATE = """
if redis.call('HGET', KEYS[1], 'used') == ARGV[1] then redis.call('HDEL', KEYS[1], 'used') end
return 1
"""


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class IdentityStore:
    """Sealed session keys of mini-program users."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._rotate = client.register_script(_ROTATE)
        self._claim_state = client.register_script(_CLAIM_STATE)
        self._release_state = client.register_script(_RELEASE_STATE)

    async def _run(self, call: Any) -> Any:
        try:
            return await call
        except RedisError as exc:
            raise StoreUnavailable("identity store unreachable") from exc

    async def _put(self, key: str, fields: Mapping[str, str], ttl_ms: int) -> None:
        """Write a hash and its expiry in one transaction."""
        values: dict[Any, Any] = dict(fields)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=values)
            pipe.pexpire(key, ttl_ms)
            await self._run(pipe.execute())

    # -- web login -------------------------------------------------------------------

    async def save_state(
        self, app_id: str, state: str, fields: dict[str, str], *, ttl_ms: int
    ) -> None:
        """Remember a flow's `state` until it expires."""
        await self._put(redis_keys.oauth_state(app_id, state), fields, ttl_ms)

    async def claim_state(
        self, app_id: str, state: str, binding: str, code_hash: str, *, now_ms: int
    ) -> tuple[str, dict[str, str]]:
        """`go` (with the state's scope and return URL), `busy` or `invalid`."""
        keys = [redis_keys.oauth_state(app_id, state)]
        reply = await self._run(self._claim_state(keys, [binding, code_hash, now_ms]))
        verdict = _text(reply[0]) or ""
        if verdict != "go":
            return verdict, {}
        return verdict, {"scope": _text(reply[1]) or "", "return_url": _text(reply[2]) or ""}

    async def release_state(self, app_id: str, state: str, code_hash: str) -> None:
        """Let the state be claimed again: the code never reached WeChat."""
        keys = [redis_keys.oauth_state(app_id, state)]
        await self._run(self._release_state(keys, [code_hash]))

    async def record_exchange(
        self, app_id: str, exchange: str, fields: dict[str, str], *, ttl_ms: int
    ) -> None:
        """What one (state, code) exchange gave, for the reloads of its callback."""
        await self._put(redis_keys.oauth_exchange(app_id, exchange), fields, ttl_ms)

    async def exchange(self, app_id: str, exchange: str) -> dict[str, str]:
        """An earlier exchange's record (empty when there is none)."""
        found = await self._run(self._redis.hgetall(redis_keys.oauth_exchange(app_id, exchange)))
        return {_text(k) or "": _text(v) or "" for k, v in found.items()}

    async def save_user_tokens(
        self, app_id: str, openid: str, fields: dict[str, str], *, ttl_ms: int
    ) -> None:
        """The user's OAuth tokens (sealed) and their expiries."""
        await self._put(redis_keys.oauth_user(app_id, openid), fields, ttl_ms)

    async def user_tokens(self, app_id: str, openid: str) -> dict[str, str]:
        """The user's OAuth record (empty when the user never authorized)."""
        found = await self._run(self._redis.hgetall(redis_keys.oauth_user(app_id, openid)))
        return {_text(k) or "": _text(v) or "" for k, v in found.items()}

    # -- mini programs ---------------------------------------------------------------

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
