"""Result events WeChat pushes back after a send: TEMPLATESENDJOBFINISH and friends.

WeChat answers a template send at once and reports the delivery later, as an event
pushed to the account's callback URL (docs/wechat.md §3.2, §5.2). The simulator does the
same: a send schedules a job that waits a little, builds the event, and pushes it
through the simulator's own push path (signed and encrypted per the app's mode).
Every job ends in a `CallbackRecord`; `drain` pushes all pending jobs at once and
waits for them, so tests await the push instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wxplatform.sim.push import PushResult

__all__ = ["DEFAULT_CALLBACK_DELAY", "CallbackQueue", "CallbackRecord", "Pusher"]

log = logging.getLogger(__name__)

# Real result events follow the API response within a fraction of a second to
# minutes; short enough for tests, long enough that the response always comes first.
DEFAULT_CALLBACK_DELAY = 0.05

Pusher = Callable[[str, str, Mapping[str, Any]], Awaitable[PushResult]]
FieldsBuilder = Callable[[], dict[str, Any]]


@dataclass
class CallbackRecord:
    """One result event: where it went, what it said and how the edge answered."""

    app_id: str
    openid: str
    event: str
    msgid: int
    edge_url: str
    fields: dict[str, Any] | None = None
    result: PushResult | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        """Whether the edge accepted the push as WeChat would."""
        return self.result is not None and self.result.ok

    def to_json(self) -> dict[str, Any]:
        """The record as the control API shows it."""
        return {
            "app_id": self.app_id,
            "openid": self.openid,
            "event": self.event,
            "msgid": self.msgid,
            "edge_url": self.edge_url,
            "fields": self.fields,
            "delivered": self.delivered,
            "error": self.error,
            "result": self.result.to_json() if self.result is not None else None,
        }


def check_edge_url(url: str) -> str:
    """`url` if it is an http(s) URL (`ValueError` otherwise)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError("edge_url must be an http(s) URL")
    return url


class CallbackQueue:
    """Per-app callback URLs and the result-event jobs in flight."""

    def __init__(
        self,
        pusher: Pusher,
        urls: Mapping[str, str] | None = None,
        delay: float = DEFAULT_CALLBACK_DELAY,
    ) -> None:
        self._pusher = pusher
        self.urls: dict[str, str] = {k: check_edge_url(v) for k, v in (urls or {}).items()}
        self.delay = self._checked_delay(delay)
        self._pending: dict[asyncio.Task[None], int] = {}
        self._fired: set[int] = set()
        self._records: list[CallbackRecord] = []
        self._flush = asyncio.Event()  # set while draining: jobs skip the rest of the delay
        self._draining = 0

    @staticmethod
    def _checked_delay(delay: float) -> float:
        if not 0 <= delay <= 60:
            raise ValueError("delay must be between 0 and 60 seconds")
        return float(delay)

    def set_url(self, app_id: str, url: str | None) -> None:
        """Where the app's callbacks go; None stops them."""
        if url is None:
            self.urls.pop(app_id, None)
        else:
            self.urls[app_id] = check_edge_url(url)

    def set_delay(self, delay: float) -> None:
        """How long a job waits after the send before pushing."""
        self.delay = self._checked_delay(delay)

    def schedule(
        self, app_id: str, openid: str, event: str, msgid: int, build: FieldsBuilder
    ) -> bool:
        """Push the fields `build()` returns after the delay; False if the app has no URL.

        `build` runs when the job fires, so the event carries the clock's time then and
        sees any result forced meanwhile.
        """
        url = self.urls.get(app_id)
        if url is None:
            return False
        record = CallbackRecord(app_id, openid, event, msgid, url)
        task = asyncio.get_running_loop().create_task(self._run(record, build, self.delay))
        self._pending[task] = msgid
        task.add_done_callback(lambda done: self._pending.pop(done, None))
        return True

    def fired(self, msgid: int) -> bool:
        """Whether the event for `msgid` was built (and so can no longer change)."""
        return msgid in self._fired

    async def _run(self, record: CallbackRecord, build: FieldsBuilder, delay: float) -> None:
        try:
            # Real time, not the simulator's clock: a ManualClock never moves by itself.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._flush.wait()
            record.fields = build()
            self._fired.add(record.msgid)
            record.result = await self._pusher(record.app_id, record.edge_url, record.fields)
            record.error = record.result.error
        except asyncio.CancelledError:
            record.error = "cancelled: the simulator stopped"
            raise
        except Exception as exc:
            # A simulator bug must not kill the event loop's task silently; say which.
            log.exception("%s callback for %s failed", record.event, record.app_id)
            record.error = f"push failed: {type(exc).__name__}"
        finally:
            self._records.append(record)

    async def drain(self) -> list[CallbackRecord]:
        """Push every pending job now (skipping its delay) and wait until none is left.

        Jobs scheduled while draining are pushed at once too.
        """
        self._draining += 1
        self._flush.set()
        try:
            while self._pending:
                await asyncio.gather(*list(self._pending), return_exceptions=True)
        finally:
            self._draining -= 1
            if not self._draining:
                self._flush.clear()
        return self.records()

    def records(self) -> list[CallbackRecord]:
        """Finished jobs, in the order they finished."""
        return list(self._records)

    async def close(self) -> None:
        """Cancel pending jobs (the simulator is stopping)."""
        tasks = list(self._pending)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
