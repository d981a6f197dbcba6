"""Consumer-group reads of an app's event stream (Redis Streams).

Groups are Redis consumer groups on `wxp:{app}:events`, so every group sees every event
and the consumers of one group share them, whichever core replica each is connected to.
Unacknowledged events stay in the group's pending list; `claim_idle` hands those idle
longer than the visibility timeout to another consumer and reports how often each was
delivered, so the service can dead-letter the ones that keep failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from wxplatform.core.adapters.redis_keys import app_key
from wxplatform.errors import StoreUnavailable

__all__ = ["EventLog", "StoredEvent"]


@dataclass(frozen=True)
class StoredEvent:
    """One entry of an app's stream as delivered to a group."""

    event_id: str
    message: bytes
    msg_type: str
    event: str
    delivery_count: int


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


class EventLog:
    """Reads, acknowledgements and dead-lettering for consumer groups."""

    def __init__(self, client: redis.Redis, *, retention: int) -> None:
        self._redis = client
        self._retention = retention
        self._reads: set[asyncio.Future[Any]] = set()

    async def close(self) -> None:
        """Wait for blocking reads left behind by departed consumers (at most one block)."""
        await asyncio.gather(*self._reads, return_exceptions=True)

    async def ensure_group(self, app_id: str, group: str, *, from_start: bool) -> None:
        """Create the group (and the stream) unless it exists."""
        try:
            await self._redis.xgroup_create(
                app_key(app_id, "events"), group, id="0" if from_start else "$", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise StoreUnavailable("event log refused to create the group") from exc
        except RedisError as exc:
            raise StoreUnavailable("event log unreachable") from exc

    async def pending_for(self, app_id: str, group: str, consumer: str) -> int:
        """How many events this consumer holds unacknowledged."""
        try:
            summary = await self._redis.xpending(app_key(app_id, "events"), group)
        except RedisError as exc:
            raise StoreUnavailable("event log unreachable") from exc
        for entry in summary.get("consumers") or ():
            if _text(entry["name"]) == consumer:
                return int(entry["pending"])
        return 0

    async def read_new(
        self, app_id: str, group: str, consumer: str, *, count: int, block_ms: int
    ) -> list[StoredEvent]:
        """Events never delivered to the group, waiting up to `block_ms` for some."""
        stream = app_key(app_id, "events")
        read: asyncio.Future[Any] = asyncio.ensure_future(
            self._redis.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
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

    async def claim_idle(
        self, app_id: str, group: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[StoredEvent]:
        """Take over events delivered but unacknowledged for longer than `min_idle_ms`."""
        stream = app_key(app_id, "events")
        try:
            reply = await self._redis.xautoclaim(
                stream, group, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
            )
            entries = [(event_id, fields) for event_id, fields in reply[1]]
            trimmed = [event_id for event_id, fields in entries if not fields]
            if trimmed:  # trimmed away by retention while pending: nothing left to deliver
                await self._redis.xack(stream, group, *trimmed)
            live = [(event_id, fields) for event_id, fields in entries if fields]
            if not live:
                return []
            pending = await self._redis.xpending_range(
                stream,
                group,
                min=live[0][0],
                max=live[-1][0],
                count=len(live) * 2,
                consumername=consumer,
            )
        except RedisError as exc:
            raise StoreUnavailable("event log unreachable") from exc
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return [
            _event(event_id, fields, counts.get(_text(event_id), 1)) for event_id, fields in live
        ]

    async def ack(self, app_id: str, group: str, event_ids: Sequence[str]) -> int:
        """Acknowledge events for the group; returns how many were pending."""
        if not event_ids:
            return 0
        try:
            return int(await self._redis.xack(app_key(app_id, "events"), group, *event_ids))
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return 0
            raise StoreUnavailable("event log refused the acknowledgement") from exc
        except RedisError as exc:
            raise StoreUnavailable("event log unreachable") from exc

    async def dead_letter(self, app_id: str, group: str, event: StoredEvent) -> None:
        """Move an event that failed too often to the app's dead-letter stream."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(
            app_key(app_id, "events", "dead"),
            {
                "m": event.message,
                "t": event.msg_type,
                "e": event.event,
                "group": group,
                "event_id": event.event_id,
                "deliveries": event.delivery_count,
            },
            maxlen=self._retention,
            approximate=True,
        )
        pipe.xack(app_key(app_id, "events"), group, event.event_id)
        try:
            await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable("event log unreachable") from exc
