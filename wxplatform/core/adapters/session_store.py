"""Platform sessions in Redis: one hash per session, a set per user, an event stream.

A session is stored under the SHA-256 of its token, never the token itself. Every
change is one Lua script, so one round trip: creating writes the session, adds it to
its user's set and appends a `created` event; revoking deletes it, takes it out of the
set and appends a `revoked` event; refreshing moves its expiry (never past the
absolute cap). Reading is a single HGETALL. Times come from the service's clock, not
Redis's: a session is live while `expires` is ahead of the caller's `now`, and the key's
own TTL only cleans up after that.

The event stream is what `WatchSessionEvents` reads, in order, resumable by entry id;
it is trimmed to the configured retention. A session's user set lists the hashes of
its sessions; members whose session has gone are dropped when the set is next written.
The scripts that walk a user's set build the session keys from the prefix they are
given; every key involved carries the app's hash tag, so all are in one Cluster slot.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from wxplatform.core.adapters import redis_keys
from wxplatform.core.adapters.redis_client import own_pool
from wxplatform.core.model import SessionChange, StoredSession
from wxplatform.errors import ShuttingDown, StoreUnavailable

__all__ = ["SessionStore", "is_event_id"]

# Watches waiting for new events, each holding a connection for up to a block: past
# this many per replica, a new watch is refused (UNAVAILABLE) while the rest go on.
_WATCHERS = 256
_EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

# A session hash's fields, in the order the scripts return them (_REFRESH names them too).
_FIELDS = ("id", "openid", "unionid", "attrs", "created", "expires", "absolute", "idle")

# KEYS: session, user set, events. ARGV: the _FIELDS values, session ttl ms, user set
# ttl ms, retention, the session's hash (the set member), the session key prefix.
_CREATE = """
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'openid', ARGV[2], 'unionid', ARGV[3],
           'attrs', ARGV[4], 'created', ARGV[5], 'expires', ARGV[6], 'absolute', ARGV[7],
           'idle', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[9])
for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[13] .. member) == 0 then redis.call('SREM', KEYS[2], member) end
end
redis.call('SADD', KEYS[2], ARGV[12])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[10]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[10])
end
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[11], '*',
                  't', 'created', 's', ARGV[1], 'o', ARGV[2], 'at', ARGV[5])
"""

# KEYS: session. ARGV: now ms. → the _FIELDS values with the new expiry, or nil.
_REFRESH = """
local values = redis.call('HMGET', KEYS[1], 'id', 'openid', 'unionid', 'attrs', 'created',
                         'expires', 'absolute', 'idle')
local expires = tonumber(values[6])
if not expires or expires <= tonumber(ARGV[1]) then return false end
local renewed = math.min(tonumber(ARGV[1]) + tonumber(values[8]), tonumber(values[7]))
if renewed > expires then
  redis.call('HSET', KEYS[1], 'expires', renewed)
  redis.call('PEXPIRE', KEYS[1], renewed - tonumber(ARGV[1]))
  values[6] = tostring(renewed)
end
return values
"""

# KEYS: session, events, the user set's key prefix. ARGV: now ms, retention, the
# session's hash. → 1 when a live session was revoked.
_REVOKE = """
local values = redis.call('HMGET', KEYS[1], 'id', 'openid', 'expires')
if not values[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3] .. values[2], ARGV[3])
if tonumber(values[3]) <= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
           't', 'revoked', 's', values[1], 'o', values[2], 'at', ARGV[1])
return 1
"""

# KEYS: user set, events. ARGV: now ms, retention, the session key prefix.
# → how many live sessions were revoked.
_REVOKE_USER = """
local count = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[3] .. member
  local values = redis.call('HMGET', key, 'id', 'openid', 'expires')
  if values[1] then
    redis.call('DEL', key)
    if tonumber(values[3]) > tonumber(ARGV[1]) then
      count = count + 1
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
                 't', 'revoked', 's', values[1], 'o', values[2], 'at', ARGV[1])
    end
  end
end
redis.call('DEL', KEYS[1])
return count
"""


# KEYS: events. ARGV: retention. → the newest entry's id, after adding a marker entry
# (skipped by readers) to an empty stream.
_NEWEST = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then return newest[1][1] end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 't', 'mark')
"""


def is_event_id(value: str) -> bool:
    """Whether `value` has the form of a stream entry id (`<ms>-<seq>`)."""
    return _EVENT_ID.fullmatch(value) is not None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _session(values: list[Any]) -> StoredSession:
    sid, openid, unionid, attrs, created, expires, absolute, idle = (_text(v) for v in values)
    return StoredSession(
        session_id=sid,
        openid=openid,
        unionid=unionid,
        attributes=json.loads(attrs),
        created_ms=int(created),
        expires_ms=int(expires),
        absolute_ms=int(absolute),
        idle_ms=int(idle),
    )


def _id_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


