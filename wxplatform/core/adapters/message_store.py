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

import hashlib
import re
import secrets
from dataclasses import replace
from typing import Any, cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from wxplatform.background import Background
from wxplatform.core.adapters import redis_keys, windows
from wxplatform.core.adapters.script_batch import ScriptBatcher
from wxplatform.core.model import Begun, Claim, ClaimState, SendResult
from wxplatform.errors import StoreUnavailable

__all__ = ["MessageStore", "is_delivery_id", "new_delivery_id"]

# KEYS: idempotency, circuit, rate counter, window hash ("" = no window check).
# ARGV: request digest, delivery id, idempotency ttl ms, pending ttl ms, rate limit,
#       now ms.
_BEGIN = (
    windows.LUA
    + """
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
local unit, any_open = window_take(KEYS[4], tonumber(ARGV[6]))
if not unit then
  redis.call('DEL', KEYS[1])
  if any_open then return {'exhausted'} end
  return {'closed'}
end
return {'go', unit}
"""
)

# KEYS: idempotency, delivery record, msgid index ("" = none), window hash ("" = none),
#       early result of the msgid ("" = none).
# ARGV: request digest, delivery id, record bytes, idempotency ttl ms, record ttl ms,
#       window kind to refund ("" = keep).
# Returns the early result parked for the msgid (taken), or nil.
_FINISH = (
    windows.LUA
    + """
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
redis.call('SET', KEYS[1], 'done:' .. ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[4])
if KEYS[4] ~= '' and ARGV[6] ~= '' then window_refund(KEYS[4], ARGV[6]) end
if KEYS[3] == '' then return false end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5])
-- From here on results find the record through the index; one that came earlier was
-- parked by LOCATE_OR_PARK and is handed over now.
local early = redis.call('GET', KEYS[5])
if early then redis.call('DEL', KEYS[5]) end
return early
"""
)

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
_RELEASE = (
    windows.LUA
    + """
if redis.call('GET', KEYS[1]) == 'pending:' .. ARGV[1] .. ':' .. ARGV[2] then
  redis.call('DEL', KEYS[1])
end
if KEYS[2] ~= '' and ARGV[3] ~= '' then window_refund(KEYS[2], ARGV[3]) end
return 1
"""
)


_DELIVERY_ID = re.compile(r"d[0-9a-f]{24}")


def new_delivery_id() -> str:
    """A fresh delivery id: "d" and 24 hex digits."""
    return "d" + secrets.token_hex(12)


