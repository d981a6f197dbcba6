"""Outbound sends in Redis: idempotency, rate limit, circuit, windows, delivery records.

A send costs two round trips. `begin` is one script over the app's keys that, in order:
claims the idempotency key (or reports the earlier outcome, or a reuse with another
request); refuses while the API's daily-quota circuit is open; counts the send against
the app's per-second rate limit; and, for customer-service messages, consumes one unit of
the user's open interaction window. Anything refused after the claim releases it again.
`finish` stores the delivery record, indexes it by WeChat's msgid, marks the idempotency
key done, and refunds the window unit when the message was not sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from wxplatform.core.adapters.redis_keys import app_key
from wxplatform.errors import StoreUnavailable

__all__ = ["Begun", "MessageStore"]

# KEYS: idempotency, circuit, rate counter, window hash ("" = no window check).
# ARGV: request digest, delivery id, idempotency ttl ms, pending ttl ms, rate limit,
#       now ms.
_BEGIN = """
local seen = redis.call('GET', KEYS[1])
if seen then
  local kind, digest, rest = string.match(seen, '^(%a+):(%x+):(.*)$')
  if digest ~= ARGV[1] then return {'reused'} end
  return {kind, rest}
end
redis.call('SET', KEYS[1], 'pending:' .. ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[4])
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('DEL', KEYS[1]); return {'circuit', tostring(ttl)} end
local count = redis.call('INCR', KEYS[3])
if count == 1 then redis.call('PEXPIRE', KEYS[3], 2000) end
if count > tonumber(ARGV[5]) then
  redis.call('DEL', KEYS[1])
  return {'rate', tostring(1000 - tonumber(ARGV[6]) % 1000)}
end
if KEYS[4] == '' then return {'go', ''} end
local fields = redis.call('HGETALL', KEYS[4])
local best, best_expiry, any_open = nil, nil, false
for i = 1, #fields, 2 do
  local name = fields[i]
  if not string.find(name, ':', 1, true) then
    local expiry, quota = string.match(fields[i + 1], '^(%d+):(%d+)$')
    expiry, quota = tonumber(expiry), tonumber(quota)
    if expiry and expiry > tonumber(ARGV[6]) then
      any_open = true
      local used = tonumber(redis.call('HGET', KEYS[4], name .. ':used') or '0')
      if used < quota and (best_expiry == nil or expiry < best_expiry) then
        best, best_expiry = name, expiry
      end
    end
  end
end
if not best then
  redis.call('DEL', KEYS[1])
  if any_open then return {'exhausted'} end
  return {'closed'}
end
redis.call('HINCRBY', KEYS[4], best .. ':used', 1)
return {'go', best}
"""

# KEYS: idempotency, delivery record, msgid index ("" = none), window hash ("" = none).
# ARGV: request digest, delivery id, record bytes, idempotency ttl ms, record ttl ms,
#       window kind to refund ("" = keep).
_FINISH = """
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5]) end
redis.call('SET', KEYS[1], 'done:' .. ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[4])
if KEYS[4] ~= '' and ARGV[6] ~= '' then
  -- Never below zero (a new interaction may have reset the count meanwhile), and never
  -- recreating an expired window.
  local used = tonumber(redis.call('HGET', KEYS[4], ARGV[6] .. ':used') or '0')
  if used > 0 then redis.call('HINCRBY', KEYS[4], ARGV[6] .. ':used', -1) end
end
return 1
"""

# KEYS: idempotency, window hash. ARGV: request digest, delivery id, window kind.
_RELEASE = """
if redis.call('GET', KEYS[1]) == 'pending:' .. ARGV[1] .. ':' .. ARGV[2] then
  redis.call('DEL', KEYS[1])
end
if KEYS[2] ~= '' and ARGV[3] ~= '' then
  local used = tonumber(redis.call('HGET', KEYS[2], ARGV[3] .. ':used') or '0')
  if used > 0 then redis.call('HINCRBY', KEYS[2], ARGV[3] .. ':used', -1) end
