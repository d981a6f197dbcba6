"""Consumer-group reads of an app's event stream (Redis Streams).

Groups are Redis consumer groups on `wxp:{app}:events`, so every group sees every event
and the consumers of one group share them, whichever core replica each is connected to.
Unacknowledged events stay in the group's pending list. `claim` hands a consumer those
whose holder's visibility timeout has passed (each consumer's own timeout applies to the
events it holds) and moves the ones delivered too often to the dead-letter stream, in
one script, so nothing is claimed by two consumers or dead-lettered twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from wxplatform.core.adapters import redis_keys
from wxplatform.core.adapters.redis_client import own_pool
from wxplatform.core.model import StoredEvent
from wxplatform.errors import ShuttingDown, StoreUnavailable

__all__ = ["EventLog"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _event(event_id: Any, fields: dict[bytes, bytes], delivery_count: int) -> StoredEvent:
    return StoredEvent(
        event_id=_text(event_id),
        message=fields.get(b"m", b""),
        msg_type=_text(fields.get(b"t", b"")),
        event=_text(fields.get(b"e", b"")),
        delivery_count=delivery_count,
    )


# The claimer's own expired entries are counted in pages of this many (exactly, with
# bounded memory inside Redis); the first page is also the first to be reclaimed.
_PAGE = 1000
# Connections for the blocking reads of open event streams, one per stream reading:
# past this many streams per replica, a new one is refused (UNAVAILABLE) while ingress
# and sends keep their own pool.
_READERS = 512
_FORGET_AFTER_MS = 24 * 3600 * 1000  # a consumer's timeout is kept this long after it left

# KEYS: stream, the group's timeouts hash (consumer → visibility ms), the group's
#       last-seen zset, dead-letter stream.
# ARGV: group, consumer, its visibility ms, max in flight, max deliveries, retention,
#       page size, now ms, forget after ms, "1" to claim (else only count the room).
# → {room left, then id, flat fields, delivery count for each event claimed}.
# In flight = this consumer's pending events not yet past its visibility timeout (a
# count-only poll counts every pending one: it may under-use the room, never exceed
# it). Each holder's pending list is searched with its own timeout (the claimer's if the
# holder is unknown), the claimer's own first, so only claimable entries come back and
# none is passed over; an event past `max deliveries` goes to the dead-letter stream.
# Bookkeeping and dead letters use pcall: when Redis is out of memory they wait, and
# claims (which need no memory) go on.
_CLAIM = """
local group, me, mine = ARGV[1], ARGV[2], tonumber(ARGV[3])
local holders, holding, held = {}, {}, 0
local summary = redis.call('XPENDING', KEYS[1], group)
if summary[4] then
  for _, holder in ipairs(summary[4]) do
    holding[holder[1]] = true
    if holder[1] == me then held = tonumber(holder[2]) else table.insert(holders, holder[1]) end
  end
end
local room = tonumber(ARGV[4]) - held
if ARGV[10] ~= '1' then return {room} end
local now, forget = tonumber(ARGV[8]), tonumber(ARGV[9])
redis.pcall('HSET', KEYS[2], me, mine)
redis.pcall('ZADD', KEYS[3], now, me)
local gone = redis.pcall('ZRANGEBYSCORE', KEYS[3], '-inf', now - forget, 'LIMIT', 0, 10)
if gone.err == nil then
  for _, name in ipairs(gone) do
    redis.pcall('HDEL', KEYS[2], name)
    redis.pcall('ZREM', KEYS[3], name)
    -- Gone for a day and holding nothing: off the group's consumer list too (deleting
    -- one that holds events would drop them from redelivery).
    if not holding[name] then redis.pcall('XGROUP', 'DELCONSUMER', KEYS[1], group, name) end
  end