def is_delivery_id(value: str) -> bool:
    """Whether `value` has the form `new_delivery_id` gives (only such ids name a record)."""
    return _DELIVERY_ID.fullmatch(value) is not None


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
    def claim(
        app_id: str, caller: str, idempotency_key: str, request: bytes, *, window_openid: str = ""
    ) -> Claim:
        """A new claim on one caller's idempotency key for `request` (its serialized form).

        The key is stored by its hash (callers choose it, and it may be long); the request
        by its digest, so the same key with another request is told apart as a reuse.
        """
        key_sha256 = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
        return Claim(
            app_id=app_id,
            idempotency_key=idempotency_key,
            key=redis_keys.idempotency(app_id, caller, key_sha256),
            digest=hashlib.sha256(request).hexdigest(),
            delivery_id=new_delivery_id(),
            window_openid=window_openid,
        )

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._scripts.run(script, keys, args)
        except RedisError as exc:
            raise StoreUnavailable("message store unreachable") from exc

    async def begin(self, claim: Claim, *, api: str, rate_limit: int, now_ms: int) -> Begun:
        """Claim, check the circuit and the rate limit, take a window unit."""
        app_id = claim.app_id
        keys = [
            claim.key,
            redis_keys.circuit(app_id, api),
            redis_keys.rate(app_id, now_ms // 1000),
            redis_keys.window(app_id, claim.window_openid) if claim.window_openid else "",
        ]
        args = [
            claim.digest,
            claim.delivery_id,
            self._idem_ms,
            self._pending_ms,
            rate_limit,
            now_ms,
        ]
        reply = [_text(v) for v in cast(list[Any], await self._run(self._begin, keys, args))]
        state, extra = ClaimState(reply[0]), reply[1] if len(reply) > 1 else ""
        if state in (ClaimState.DONE, ClaimState.PENDING):
            return Begun(state, claim, delivery_id=extra)
        if state in (ClaimState.CIRCUIT, ClaimState.RATE):
            return Begun(state, claim, wait_ms=int(extra))
        if state is ClaimState.GO:
            return Begun(state, replace(claim, window=extra))
        return Begun(state, claim)

    async def finish(
        self, claim: Claim, *, record: bytes, msgid: str, refund: bool
    ) -> SendResult | None:
        """Store the record (and msgid index), mark the key done, refund the window unit
        when `refund` (the message was not sent).

        Returns the result event that arrived for `msgid` before this (taken from
        Redis: the caller applies it to the record with `replace_record`), or None.
        """
        app_id = claim.app_id
        refunded = claim.window if refund else ""
        keys = [
            claim.key,
            redis_keys.delivery(app_id, claim.delivery_id),
            redis_keys.delivery_by_msgid(app_id, msgid) if msgid else "",
            redis_keys.window(app_id, claim.window_openid) if refunded else "",
            redis_keys.early_result(app_id, msgid) if msgid else "",
        ]
        args = [claim.digest, claim.delivery_id, record, self._idem_ms, self._record_ms, refunded]
        # Shielded: the record must be written even if the caller's deadline cancels us,
        # or a retry with the same key could send the message a second time.
        early = await self._background.shielded(self._run(self._finish, keys, args))
        return SendResult.load(early) if early is not None else None

    async def peek(self, claim: Claim) -> Begun:
        """Who holds the claim's idempotency key now: PENDING, DONE, REUSED or FREE."""
        try:
            seen = await self._redis.get(claim.key)
        except RedisError as exc:
            raise StoreUnavailable("message store unreachable") from exc
        if seen is None:
            return Begun(ClaimState.FREE, claim)
        # The value `begin` and `finish` write: `<pending|done>:<digest>:<delivery id>`.
        state, held_digest, delivery_id = _text(seen).split(":", 2)
        if held_digest != claim.digest:
            return Begun(ClaimState.REUSED, claim)
        return Begun(ClaimState(state), claim, delivery_id=delivery_id)

    async def release(self, claim: Claim) -> None:
        """Forget a claim whose message was certainly not sent (refunding its unit)."""
        keys = [
            claim.key,
            redis_keys.window(claim.app_id, claim.window_openid) if claim.window else "",
        ]
        args = [claim.digest, claim.delivery_id, claim.window]
        await self._background.shielded(self._run(self._release, keys, args))

    async def trip_circuit(self, app_id: str, api: str, until_ms: int, now_ms: int) -> None:
        """Stop calling `api` for this app until `until_ms` (WeChat's daily quota is gone)."""
        try:
            # The value is the end (the service's clock); the TTL only cleans up.
            await self._redis.set(
                redis_keys.circuit(app_id, api), until_ms, px=max(until_ms - now_ms, 1000) + 60_000
            )
        except RedisError as exc:
            raise StoreUnavailable("message store unreachable") from exc

    async def record(self, app_id: str, delivery_id: str) -> bytes | None:
        """A stored delivery record."""
        try:
            return cast(
                bytes | None, await self._redis.get(redis_keys.delivery(app_id, delivery_id))
            )
        except RedisError as exc:
            raise StoreUnavailable("message store unreachable") from exc

    async def locate_or_park(self, app_id: str, msgid: str, result: SendResult) -> str | None:
        """The delivery id sent as `msgid`; if none is known yet, park `result` for it.

        A parked result is handed to `finish` when it indexes `msgid`, or expires unused
        (a msgid we never sent, or a send whose record was never written).
        """
        keys = [
            redis_keys.delivery_by_msgid(app_id, msgid),
            redis_keys.early_result(app_id, msgid),
        ]
        found = await self._run(self._locate_or_park, keys, [result.dump(), self._early_ms])
        return _text(found) if found is not None else None

    async def replace_record(
        self, app_id: str, delivery_id: str, expected: bytes, record: bytes
    ) -> tuple[bool, bytes | None]:
        """Compare-and-set a record, keeping its expiry.

        Returns (True, `record`) when it was `expected` and is now `record`; otherwise
        (False, what it is now), None when it is gone: an expired record stays gone.
        """
        keys = [redis_keys.delivery(app_id, delivery_id)]
        reply = cast(list[Any], await self._run(self._replace, keys, [expected, record]))
        outcome = int(reply[0])
        if outcome == 1:
            return True, record
        return False, cast(bytes, reply[1]) if outcome == -1 else None
