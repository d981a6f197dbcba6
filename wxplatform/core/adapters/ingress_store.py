"""Exactly-once acceptance of inbound messages, across any number of core replicas.

`accept` is one Lua script, so one Redis round trip per push. It first checks the push's
(timestamp, nonce) against the body first seen with them (a WeChat retry repeats the
body; a replayed signature does not). Then, if the message's dedup key is new, it
accepts the message atomically: the key stores the passive reply, the message is
appended to the app's event stream and the user's interaction windows are recorded. If
the key exists, nothing changes and the stored reply is returned, so every delivery of
a message — a WeChat retry, a spool replay, on any replica, even concurrent ones — gets
the first delivery's answer and the message is processed once.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from wxplatform.background import Background
from wxplatform.core.adapters import redis_keys, windows
from wxplatform.core.adapters.script_batch import ScriptBatcher
from wxplatform.core.model import Acceptance, Accepted, ReplayCheck
from wxplatform.errors import ReplayedRequest, StoreUnavailable

__all__ = ["IngressStore"]

# KEYS: dedup key, nonce key ("" = none), event stream, window hash.
# ARGV: body digest, nonce ttl ms, reply, dedup ttl ms, retention, message, msg_type,
#       event, window key ttl ms, the interaction's time (ms), "1" if it is an unfollow,
#       then the window grants (`windows.grant_args`).
_ACCEPT = (
    windows.LUA
    + """
if KEYS[2] ~= '' then
  local seen = redis.call('GET', KEYS[2])
  if seen and seen ~= ARGV[1] then return {'replay'} end
  if not seen then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end
end
local stored = redis.call('GET', KEYS[1])
if stored then return {'seen', stored} end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*',
                      'm', ARGV[6], 't', ARGV[7], 'e', ARGV[8])
window_record(KEYS[4], ARGV[9], tonumber(ARGV[10]), ARGV[11] == '1', ARGV, 12)
return {'new', id}
"""
)


class IngressStore:
    """Dedup records, replay guard, event stream appends and interaction windows."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        dedup_ttl_seconds: int,
        nonce_ttl_seconds: int,
        event_retention: int,
        background: Background,
    ) -> None:
        self._accept = client.register_script(_ACCEPT)
        # A burst of deliveries: one round trip.
        self._scripts = ScriptBatcher(client, background)
        self._dedup_ttl_ms = dedup_ttl_seconds * 1000
        self._nonce_ttl_ms = nonce_ttl_seconds * 1000
        self._retention = event_retention

    async def accept(
        self,
        app_id: str,
        dedup_key: str,
        replay: ReplayCheck | None,
        reply: bytes,
        accepted: Accepted,
    ) -> Acceptance:
        """Accept the message once; raises `ReplayedRequest` for a replayed signature."""
        keys = [
            redis_keys.dedup(app_id, dedup_key),
            redis_keys.nonce(app_id, replay.timestamp, replay.nonce) if replay else "",
            redis_keys.events(app_id),
            redis_keys.window(app_id, accepted.openid),
        ]
        args = [
            replay.body_sha256 if replay else "",
            self._nonce_ttl_ms,
            reply,
            self._dedup_ttl_ms,
            self._retention,
            accepted.message,
            accepted.msg_type,
            accepted.event,
            windows.KEY_TTL_MS,
            accepted.now_ms,
            "1" if accepted.close_windows else "0",
            *windows.grant_args(accepted.windows, accepted.now_ms),
        ]
        try:
            result = cast(list[bytes], await self._scripts.run(self._accept, keys, args))
        except RedisError as exc:
            raise StoreUnavailable("ingress store unreachable") from exc
        if result[0] == b"replay":
            raise ReplayedRequest("timestamp and nonce were used with another body")
        if result[0] == b"new":
            return Acceptance(new=True, reply=reply, event_id=result[1].decode())
        return Acceptance(new=False, reply=result[1])
