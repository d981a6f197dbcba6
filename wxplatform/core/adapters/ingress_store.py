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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from wxplatform.background import Background
from wxplatform.core.adapters.redis_keys import app_key
from wxplatform.core.adapters.script_batch import ScriptBatcher
from wxplatform.errors import ReplayedRequest, StoreUnavailable

__all__ = ["Acceptance", "Accepted", "IngressStore", "ReplayCheck", "WindowGrant"]

_WINDOW_KEY_TTL_MS = (48 * 3600 + 60) * 1000  # the longest window (48 h) and a margin

# KEYS: dedup key, nonce key ("" = none), event stream, window hash.
# ARGV: body digest, nonce ttl ms, reply, dedup ttl ms, retention, message, msg_type,
#       event, window key ttl ms, the interaction's time (ms), "1" if it is an unfollow,
#       then window kind / "<expires ms>:<quota>" pairs.
# Pushes can arrive late (replayed from the edge's spool), so the window hash keeps
# when each window was opened (`<kind>:at`) and the latest unfollow (`unfollowed:at`):
# an unfollow closes only the windows opened before it (or in the same second), an
# interaction older than the latest unfollow opens nothing, and a grant replaces a
# window of its kind only if it ends no earlier (a late push must not hand back quota
# a newer window has used).
_ACCEPT = """
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
local at = tonumber(ARGV[10])
local unfollowed = tonumber(redis.call('HGET', KEYS[4], 'unfollowed:at') or '0')
if ARGV[11] == '1' and at > unfollowed then
  local fields = redis.call('HGETALL', KEYS[4])
  for i = 1, #fields, 2 do
    local kind = fields[i]
    if not string.find(kind, ':', 1, true) then
      local opened = tonumber(redis.call('HGET', KEYS[4], kind .. ':at') or '0')
      if opened <= at then redis.call('HDEL', KEYS[4], kind, kind .. ':used', kind .. ':at') end
    end
  end
  redis.call('HSET', KEYS[4], 'unfollowed:at', at)
  redis.call('PEXPIRE', KEYS[4], ARGV[9])
end
if at >= unfollowed then
  for i = 12, #ARGV, 2 do
    local held = redis.call('HGET', KEYS[4], ARGV[i])
    local ends = tonumber(string.match(ARGV[i + 1], '^%d+'))
    if not held or tonumber(string.match(held, '^%d+')) <= ends then
      redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1], ARGV[i] .. ':used', 0,
                 ARGV[i] .. ':at', at)
      redis.call('PEXPIRE', KEYS[4], ARGV[9])
    end
  end
end
return {'new', id}
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
class Accepted:
    """What acceptance appends: the message and its filter fields, and the windows it opens."""

    message: bytes
    msg_type: str
    event: str
    openid: str
    windows: Sequence[WindowGrant]
    now_ms: int
    close_windows: bool = False  # the user unfollowed: no window stays open


@dataclass(frozen=True)
class Acceptance:
    """`new` for a first delivery (then `event_id` is set); the reply to give either way."""

    new: bool
    reply: bytes
    event_id: str = ""


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
        window_args: list[bytes | str | int] = []
        for grant in accepted.windows:
            expires_ms = accepted.now_ms + grant.seconds * 1000
            window_args += [grant.kind, f"{expires_ms}:{grant.quota}"]
        keys = [
            app_key(app_id, "dedup", dedup_key),
            app_key(app_id, "nonce", str(replay.timestamp), replay.nonce) if replay else "",
            app_key(app_id, "events"),
            app_key(app_id, "window", accepted.openid),
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
            # Never shorten the window key's life: it also holds the user's longer windows.
            _WINDOW_KEY_TTL_MS,
            accepted.now_ms,
            "1" if accepted.close_windows else "0",
            *window_args,
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
