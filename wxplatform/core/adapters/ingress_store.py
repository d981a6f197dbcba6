"""Exactly-once acceptance of inbound messages, across any number of core replicas.

`admit` runs one Lua script: it checks the push's (timestamp, nonce) against the body
first seen with them (a WeChat retry repeats the body; a replayed signature does not),
then claims the message's dedup key with `SET NX` as `pending:<random marker>`. The
owner computes the reply and `commit`s in one script that first checks it still holds
the claim: the dedup key becomes `done:` + the reply, the message is appended to the
app's event stream, and the user's interaction windows are recorded, so a message is
either fully accepted, once, or not at all. A delivery that finds
`pending` (the first one is still in flight, maybe on another replica) waits for it and
returns the same reply; one that finds `done` returns it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from wxplatform.core.adapters.redis_keys import app_key
from wxplatform.errors import IdempotentRequestInProgress, ReplayedRequest, StoreUnavailable

__all__ = ["Accepted", "Admission", "IngressStore", "ReplayCheck", "WindowGrant"]

_DONE = b"done:"
_WINDOW_KEY_TTL_MS = (48 * 3600 + 60) * 1000  # the longest window (48 h) and a margin

# KEYS: dedup key, nonce key ("" when the push carries no nonce).
# ARGV: body digest, nonce ttl ms, pending marker (unique per claim), pending ttl ms.
_ADMIT = """
if KEYS[2] ~= '' then
  local seen = redis.call('GET', KEYS[2])
  if seen and seen ~= ARGV[1] then return {'replay'} end
  if not seen then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end
end
if redis.call('SET', KEYS[1], ARGV[3], 'NX', 'PX', ARGV[4]) then return {'owned'} end
return {'taken', redis.call('GET', KEYS[1])}
"""

# Commits only if this claim still owns the key: an owner that stalled past its pending
# TTL, while another replica took over, must not append the message a second time.
# KEYS: dedup key, event stream, window key.
# ARGV: pending marker, done value, dedup ttl ms, retention, message, msg_type, event,
#       window key ttl ms, then window field/value pairs.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
                      'm', ARGV[5], 't', ARGV[6], 'e', ARGV[7])
if #ARGV > 8 then
  redis.call('HSET', KEYS[3], unpack(ARGV, 9))
  redis.call('PEXPIRE', KEYS[3], ARGV[8])
end
return id
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class ReplayCheck:
    """The signature parameters and body digest of a push."""

    timestamp: int
    nonce: str
    body_sha256: str


@dataclass(frozen=True)
class WindowGrant:
    """A customer-service window an interaction opens: `quota` sends within `seconds`."""

    kind: str
    quota: int
    seconds: int


@dataclass(frozen=True)
class Admission:
    """Ours to process (`owned`, with the claim's `marker`), or an earlier delivery's reply."""

    owned: bool
    reply: bytes = b""
    marker: bytes = b""


@dataclass(frozen=True)
class Accepted:
    """What `commit` appends: the message and its filter fields, and the windows it opens."""

    message: bytes
    msg_type: str
    event: str
    openid: str
    windows: Sequence[WindowGrant]
    now_ms: int


class IngressStore:
    """Dedup records, replay guard, event stream appends and interaction windows."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        dedup_ttl_seconds: int,
        nonce_ttl_seconds: int,
        event_retention: int,
        pending_seconds: int = 10,
    ) -> None:
        self._admit = client.register_script(_ADMIT)
        self._commit = client.register_script(_COMMIT)
        self._release = client.register_script(_RELEASE)
        self._dedup_ttl_ms = dedup_ttl_seconds * 1000
        self._nonce_ttl_ms = nonce_ttl_seconds * 1000
        self._pending_ms = pending_seconds * 1000
        self._retention = event_retention

    async def admit(
        self, app_id: str, dedup_key: str, replay: ReplayCheck | None, *, wait_seconds: float
    ) -> Admission:
        """Claim the message, or wait (up to `wait_seconds`) for the first delivery's reply.

        Raises `ReplayedRequest` for a reused (timestamp, nonce) with another body, and
        `IdempotentRequestInProgress` when the first delivery does not finish in time.
        """
        key = app_key(app_id, "dedup", dedup_key)
        nonce_key = app_key(app_id, "nonce", str(replay.timestamp), replay.nonce) if replay else ""
        marker = b"pending:" + secrets.token_hex(8).encode()
        args = (replay.body_sha256 if replay else "", self._nonce_ttl_ms, marker, self._pending_ms)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        delay = 0.005
        try:
            while True:
                result = cast(list[bytes], await self._admit(keys=[key, nonce_key], args=args))
                if result[0] == b"replay":
                    raise ReplayedRequest("timestamp and nonce were used with another body")
                if result[0] == b"owned":
                    return Admission(owned=True, marker=marker)
                value = result[1] if len(result) > 1 else None
                if value is not None and value.startswith(_DONE):
                    return Admission(owned=False, reply=value[len(_DONE) :])
                # Pending: the first delivery is in flight, maybe on another replica (or
                # its claim just expired, and the next round claims it). Re-running the
                # nonce check on each round is harmless: it sees the same digest.
                if loop.time() >= deadline:
                    raise IdempotentRequestInProgress("the first delivery is still in flight")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
        except RedisError as exc:
            raise StoreUnavailable("ingress store unreachable") from exc

    async def commit(
        self, app_id: str, dedup_key: str, admission: Admission, reply: bytes, accepted: Accepted
    ) -> str | None:
        """Atomically: mark done with `reply`, append to the stream, open the windows.

        Returns the stream entry id, or None when the claim was lost to another replica
        (which then accepts the message itself).
        """
        window_args: list[bytes | str | int] = []
        if accepted.windows:
            window_args.append(_WINDOW_KEY_TTL_MS)
            for grant in accepted.windows:
                expires_ms = accepted.now_ms + grant.seconds * 1000
                window_args += [grant.kind, f"{expires_ms}:{grant.quota}", f"{grant.kind}:used", 0]
        try:
            event_id = await self._commit(
                keys=[
                    app_key(app_id, "dedup", dedup_key),
                    app_key(app_id, "events"),
                    app_key(app_id, "window", accepted.openid),
                ],
                args=[
                    admission.marker,
                    _DONE + reply,
                    self._dedup_ttl_ms,
                    self._retention,
                    accepted.message,
                    accepted.msg_type,
                    accepted.event,
                    *window_args,
                ],
            )
        except RedisError as exc:
            raise StoreUnavailable("ingress store unreachable") from exc
        if event_id is None:
            return None
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    async def release(self, app_id: str, dedup_key: str, admission: Admission) -> None:
        """Give up an owned claim after a failure, so a retry can process the message."""
        with contextlib.suppress(RedisError):  # if it fails, the claim expires anyway
            await self._release(keys=[app_key(app_id, "dedup", dedup_key)], args=[admission.marker])
