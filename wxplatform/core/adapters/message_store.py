"""Outbound sends in Redis: idempotency, rate limit, circuit, windows, delivery records.

A send costs two round trips. `begin` is one script over the app's keys that, in order:
claims the idempotency key (or reports the earlier outcome, or a reuse with another
request); refuses while the API's daily-quota circuit is open; counts the send against
the app's per-second rate limit; and, for customer-service messages, consumes one unit of
the user's open interaction window. Anything refused after the claim releases it again.
`finish` stores the delivery record, indexes it by WeChat's msgid, marks the idempotency
key done, and refunds the window unit when the message was not sent.

A request that finds its key pending waits for it with `peek`: the key turns done, or it
disappears when the first request released it without reaching WeChat, and then the
waiting request runs `begin` itself (which lets exactly one claimant through).

WeChat's asynchronous result events (TEMPLATESENDJOBFINISH, subscribe_msg_sent_event)
name a msgid. WeChat may push one before our `finish` has written the msgid index (it
answers the HTTP call and reports the job independently), so `locate_or_park` either
finds the record's id through the index or, in the same atomic step, parks the result
under `delivery:early:<msgid>`; `finish`, when it writes the index, takes a parked
result and returns it for the caller to apply. Either order meets in Redis, so no
result is lost. Records are changed only by `replace_record`, a compare-and-set that
keeps the expiry and never recreates an expired record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from wxplatform.background import Background
from wxplatform.core.adapters.redis_keys import app_key
from wxplatform.core.adapters.script_batch import ScriptBatcher
from wxplatform.errors import StoreUnavailable

__all__ = ["Begun", "MessageStore", "SendResult"]

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
local open_until = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if open_until > tonumber(ARGV[6]) then
  redis.call('DEL', KEYS[1])
  return {'circuit', tostring(open_until - tonumber(ARGV[6]))}
end
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

# KEYS: idempotency, delivery record, msgid index ("" = none), window hash ("" = none),
#       early result of the msgid ("" = none).
# ARGV: request digest, delivery id, record bytes, idempotency ttl ms, record ttl ms,
#       window kind to refund ("" = keep).
# Returns the early result parked for the msgid (taken), or nil.
_FINISH = """
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
redis.call('SET', KEYS[1], 'done:' .. ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[4])
if KEYS[4] ~= '' and ARGV[6] ~= '' then
  -- Never below zero (a new interaction may have reset the count meanwhile), and never
  -- recreating an expired window.
  local used = tonumber(redis.call('HGET', KEYS[4], ARGV[6] .. ':used') or '0')
  if used > 0 then redis.call('HINCRBY', KEYS[4], ARGV[6] .. ':used', -1) end
end
if KEYS[3] == '' then return false end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5])
-- From here on results find the record through the index; one that came earlier was
-- parked by LOCATE_OR_PARK and is handed over now.
local early = redis.call('GET', KEYS[5])
if early then redis.call('DEL', KEYS[5]) end
return early
"""

# KEYS: msgid index, early result of the msgid. ARGV: result, early ttl ms.
# Returns the delivery id, or nil after parking the result for `finish` to take.
_LOCATE_OR_PARK = """
local id = redis.call('GET', KEYS[1])
if id then return id end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return false
"""

# KEYS: delivery record. ARGV: expected record bytes, new record bytes.
# Returns {1} when replaced, {0} when the record is gone (expired: never recreated), or
# {-1, current} when someone else changed it since it was read.
_REPLACE = """
local current = redis.call('GET', KEYS[1])
if not current then return {0} end
if current ~= ARGV[1] then return {-1, current} end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return {1}
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
    """The verdict of `begin` (or of `peek`).

    `state`: `go` (send now; `window` is the unit taken), `done` or `pending` (an earlier
    request with this key; `delivery_id` names it), `reused`, `circuit`, `rate`, `closed`,
    `exhausted`; `peek` also answers `free` (nobody holds the key). `wait_ms` tells how
    long the circuit or rate limit still holds.
    """

    state: str
    delivery_id: str = ""
    window: str = ""
    wait_ms: int = 0