class SessionStore:
    """Sessions, their users' sets and the per-app event stream."""

    def __init__(self, client: redis.Redis, *, event_retention: int) -> None:
        self._redis = client
        self._watch = own_pool(client, max_connections=_WATCHERS)
        self._retention = event_retention
        self._create = client.register_script(_CREATE)
        self._refresh = client.register_script(_REFRESH)
        self._revoke = client.register_script(_REVOKE)
        self._revoke_user = client.register_script(_REVOKE_USER)
        self._newest = client.register_script(_NEWEST)
        self._reads: set[asyncio.Future[Any]] = set()
        self._closed = False

    async def close(self) -> None:
        """Wait for watch reads left behind by departed watchers (at most one block); reads
        asked for after this are refused."""
        self._closed = True
        await asyncio.gather(*self._reads, return_exceptions=True)
        await self._watch.aclose(close_connection_pool=True)

    async def create(
        self, app_id: str, token_sha256: str, session: StoredSession, *, now_ms: int
    ) -> str:
        """Store a new session; returns the id of its `created` event."""
        keys = [
            redis_keys.session(app_id, token_sha256),
            redis_keys.user_sessions(app_id, session.openid),
            redis_keys.session_events(app_id),
        ]
        args: list[str | int] = [
            session.session_id,
            session.openid,
            session.unionid,
            json.dumps(session.attributes, ensure_ascii=False, separators=(",", ":")),
            session.created_ms,
            session.expires_ms,
            session.absolute_ms,
            session.idle_ms,
            max(session.expires_ms - now_ms, 1),
            max(session.absolute_ms - now_ms, 1),
            self._retention,
            token_sha256,
            redis_keys.session(app_id, ""),
        ]
        return _text(await self._run(self._create(keys, args)))

    async def get(self, app_id: str, token_sha256: str, *, now_ms: int) -> StoredSession | None:
        """The live session with this token hash (one round trip), or None."""
        values = await self._run(
            self._redis.hmget(redis_keys.session(app_id, token_sha256), _FIELDS)
        )
        if values[0] is None:
            return None
        session = _session(values)
        return session if session.expires_ms > now_ms else None

    async def refresh(self, app_id: str, token_sha256: str, *, now_ms: int) -> StoredSession | None:
        """Extend a live session by its idle TTL, up to its cap; None if not live."""
        values = await self._run(
            self._refresh([redis_keys.session(app_id, token_sha256)], [now_ms])
        )
        return _session(values) if values else None

    async def revoke(self, app_id: str, token_sha256: str, *, now_ms: int) -> bool:
        """Revoke one session; True if it was live."""
        keys = [
            redis_keys.session(app_id, token_sha256),
            redis_keys.session_events(app_id),
            redis_keys.user_sessions(app_id, ""),
        ]
        return bool(await self._run(self._revoke(keys, [now_ms, self._retention, token_sha256])))

    async def revoke_user(self, app_id: str, openid: str, *, now_ms: int) -> int:
        """Revoke every session of a user; returns how many were live."""
        keys = [redis_keys.user_sessions(app_id, openid), redis_keys.session_events(app_id)]
        args: list[str | int] = [now_ms, self._retention, redis_keys.session(app_id, "")]
        return int(await self._run(self._revoke_user(keys, args)))

    async def last_event_id(self, app_id: str) -> str:
        """The id of the newest event ("0-0" when there is none)."""
        newest = await self._run(self._redis.xrevrange(redis_keys.session_events(app_id), count=1))
        return _text(newest[0][0]) if newest else "0-0"

    async def retains(self, app_id: str, after: str) -> bool:
        """Whether every event after `after` is still kept: `after` is no older than the
        oldest event kept (trimming removes the oldest first)."""
        oldest = await self._run(self._redis.xrange(redis_keys.session_events(app_id), count=1))
        return bool(oldest) and _id_key(_text(oldest[0][0])) <= _id_key(after)

    async def read_after(
        self, app_id: str, after: str, *, count: int, block_ms: int
    ) -> tuple[list[SessionChange], str]:
        """Events after `after`, oldest first, waiting up to `block_ms` for some, and the
        position after them (markers are skipped but passed)."""
        if self._closed:
            raise ShuttingDown("the session store is closed")
        stream = redis_keys.session_events(app_id)
        read: asyncio.Future[Any] = asyncio.ensure_future(
            self._watch.xread({stream: after}, count=count, block=block_ms)
        )
        self._reads.add(read)
        read.add_done_callback(self._reads.discard)
        # A watcher leaving mid-read lets the read end by itself (within block_ms):
        # cancelling it would strand its pooled connection.
        reply = await self._run(asyncio.shield(read))
        changes: list[SessionChange] = []
        for _stream, entries in reply or ():
            for event_id, fields in entries:
                after = _text(event_id)
                if fields.get(b"t") == b"mark":
                    continue
                changes.append(
                    SessionChange(
                        event_id=_text(event_id),
                        revoked=fields.get(b"t") == b"revoked",
                        session_id=_text(fields.get(b"s", b"")),
                        openid=_text(fields.get(b"o", b"")),
                        at_ms=int(fields.get(b"at", b"0")),
                    )
                )
        return changes, after

    @staticmethod
    async def _run(call: Any) -> Any:
        try:
            return cast(Any, await call)
        except RedisError as exc:
            raise StoreUnavailable("session store unreachable") from exc
