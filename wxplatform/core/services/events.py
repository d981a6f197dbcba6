"""Durable fan-out: consumer-group subscriptions to an app's inbound messages."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from wxplatform.config import AppConfig
from wxplatform.core.adapters.event_log import EventLog
from wxplatform.core.model import StoredEvent
from wxplatform.errors import AppNotFound, FieldViolation, InvalidRequest, ShuttingDown

__all__ = ["EventService", "InvalidConsumerGroup", "Subscription"]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")
DEFAULT_IN_FLIGHT = 16
MAX_IN_FLIGHT = 1000
DEFAULT_VISIBILITY_MS = 30_000
_VISIBILITY_RANGE_MS = (1_000, 12 * 3600 * 1000)
_READ_BLOCK_MS = 1_000  # how long one read waits for new events: bounds drain latency
_FULL_PAUSE = 0.2  # a consumer at max_in_flight is polled at this pace
_CLAIM_EVERY = 1.0  # seconds between looks for expired events, per stream


class InvalidConsumerGroup(InvalidRequest):
    """A consumer group or consumer name, filter or limit is malformed."""

    reason = "INVALID_CONSUMER_GROUP"


@dataclass(frozen=True)
class Subscription:
    """One consumer's stream of one app's events, as requested."""

    app_id: str
    group: str
    consumer: str
    from_start: bool = False
    msg_types: frozenset[str] = frozenset()
    events: frozenset[str] = frozenset()
    max_in_flight: int = DEFAULT_IN_FLIGHT
    visibility_ms: int = DEFAULT_VISIBILITY_MS

    def wants(self, event: StoredEvent) -> bool:
        """Whether the filter selects `event` (no filter selects everything)."""
        if not self.msg_types and not self.events:
            return True
        return event.msg_type in self.msg_types or (
            bool(event.event) and event.event in self.events
        )

    def validate(self) -> None:
        """Raise `InvalidConsumerGroup` naming every bad field."""
        problems = []
        for field, value in (("consumer_group", self.group), ("consumer_name", self.consumer)):
            if not _NAME.fullmatch(value):
                problems.append(FieldViolation(field, "must be 1-64 characters of [A-Za-z0-9_.-]"))
        if not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            problems.append(
                FieldViolation("max_in_flight", f"must be between 1 and {MAX_IN_FLIGHT}")
            )
        low, high = _VISIBILITY_RANGE_MS
        if not low <= self.visibility_ms <= high:
            problems.append(FieldViolation("visibility_timeout", "must be between 1 s and 12 h"))
        if problems:
            raise InvalidConsumerGroup(problems)


class EventService:
    """Streams, acknowledgements and dead-lettering of inbound events."""

    def __init__(
        self,
        apps: Mapping[str, AppConfig],
        log: EventLog,
        *,
        max_deliveries: int,
        stopping: asyncio.Event,
    ) -> None:
        self._apps = apps
        self._log = log
        self._max_deliveries = max_deliveries
        self._stopping = stopping

    async def stream(self, sub: Subscription) -> AsyncIterator[StoredEvent]:
        """Deliver events to one consumer until it goes away or the server drains.

        Redelivered events (idle past the visibility timeout) come before new ones, so a
        crashed consumer's work is picked up first. An event delivered more than
        `max_deliveries` times goes to the dead-letter stream instead. Events the filter
        does not select are acknowledged for the group: consumers of one group are
        expected to share one filter.
        """
        if sub.app_id not in self._apps:
            raise AppNotFound(sub.app_id)
        sub.validate()
        await self._log.ensure_group(sub.app_id, sub.group, from_start=sub.from_start)
        loop = asyncio.get_running_loop()
        next_claim = 0.0
        while not self._stopping.is_set():
            # Looking for expired events walks the group's pending lists: once a second
            # (or so) is enough; in between only the room for new events is counted.
            take_expired = loop.time() >= next_claim
            room, claimed = await self._log.claim(
                sub.app_id,
                sub.group,
                sub.consumer,
                visibility_ms=sub.visibility_ms,
                max_in_flight=sub.max_in_flight,
                max_deliveries=self._max_deliveries,
                take_expired=take_expired,
            )
            if take_expired:
                next_claim = loop.time() + _CLAIM_EVERY
            for event in claimed:
                if await self._selected(sub, event):
                    yield event
            if room <= 0:
                if not claimed:
                    await self._pause(_FULL_PAUSE)
                continue
            fresh = await self._log.read_new(
                sub.app_id, sub.group, sub.consumer, count=room, block_ms=_READ_BLOCK_MS
            )
            for event in fresh:
                if await self._selected(sub, event):
                    yield event
        # Ends the stream with UNAVAILABLE: the consumer reconnects to another replica.
        raise ShuttingDown("server is draining; reconnect")

    async def _selected(self, sub: Subscription, event: StoredEvent) -> bool:
        if sub.wants(event):
            return True
        await self._log.ack(sub.app_id, sub.group, [event.event_id])
        return False

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def ack(self, app_id: str, group: str, event_ids: Sequence[str]) -> int:
        """Acknowledge events; unknown or already acknowledged ids count as zero."""
        if app_id not in self._apps:
            raise AppNotFound(app_id)
        problems = [] if _NAME.fullmatch(group) else [FieldViolation("consumer_group", "malformed")]
        problems += [
            FieldViolation(f"event_ids[{i}]", "must look like 1700000000000-0")
            for i, event_id in enumerate(event_ids)
            if not _EVENT_ID.fullmatch(event_id)
        ]
        if problems:
            raise InvalidConsumerGroup(problems)
        return await self._log.ack(app_id, group, event_ids)