end
redis.pcall('PEXPIRE', KEYS[2], 2 * forget)
redis.pcall('PEXPIRE', KEYS[3], 2 * forget)
local page, own, start = tonumber(ARGV[7]), nil, '-'
while true do
  local batch = redis.call('XPENDING', KEYS[1], group, 'IDLE', mine, start, '+', page, me)
  if own == nil then own = batch end
  room = room + #batch
  if #batch < page then break end
  start = '(' .. batch[#batch][1]
end
local out = {0}
local function take(entries, timeout)
  for _, entry in ipairs(entries) do
    if room <= 0 then return end
    local id, count = entry[1], entry[4]
    local found = redis.call('XRANGE', KEYS[1], id, id)
    if #found == 0 then
      redis.call('XACK', KEYS[1], group, id)  -- trimmed away while pending
    elseif count + 1 > tonumber(ARGV[5]) then
      local fields = found[1][2]
      table.insert(fields, 'group') table.insert(fields, group)
      table.insert(fields, 'event_id') table.insert(fields, id)
      table.insert(fields, 'deliveries') table.insert(fields, count)
      local dead = redis.pcall('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', unpack(fields))
      if type(dead) ~= 'table' or dead.err == nil then redis.call('XACK', KEYS[1], group, id) end
    else
      redis.call('XCLAIM', KEYS[1], group, me, timeout, id)  -- counts a delivery
      table.insert(out, id)
      table.insert(out, found[1][2])
      table.insert(out, count + 1)
      room = room - 1
    end
  end
end
take(own, mine)
for _, holder in ipairs(holders) do
  if room <= 0 then break end
  local timeout = tonumber(redis.pcall('HGET', KEYS[2], holder) or mine) or mine
  take(redis.call('XPENDING', KEYS[1], group, 'IDLE', timeout, '-', '+', room, holder), timeout)
end
out[1] = room
return out
"""


class EventLog:
    """Reads, acknowledgements and dead-lettering for consumer groups.

    `reader` serves the blocking reads of open event streams: each holds a connection
    for up to a second at a time, so they get a pool of their own and cannot starve
    ingress and sends of connections.
    """

    def __init__(self, client: redis.Redis, *, retention: int) -> None:
        self._redis = client
        self._reader = own_pool(client, max_connections=_READERS)
        self._retention = retention
        self._claim = client.register_script(_CLAIM)
        self._reads: set[asyncio.Future[Any]] = set()
        self._closed = False

    async def close(self) -> None:
        """Wait for blocking reads left behind by departed consumers (at most one block).

        Reads asked for after this are refused: the reader pool is closed, and one made
        again would open connections that nothing closes."""
        self._closed = True
        await asyncio.gather(*self._reads, return_exceptions=True)
        await self._reader.aclose(close_connection_pool=True)

    async def ensure_group(self, app_id: str, group: str, *, from_start: bool) -> None:
        """Create the group (and the stream) unless it exists."""
        try:
            await self._redis.xgroup_create(
                redis_keys.events(app_id), group, id="0" if from_start else "$", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise StoreUnavailable("event log refused to create the group") from exc
        except RedisError as exc:
            raise StoreUnavailable("event log unreachable") from exc

    async def claim(
        self,
        app_id: str,
        group: str,
        consumer: str,
        *,
        visibility_ms: int,
        max_in_flight: int,
        max_deliveries: int,
        take_expired: bool = True,
    ) -> tuple[int, list[StoredEvent]]:
        """The room this consumer has for new events, and the expired events it now holds.

        Events past `max_deliveries` move to the dead-letter stream instead. Without
        `take_expired` only the room is counted (cheaply: expired events of its own
        count as in flight until the next full claim).
        """
        keys = [
            redis_keys.events(app_id),
            redis_keys.consumer_timeouts(app_id, group),
            redis_keys.consumers_seen(app_id, group),
            redis_keys.dead_letters(app_id),
        ]
        args: list[str | int] = [
            group,
            consumer,
            visibility_ms,
            max_in_flight,
            max_deliveries,
            self._retention,
            _PAGE,
            int(time.time() * 1000),
            _FORGET_AFTER_MS,
            "1" if take_expired else "0",
        ]
        try:
            reply = await self._claim(keys, args)
        except RedisError as exc:
            raise StoreUnavailable("event log unreachable") from exc
        events = [
            _event(
                reply[i],
                dict(zip(reply[i + 1][::2], reply[i + 1][1::2], strict=True)),
                reply[i + 2],
            )
            for i in range(1, len(reply), 3)
        ]
        return int(reply[0]), events

    async def read_new(
        self, app_id: str, group: str, consumer: str, *, count: int, block_ms: int
    ) -> list[StoredEvent]:
        """Events never delivered to the group, waiting up to `block_ms` for some."""
        if self._closed:
            raise ShuttingDown("the event log is closed")
        stream = redis_keys.events(app_id)
        read: asyncio.Future[Any] = asyncio.ensure_future(
            self._reader.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
        )
        self._reads.add(read)
        read.add_done_callback(self._reads.discard)
        try:
            # When the consumer goes away mid-read, let the blocking read end by itself
            # (within block_ms): cancelling it would strand its pooled connection. What
            # it read stays pending and is redelivered after the visibility timeout.
            reply: (
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None
            ) = await asyncio.shield(read)
        except RedisError as exc:
            raise StoreUnavailable("event log unreachable") from exc
        events: list[StoredEvent] = []
        for _stream, entries in reply or ():
            events.extend(_event(event_id, fields, 1) for event_id, fields in entries if fields)
        return events

    async def ack(self, app_id: str, group: str, event_ids: Sequence[str]) -> int:
        """Acknowledge events for the group; returns how many were pending."""
        if not event_ids:
            return 0
        try:
            return int(await self._redis.xack(redis_keys.events(app_id), group, *event_ids))
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return 0
            raise StoreUnavailable("event log refused the acknowledgement") from exc
        except RedisError as exc:
            raise StoreUnavailable("event log unreachable") from exc