@dataclass(frozen=True)
class SendResult:
    """What a result event reports about a send.

    `status` is a `DeliveryStatus` number; `errcode` and `errmsg` are WeChat's.
    """

    status: int
    errcode: int
    errmsg: str

    def dump(self) -> str:
        """The parked form."""
        return json.dumps([self.status, self.errcode, self.errmsg], ensure_ascii=False)

    @classmethod
    def load(cls, value: Any) -> SendResult:
        """The parked form back."""
        status, errcode, errmsg = json.loads(value)
        return cls(int(status), int(errcode), str(errmsg))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class MessageStore:
    """Redis state of outbound sends."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        idempotency_ttl_seconds: int,
        record_ttl_seconds: int,
        background: Background,
    ) -> None:
        self._redis = client
        self._background = background
        self._begin = client.register_script(_BEGIN)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)
        self._locate_or_park = client.register_script(_LOCATE_OR_PARK)
        self._replace = client.register_script(_REPLACE)
        self._scripts = ScriptBatcher(client, background)  # concurrent sends share round trips
        self._idem_ms = idempotency_ttl_seconds * 1000
        self._record_ms = record_ttl_seconds * 1000
        self._pending_ms = 120_000  # longer than any send (deadlines are seconds)
        # A parked result is needed only until the `finish` of its send, which comes
        # within one send of WeChat's answer, and no send outlives its pending claim.
        # Not the record TTL: WeChat also reports sends made outside wxplatform (the
        # admin console, other systems on the account), whose results nobody ever
        # takes, and those must not pile up in Redis for a month.
        self._early_ms = self._pending_ms

    @staticmethod
    def idempotency_key(app_id: str, caller: str, key_digest: str) -> str:
        """The Redis key of one caller's idempotency key."""
        return app_key(app_id, "idem", caller, key_digest)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._scripts.run(script, keys, args)
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
    ) -> SendResult | None:
        """Store the record (and msgid index), mark the key done, refund an unused unit.

        Returns the result event that arrived for `msgid` before this (taken from
        Redis: the caller applies it to the record with `replace_record`), or None.
        """
        keys = [
            idem_key,
            app_key(app_id, "delivery", delivery_id),
            app_key(app_id, "delivery", "msgid", msgid) if msgid else "",
            app_key(app_id, "window", window_openid) if window_openid and refund else "",
            self._early_key(app_id, msgid) if msgid else "",
        ]
        args = [digest, delivery_id, record, self._idem_ms, self._record_ms, refund]
        # Shielded: the record must be written even if the caller's deadline cancels us,
        # or a retry with the same key could send the message a second time.
        early = await self._background.shielded(self._run(self._finish, keys, args))
        return SendResult.load(early) if early is not None else None

    async def peek(self, idem_key: str, digest: str) -> Begun:
        """Who holds an idempotency key now: `pending`, `done`, `reused` or `free`."""
        try:
            seen = await self._redis.get(idem_key)
        except RedisError as exc:
            raise StoreUnavailable("message store unreachable") from exc
        if seen is None:
            return Begun("free")
        # The value `begin` and `finish` write: `<pending|done>:<digest>:<delivery id>`.
        state, held_digest, delivery_id = _text(seen).split(":", 2)
        if held_digest != digest:
            return Begun("reused")
        return Begun(state, delivery_id=delivery_id)

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
        await self._background.shielded(
            self._run(self._release, keys, [digest, delivery_id, window])
        )

    async def trip_circuit(self, app_id: str, api: str, until_ms: int, now_ms: int) -> None:
        """Stop calling `api` for this app until `until_ms` (WeChat's daily quota is gone)."""
        try:
            # The value is the end (the service's clock); the TTL only cleans up.
            await self._redis.set(
                app_key(app_id, "circuit", api), until_ms, px=max(until_ms - now_ms, 1000) + 60_000
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

    async def locate_or_park(self, app_id: str, msgid: str, result: SendResult) -> str | None:
        """The delivery id sent as `msgid`; if none is known yet, park `result` for it.

        A parked result is handed to `finish` when it indexes `msgid`, or expires unused
        (a msgid we never sent, or a send whose record was never written).
        """
        keys = [app_key(app_id, "delivery", "msgid", msgid), self._early_key(app_id, msgid)]
        found = await self._run(self._locate_or_park, keys, [result.dump(), self._early_ms])
        return _text(found) if found is not None else None

    async def replace_record(
        self, app_id: str, delivery_id: str, expected: bytes, record: bytes
    ) -> tuple[bool, bytes | None]:
        """Compare-and-set a record, keeping its expiry.

        Returns (True, `record`) when it was `expected` and is now `record`; otherwise
        (False, what it is now), None when it is gone: an expired record stays gone.
        """
        keys = [app_key(app_id, "delivery", delivery_id)]
        reply = cast(list[Any], await self._run(self._replace, keys, [expected, record]))
        outcome = int(reply[0])
        if outcome == 1:
            return True, record
        return False, cast(bytes, reply[1]) if outcome == -1 else None

    @staticmethod
    def _early_key(app_id: str, msgid: str) -> str:
        return app_key(app_id, "delivery", "early", msgid)
