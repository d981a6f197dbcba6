"""Replays the spool to core once core answers again.

One task per edge process. Entries are replayed oldest first; core's dedup makes a
replay of a message that did reach core (its answer was what got lost) harmless. While
core stays down the task backs off exponentially (with jitter) instead of hammering it.
Entries older than the replay horizon are dropped with an error log and a metric: core's
dedup records may have expired by then, so replaying could process them twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from google.protobuf.message import DecodeError

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from edge import metrics
from edge.core_client import CoreClient
from edge.errors import CoreRejected, CoreUnreachable
from edge.spool import Spool, SpoolEntry, SpoolUnavailable
from wxplatform.clock import Clock
from wxplatform.logs import request_id

__all__ = ["Replayer"]

log = logging.getLogger("wxplatform.edge.spool")

_BATCH = 50
_IDLE_POLL = 1.0  # seconds between looks at an empty spool (puts also wake the task)
_BACKOFF_START = 0.5
_BACKOFF_CAP = 30.0
_REPLAY_TIMEOUT = 5.0
# A batch is leased while it is replayed: long enough for _BATCH entries at the usual
# pace; should it run out, another worker may replay an entry too (core's dedup makes
# that harmless).
_LEASE = 60.0
_DEPTH_EVERY = 5.0  # seconds between readings of the spool depth


class Replayer:
    """The background task that drains the spool into core."""

    def __init__(
        self, spool: Spool, core: CoreClient, clock: Clock, *, max_age_seconds: float
    ) -> None:
        self._spool = spool
        self._core = core
        self._clock = clock
        self._max_age = max_age_seconds
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._backoff = 0.0
        self._task: asyncio.Task[None] | None = None
        self._gauge: asyncio.Task[None] | None = None
        self._puts = 0  # pushes this process spooled (each calls `wake`)
        self._held = True  # until the spool is read: it may hold entries from before

    def start(self) -> None:
        """Start replaying in the background, and keeping the depth gauge current."""
        self._task = asyncio.create_task(self._run(), name="edge-spool-replayer")
        self._gauge = asyncio.create_task(self._watch_depth(), name="edge-spool-depth")

    async def _watch_depth(self) -> None:
        """The spool's depth every few seconds: off the push path, where a COUNT over a
        large spool (during an outage) would eat into WeChat's 5 s."""
        while not self._stopping.is_set():
            try:
                await self._read_depth()
            except SpoolUnavailable:
                log.warning("spool depth unavailable")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), _DEPTH_EVERY)

    async def _read_depth(self) -> None:
        puts = self._puts
        depth = await self._spool.depth()
        metrics.SPOOL_DEPTH.set(depth)
        self._held = depth > 0 or self._puts != puts  # a put may have raced the count

    @property
    def may_hold_entries(self) -> bool:
        """Whether the spool may hold entries: this process spooled since the last
        reading (every few seconds) found it empty, or that reading found entries.
        Another worker's entries are seen at the next reading."""
        return self._held

    def wake(self) -> None:
        """Something was spooled: look again soon (after any backoff)."""
        self._puts += 1
        self._held = True
        self._wake.set()

    async def stop(self) -> None:
        """Finish the entry in progress, then stop."""
        self._stopping.set()
        self._wake.set()
        for task in (self._task, self._gauge):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                progressed = await self._replay_batch()
            except SpoolUnavailable as exc:  # busy or failing: keep the task alive, try later
                log.warning("spool replay paused", extra={"error": str(exc)})
                progressed = False
            except Exception:  # a bug: keep the task alive, try later
                log.exception("spool replay failed")
                progressed = False
            if not progressed:
                await self._sleep()

    async def _sleep(self) -> None:
        self._wake.clear()
        # New spool entries end an idle wait, but not a backoff: core is still down.
        waiter = self._stopping if self._backoff else self._wake
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.wait(), self._backoff or _IDLE_POLL)

    async def _replay_batch(self) -> bool:
        """Replay due entries; False when there was nothing to do or core is still down."""
        entries = await self._spool.claim(self._clock.now(), _BATCH, _LEASE)
        if not entries:
            return False
        for index, entry in enumerate(entries):
            if self._stopping.is_set():
                await self._give_back(entries[index:])
                return True
            if not await self._replay(entry):  # core is down; this entry was postponed
                await self._give_back(entries[index + 1 :])
                return False
        await self._read_depth()
        return True

    async def _give_back(self, entries: list[SpoolEntry]) -> None:
        """Claimed entries not attempted: due again at once, here or in another worker."""
        if entries:
            await self._spool.release([e.id for e in entries], self._clock.now())

    async def _replay(self, entry: SpoolEntry) -> bool:
        """Replay one entry; False when core is (still) unavailable."""
        request_id.set(entry.request_id)
        age = self._clock.now() - entry.received_at
        if age > self._max_age:
            log.error("spooled push expired", extra={"app_id": entry.app_id, "age_s": round(age)})
            metrics.SPOOL_DROPPED.labels("expired").inc()
            await self._spool.remove(entry.id)
            return True
        try:
            message = inbound.InboundMessage.FromString(entry.message)
        except DecodeError:
            # A corrupt entry would block every entry behind it: drop it, loudly.
            log.error("unreadable spool entry dropped", extra={"app_id": entry.app_id})
            metrics.SPOOL_DROPPED.labels("corrupt").inc()
            await self._spool.remove(entry.id)
            return True
        message.transport.spool_replays = entry.attempts + 1
        try:
            await self._core.deliver(message, timeout=_REPLAY_TIMEOUT, request_id=entry.request_id)
        except CoreUnreachable as exc:
            self._backoff = min(max(self._backoff * 2, _BACKOFF_START), _BACKOFF_CAP)
            delay = self._backoff * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
            await self._spool.postpone(entry.id, entry.attempts + 1, self._clock.now() + delay)
            log.info(
                "core still unavailable", extra={"reason": exc.reason, "retry_s": round(delay, 2)}
            )
            return False
        except CoreRejected as exc:
            log.error(
                "core rejected a spooled push", extra={"app_id": entry.app_id, "reason": exc.reason}
            )
            metrics.SPOOL_DROPPED.labels(exc.reason).inc()
            await self._spool.remove(entry.id)
            return True
        self._backoff = 0.0
        await self._spool.remove(entry.id)
        metrics.SPOOL_REPLAYED.inc()
        log.info(
            "spooled push delivered", extra={"app_id": entry.app_id, "attempts": entry.attempts + 1}
        )
        return True
