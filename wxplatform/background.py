"""Work that outlives the call that started it, and that a process waits for at stop.

Some work must finish even when its caller gives up: once WeChat may have been called,
a send's outcome has to be recorded, or a retry with the same idempotency key could
send twice. Such work runs shielded from the caller's cancellation. Left to itself it
would also outlive the server: still using Redis after the process closed its client,
where redis-py quietly opens a new connection that nobody closes. So every such task is
started here, and `wait` at stop lets it finish before the connections go away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Background"]

T = TypeVar("T")

log = logging.getLogger("wxplatform.background")


class Background:
    """The tasks of one process that must run to completion, tracked until they end."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, work: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run `work` as a task of its own; `wait` covers it."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def shielded(self, work: Coroutine[Any, Any, T]) -> T:
        """`await work`, except that cancelling the caller leaves `work` running.

        The caller's cancellation reaches it at once; the work goes on to its end.
        """
        return await asyncio.shield(self.start(work))

    async def wait(self, timeout: float) -> None:
        """Let the tracked work finish (also what it starts meanwhile); after `timeout`
        seconds cancel what is left and wait for it to unwind."""
        deadline = time.monotonic() + timeout
        while self._tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=remaining)
        if self._tasks:
            log.warning("background work cancelled at stop", extra={"tasks": len(self._tasks)})
            stuck = set(self._tasks)
            for task in stuck:
                task.cancel()
            await asyncio.wait(stuck)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # Retrieved here: a shielded caller that gave up never reads it, and asyncio would
        # report it as never retrieved. The work's own code records its failures.
        if not task.cancelled() and task.exception() is not None:
            log.debug("background work failed", exc_info=task.exception())