end
return 1
"""


@dataclass(frozen=True)
class Begun:
    """The verdict of `begin`.

    `state`: `go` (send now; `window` is the unit taken), `done` or `pending` (an earlier
    request with this key; `delivery_id` names it), `reused`, `circuit`, `rate`, `closed`,
    `exhausted`. `wait_ms` tells how long the circuit or rate limit still holds.
    """

    state: str
    delivery_id: str = ""
    window: str = ""
    wait_ms: int = 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class MessageStore:
    """Redis state of outbound sends."""

    def __init__(
        self, client: redis.Redis, *, idempotency_ttl_seconds: int, record_ttl_seconds: int
    ) -> None:
        self._redis = client
        self._begin = client.register_script(_BEGIN)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)
        self._idem_ms = idempotency_ttl_seconds * 1000
        self._record_ms = record_ttl_seconds * 1000
        self._pending_ms = 120_000  # longer than any send (deadlines are seconds)

    @staticmethod
    def idempotency_key(app_id: str, caller: str, key_digest: str) -> str:
        """The Redis key of one caller's idempotency key."""
        return app_key(app_id, "idem", caller, key_digest)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except RedisError as exc:
            raise StoreUnavailable("message store unreachable") from exc

    async def begin(
        self,
        app_id: str,
        idem_key: str,
        *,
        digest: str,
        delivery_id: str,
        api: str,
        rate_limit: int,
        window_openid: str | None,
        now_ms: int,
    ) -> Begun:
        """Claim, check the circuit and the rate limit, take a window unit."""
        keys = [
            idem_key,
            app_key(app_id, "circuit", api),
            app_key(app_id, "rate", str(now_ms // 1000)),
            app_key(app_id, "window", window_openid) if window_openid else "",
        ]
        args = [digest, delivery_id, self._idem_ms, self._pending_ms, rate_limit, now_ms]
        reply = [_text(v) for v in cast(list[Any], await self._run(self._begin, keys, args))]
        state, extra = reply[0], reply[1] if len(reply) > 1 else ""
        if state in ("done", "pending"):
            return Begun(state, delivery_id=extra)
        if state in ("circuit", "rate"):
            return Begun(state, wait_ms=int(extra))
        return Begun(state, window=extra)

    async def finish(
        self,
        app_id: str,
        idem_key: str,
        *,
        digest: str,
        delivery_id: str,
        record: bytes,
        msgid: str,
        window_openid: str | None,
        refund: str,
    ) -> None:
        """Store the record (and msgid index), mark the key done, refund an unused unit."""
        keys = [
            idem_key,
            app_key(app_id, "delivery", delivery_id),
            app_key(app_id, "delivery", "msgid", msgid) if msgid else "",
            app_key(app_id, "window", window_openid) if window_openid and refund else "",
        ]
        args = [digest, delivery_id, record, self._idem_ms, self._record_ms, refund]
        # Shielded: the record must be written even if the caller's deadline cancels us,
        # or a retry with the same key could send the message a second time.
        await asyncio.shield(self._run(self._finish, keys, args))

    async def release(
        self,
        app_id: str,
        idem_key: str,
        *,
        digest: str,
        delivery_id: str,
        window_openid: str | None,
        window: str,
    ) -> None:
        """Forget a claim whose message was certainly not sent (refunding its unit)."""
        keys = [
            idem_key,
            app_key(app_id, "window", window_openid) if window_openid and window else "",
        ]
        await asyncio.shield(self._run(self._release, keys, [digest, delivery_id, window]))

    async def trip_circuit(self, app_id: str, api: str, until_ms: int, now_ms: int) -> None:
        """Stop calling `api` for this app until `until_ms` (WeChat's daily quota is gone)."""
        try:
            await self._redis.set(
                app_key(app_id, "circuit", api), b"45009", px=max(until_ms - now_ms, 1000)
            )
        except RedisError as exc:
            raise StoreUnavailable("message store unreachable") from exc

    async def record(self, app_id: str, delivery_id: str) -> bytes | None:
        """A stored delivery record."""
        try:
            return cast(
                bytes | None, await self._redis.get(app_key(app_id, "delivery", delivery_id))
            )
        except RedisError as exc:
            raise StoreUnavailable("message store unreachable") from exc

    async def record_by_msgid(self, app_id: str, msgid: str) -> tuple[str, bytes] | None:
        """The delivery id and record for a WeChat msgid, if we sent it."""
        try:
            delivery_id = await self._redis.get(app_key(app_id, "delivery", "msgid", msgid))
            if delivery_id is None:
                return None
            record = await self._redis.get(app_key(app_id, "delivery", _text(delivery_id)))
        except RedisError as exc:
            raise StoreUnavailable("message store unreachable") from exc
        return (_text(delivery_id), cast(bytes, record)) if record is not None else None

    async def update_record(self, app_id: str, delivery_id: str, record: bytes) -> None:
        """Replace a record, keeping its expiry."""
        try:
            await self._redis.set(app_key(app_id, "delivery", delivery_id), record, keepttl=True)
        except RedisError as exc:
            raise StoreUnavailable("message store unreachable") from exc
