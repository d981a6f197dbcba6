"""The push side of the simulator: deliver callbacks to an edge the way WeChat does.

WeChat waits 5 seconds for a complete answer. If none comes it drops the connection
and re-sends the *same* request (same URL, timestamp, nonce and body) up to three more
times (docs/wechat.md §4.2). The answer is then judged as WeChat would (`replies.py`).
Every attempt is recorded in the result; a rejected reply is a result, not an exception.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from wxplatform.clock import Clock, SystemClock
from wxplatform.config import AppConfig
from wxplatform.sim.messages import PushRequest, build_push, new_nonce
from wxplatform.sim.replies import check_reply

__all__ = ["PushAttempt", "PushResult", "push"]

log = logging.getLogger(__name__)

_SYSTEM_CLOCK = SystemClock()


@dataclass(frozen=True)
class PushAttempt:
    """One delivery attempt: its HTTP status (None if it never completed) and outcome."""

    number: int
    status: int | None
    error: str | None
    elapsed: float


@dataclass
class PushResult:
    """How a push went.

    `reply` holds the parsed plaintext reply fields (None for `success`/empty or when
    nothing usable came back); `error` is why WeChat would reject the exchange, or None.
    """

    attempts: int
    status: int | None
    reply: dict[str, Any] | None
    raw_body: bytes
    error: str | None
    elapsed: float
    request: PushRequest | None = None
    history: list[PushAttempt] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether WeChat would accept the answer."""
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly view (bodies as UTF-8 text) for the control API and the CLI."""
        out: dict[str, Any] = {
            "attempts": self.attempts,
            "status": self.status,
            "reply": self.reply,
            "raw_body": self.raw_body.decode("utf-8", errors="replace"),
            "error": self.error,
            "elapsed": round(self.elapsed, 4),
            "history": [
                {"number": a.number, "status": a.status, "error": a.error, "elapsed": a.elapsed}
                for a in self.history
            ],
        }
        if self.request is not None:
            out["request"] = {
                "url": self.request.url,
                "body": self.request.body.decode("utf-8", errors="replace"),
            }
        return out


async def push(
    app: AppConfig,
    edge_base_url: str,
    fields: Mapping[str, Any],
    *,
    clock: Clock = _SYSTEM_CLOCK,
    # Per attempt, not for the whole call: WeChat's 5 s deadline, then a re-send.
    timeout: float = 5.0,
    max_retries: int = 3,
    nonce: str | None = None,
    http_client: aiohttp.ClientSession | None = None,
    key_index: int = 0,
) -> PushResult:
    """Push `fields` to `{edge_base_url}/wx/{app_id}` as WeChat would and judge the answer.

    `timeout` bounds each attempt end to end (connect, send, whole response);
    `max_retries` is the number of re-sends after the first attempt.
    """
    if timeout <= 0 or max_retries < 0:
        raise ValueError("timeout must be positive and max_retries not negative")
    request = build_push(
        app,
        edge_base_url,
        fields,
        timestamp=int(clock.now()),
        nonce=nonce if nonce is not None else new_nonce(),
        key_index=key_index,
    )
    if http_client is not None:
        return await _deliver(
            http_client, app, request, fields, timeout=timeout, max_retries=max_retries
        )
    # trust_env=False: a proxy from the environment must not sit between us and the edge.
    async with aiohttp.ClientSession(trust_env=False) as client:
        return await _deliver(
            client, app, request, fields, timeout=timeout, max_retries=max_retries
        )


async def _deliver(
    client: aiohttp.ClientSession,
    app: AppConfig,
    request: PushRequest,
    fields: Mapping[str, Any],
    *,
    timeout: float,
    max_retries: int,
) -> PushResult:
    started = time.perf_counter()
    history: list[PushAttempt] = []
    for number in range(1, max_retries + 2):
        attempt_started = time.perf_counter()
        try:
            # One deadline for the whole exchange: a slow trickle of bytes does not
            # reset it, exactly like WeChat's 5-second limit.
            async with (
                asyncio.timeout(timeout),
                client.post(
                    request.url,
                    data=request.body,
                    headers=request.headers,
                    timeout=aiohttp.ClientTimeout(total=None),
                    allow_redirects=False,
                ) as response,
            ):
                status, content = response.status, await response.read()
        except TimeoutError:
            reason = f"no complete answer within {timeout:g} s"
        except aiohttp.ClientError as exc:
            reason = f"transport error ({type(exc).__name__})"
        else:
            verdict = check_reply(app, status, content, fields)
            elapsed = time.perf_counter() - attempt_started
            history.append(PushAttempt(number, status, verdict.error, elapsed))
            log.info(
                "push to %s answered on attempt %d: HTTP %d%s",
                app.app_id,
                number,
                status,
                f" rejected: {verdict.error}" if verdict.error else "",
            )
            return PushResult(
                attempts=number,
                status=status,
                reply=verdict.reply,
                raw_body=content,
                error=verdict.error,
                elapsed=time.perf_counter() - started,
                request=request,
                history=history,
            )
        history.append(PushAttempt(number, None, reason, time.perf_counter() - attempt_started))
        log.info("push to %s attempt %d failed: %s", app.app_id, number, reason)
    return PushResult(
        attempts=len(history),
        status=None,
        reply=None,
        raw_body=b"",
        error=f"gave up after {len(history)} attempts: {history[-1].error}",
        elapsed=time.perf_counter() - started,
        request=request,
        history=history,
    )
