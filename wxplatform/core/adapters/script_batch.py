"""Script calls made in the same event-loop turn go to Redis together, as one pipeline.

Under load core has many deliveries and sends in flight, and their script calls tend to
come in bursts (a stream message from the edge carries several deliveries). redis-py
spends far more CPU per command than Redis does: taking a connection from the pool,
packing, one socket write, one read, giving the connection back. A pipeline of N calls
pays that once. A caller waits at most one loop turn for its companions; a call alone in
its turn runs on its own, exactly as without batching.

Each call keeps its own outcome: a script error fails that call only, and a connection
failure fails the calls of that pipeline. Pipelines are not transactions: each script is
atomic on its own, as when called alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from wxplatform.background import Background

__all__ = ["ScriptBatcher"]

_Call = tuple[AsyncScript, list[Any], list[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """Runs `AsyncScript` calls, batching those of one loop turn into one pipeline."""

    def __init__(self, client: redis.Redis, background: Background) -> None:
        self._client = client
        self._background = background  # a batch outlives a caller who gives up
        self._queue: list[_Call] = []

    async def run(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        """`script(keys, args)`, possibly together with other calls; raises what it raises."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)  # after every callback already due in this turn
        self._queue.append((script, keys, args, future))
        return await future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        self._background.start(self._execute(batch))

    async def _execute(self, batch: list[_Call]) -> None:
        try:
            await self._send(batch)
        finally:  # cancelled (shutdown): nobody may wait forever
            for *_, future in batch:
                if not future.done():
                    future.set_exception(RedisConnectionError("script call abandoned"))

    async def _send(self, batch: list[_Call]) -> None:
        # A caller that gave up before its call went out: its script does not run.
        batch = [call for call in batch if not call[3].done()]
        if not batch:
            return
        if len(batch) == 1:
            script, keys, args, future = batch[0]
            await _settle(future, script(keys=keys, args=args))
            return
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            # EVALSHA directly: registering the scripts with the pipeline would add a
            # SCRIPT EXISTS round trip to every execution.
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every call of the batch did
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (script, keys, args, future), result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):
                # Redis lost its script cache (a restart, SCRIPT FLUSH): the script call
                # on its own loads it again.
                await _settle(future, script(keys=keys, args=args))
            elif future.done():
                continue  # its caller gave up
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


async def _settle(future: asyncio.Future[Any], call: Any) -> None:
    try:
        result = await call
    except Exception as exc:
        if not future.done():
            future.set_exception(exc)
        return
    if not future.done():
        future.set_result(result)
