"""WeChat's HTTP API: one pooled keep-alive client, errcodes as typed errors, retries.

The client is aiohttp's: its C HTTP parser and simple pool cost about a tenth of the
CPU per call that httpx did under concurrent load (≈ 0.3 ms against ≈ 3 ms here).

Every call names its `Call` kind, which decides what may be retried. Retry policy by
error class, always inside the caller's deadline:

- not sent (connection refused or timed out, pool exhausted, any failure before the
  request's headers went out, as aiohttp's tracing reports it): retry with backoff;
- errcode -1 ("system error": WeChat did not act): retry with backoff;
- sent but no answer (read timeout, connection reset), a gateway's 5xx, or an answer
  that is not WeChat's JSON: the outcome is unknown. A resendable call (reads, token
  fetches, sends WeChat deduplicates by `client_msg_id`) is retried; any other call is
  not — it raises `WeChatOutcomeUnknown`, so the caller records it rather than risk
  delivering twice;
- any other errcode: raised at once as `WeChatRefused`, classified here and only here
  (`CredentialsRefused` from a token endpoint), with RetryInfo for rate limits and
  daily quotas; the caller handles token errors.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from wxplatform.clock import Clock
from wxplatform.core import metrics
from wxplatform.errors import (
    CredentialsRefused,
    WeChatBadResponse,
    WeChatOutcomeUnknown,
    WeChatRefused,
    WeChatUnavailable,
)
from wxplatform.wechat.daily import next_reset
from wxplatform.wechat.errcodes import Errcode, classify, split_rid

__all__ = ["Call", "WeChatClient"]

log = logging.getLogger("wxplatform.core.wechat")

_CONNECT_TIMEOUT = 2.0
_READ_TIMEOUT = 5.0
_BACKOFF_START = 0.05
_BACKOFF_CAP = 1.0
_MAX_ATTEMPTS = 4
_MAX_CONNECTIONS = 200
_JSON = {"Content-Type": "application/json; charset=utf-8"}


class Call(enum.Enum):
    """What a call does at WeChat, which decides whether it may be sent twice."""

    READ = enum.auto()  # changes nothing: resent freely
    TOKEN = enum.auto()  # a token endpoint in normal mode: hands out the current token
    FORCED_TOKEN = enum.auto()  # replaces the token: never resent once it may have arrived
    SEND = enum.auto()  # delivers a message: never resent once it may have arrived
    DEDUPED_SEND = enum.auto()  # a send WeChat deduplicates (client_msg_id): resent
    EXCHANGE = enum.auto()  # trades a single-use code: never resent once it may have arrived

    @property
    def resendable(self) -> bool:
        """Whether a second attempt is safe after one may have reached WeChat."""
        return self in (Call.READ, Call.TOKEN, Call.DEDUPED_SEND)

    @property
    def token_endpoint(self) -> bool:
        """Whether the call asks for a token (40001 then means a wrong AppSecret)."""
        return self in (Call.TOKEN, Call.FORCED_TOKEN)

    @property
    def delivers(self) -> bool:
        """Whether the call sends a message (spent retries may leave its outcome unknown)."""
        return self in (Call.SEND, Call.DEDUPED_SEND)


@dataclass(frozen=True)
class _Refusal:
    """An errcode answer, as parsed: raised by `_call`, which knows the earlier attempts."""

    errcode: int
    errmsg: str
    rid: str
    kind: Errcode


class _Progress:
    """How far one attempt got: set by aiohttp's tracing once the request's headers are
    on the wire. Until then nothing can have reached WeChat, whichever timeout fired."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


async def _headers_sent(session: Any, context: Any, params: Any) -> None:
    context.trace_request_ctx.sent = True


def _tracing() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_headers_sent)
    return trace


class _Retry(Exception):
    """An attempt failed in a way another attempt may mend."""

    def __init__(self, error: Exception, *, maybe_sent: bool) -> None:
        super().__init__(str(error))
        self.error, self.maybe_sent = error, maybe_sent


class WeChatClient:
    """Calls `api_base` + path with JSON in UTF-8 (WeChat rejects `\\u` escapes: 40033)."""

    def __init__(self, api_base: str, clock: Clock) -> None:
        self._base = api_base.rstrip("/")
        self._clock = clock  # for RetryInfo up to WeChat's daily reset
        self._session: aiohttp.ClientSession | None = None  # made on first use, in a loop
        self._closed = False

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            # A call after close() would open a new pool that nobody closes.
            raise WeChatUnavailable("the WeChat client is closed (core is stopping)")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_MAX_CONNECTIONS, ttl_dns_cache=60),
                headers={"User-Agent": "wxplatform"},
                # A proxy from the environment must not sit between us and WeChat
                # unless it is configured for the service; nor may cookies carry over.
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
                trace_configs=[_tracing()],
            )
        return self._session

    async def close(self) -> None:
        """Close the connection pool; later calls are refused."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(
        self, path: str, params: Mapping[str, str], *, deadline: float, call: Call = Call.READ
    ) -> dict[str, Any]:
        """GET a read-only or token endpoint."""
        return await self._call("GET", path, params, None, deadline=deadline, call=call)

    async def post(
        self,
        path: str,
        params: Mapping[str, str],
        body: Mapping[str, Any],
        *,
        deadline: float,
        call: Call,
    ) -> dict[str, Any]:
        """POST JSON; a call that is not `resendable` is never re-sent once it may have
        arrived."""
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        return await self._call("POST", path, params, content, deadline=deadline, call=call)

    async def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        content: bytes | None,
        *,
        deadline: float,
        call: Call,
    ) -> dict[str, Any]:
        """`deadline` is a `time.monotonic()` instant."""
        delay = _BACKOFF_START
        maybe_sent = False  # some attempt may have reached WeChat
        last: Exception | None = None
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                break
            try:
                answer = await self._attempt(
                    method, path, params, content, remaining=remaining, call=call
                )
            except _Retry as retry:
                last, maybe_sent = retry.error, maybe_sent or retry.maybe_sent
            else:
                if isinstance(answer, _Refusal):
                    raise self._refused(path, answer, call, after_possible_send=maybe_sent)
                return answer
            if attempt < _MAX_ATTEMPTS:
                pause = min(
                    delay * random.uniform(0.5, 1.5),  # noqa: S311 - jitter, not crypto
                    max(deadline - time.monotonic() - 0.01, 0),
                )
                await asyncio.sleep(pause)
                delay = min(delay * 2, _BACKOFF_CAP)
        if call.delivers and maybe_sent:
            raise WeChatOutcomeUnknown(f"{last}; an attempt may have reached WeChat")
        raise last or WeChatUnavailable("no time left to call WeChat")

    def _refused(
        self, path: str, answer: _Refusal, call: Call, *, after_possible_send: bool
    ) -> WeChatRefused:
        """The typed refusal of an errcode answer: its reason, retry class and RetryInfo."""
        kind = answer.kind
        log.info(
            "wechat refused", extra={"api": path, "errcode": answer.errcode, "rid": answer.rid}
        )
        retry_after = None
        if kind.retry == "later":
            retry_after = 60.0
        elif kind.retry == "reset":
            now = self._clock.now()
            retry_after = max(next_reset(now) - now, 1.0)
        refusal = CredentialsRefused if call.token_endpoint else WeChatRefused
        return refusal(
            kind.reason,
            answer.errcode,
            answer.errmsg,
            answer.rid,
            retry=kind.retry,
            retry_after=retry_after,
            after_possible_send=after_possible_send,
        )

    async def _attempt(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        content: bytes | None,
        *,
        remaining: float,
        call: Call,
    ) -> dict[str, Any] | _Refusal:
        """One attempt: WeChat's JSON or its refusal, `_Retry` when another attempt may
        help, or an error.

        Once the request may have reached WeChat, a call that is not resendable ends
        with `WeChatOutcomeUnknown` instead of being tried again.
        """
        started = time.monotonic()
        progress = _Progress()
        try:
            status, body = await self._exchange(
                method, path, params, content, remaining, progress=progress
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            if progress.sent:
                raise self._no_answer(path, started, exc, call) from None
            # Nothing was sent: no connection (refused, unreachable, none free in the pool
            # in time), or a timeout that fired before the request went out. Which timer
            # fires first is no evidence: on a starved loop the total one can beat the
            # connect one.
            self._observe(path, "unreachable", started)
            error = WeChatUnavailable(f"WeChat unreachable: {exc.__class__.__name__}")
            raise _Retry(error, maybe_sent=False) from None
        try:
            result = self._parse(path, status, body, started, call)
        except WeChatBadResponse as exc:
            if not call.resendable:  # the request was answered: it may have acted
                raise WeChatOutcomeUnknown(exc.message) from None
            # Most likely a gateway's page in front of WeChat: transient, and safe to
            # resend here, though the request may have acted.
            raise _Retry(exc, maybe_sent=True) from None
        if result is not None:
            return result
        if status < 500:  # errcode -1
            raise _Retry(WeChatUnavailable("WeChat busy (errcode -1)"), maybe_sent=False)
        if not call.resendable:
            # A gateway error after the request went out: WeChat may have acted, and
            # resending could deliver twice.
            raise WeChatOutcomeUnknown(f"WeChat answered HTTP {status}")
        raise _Retry(WeChatUnavailable(f"WeChat busy (HTTP {status})"), maybe_sent=True)

    def _no_answer(self, path: str, started: float, exc: BaseException, call: Call) -> Exception:
        """The request went out and no (complete) answer came: a read timeout, a reset, a
        disconnect, a broken response. The outcome is unknown unless resending is safe."""
        self._observe(path, "no_answer", started)
        if not call.resendable:
            return WeChatOutcomeUnknown(
                f"no answer from WeChat after sending ({exc.__class__.__name__})"
            )
        error = WeChatUnavailable(f"no answer from WeChat: {exc.__class__.__name__}")
        return _Retry(error, maybe_sent=True)

    async def _exchange(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        content: bytes | None,
        remaining: float,
        *,
        progress: _Progress,
    ) -> tuple[int, bytes]:
        """One HTTP exchange within `remaining` seconds: the status and the whole body."""
        timeout = aiohttp.ClientTimeout(
            total=remaining,
            # Includes waiting for a pooled connection. Shorter than `total`, so that a
            # connection that never opened usually ends as a connect timeout (whether
            # anything was sent is read from the request's progress, not from this).
            connect=min(_CONNECT_TIMEOUT, remaining * 0.9),
            sock_read=min(_READ_TIMEOUT, remaining),
        )
        async with self._http().request(
            method,
            self._base + path,
            params=params,
            data=content,
            headers=_JSON if content is not None else None,
            timeout=timeout,
            allow_redirects=False,
            trace_request_ctx=progress,
        ) as response:
            return response.status, await response.read()

    def _parse(
        self, path: str, status: int, body: bytes, started: float, call: Call
    ) -> dict[str, Any] | _Refusal | None:
        """The JSON body, or the refusal it holds; None for a transient failure worth
        retrying."""
        if status >= 500:
            self._observe(path, "http_5xx", started)
            return None
        try:
            data = json.loads(body)
        except ValueError:  # includes a body that is not UTF-8
            self._observe(path, "bad_response", started)
            raise WeChatBadResponse(f"WeChat answered HTTP {status} without JSON") from None
        if not isinstance(data, dict):
            self._observe(path, "bad_response", started)
            raise WeChatBadResponse("WeChat answered JSON that is not an object")
        errcode = data.get("errcode", 0)
        if not isinstance(errcode, int) or errcode == 0:
            self._observe(path, "ok", started)
            return data
        self._observe(path, f"errcode_{errcode}", started)
        kind = classify(errcode, token_endpoint=call.token_endpoint)
        if kind.retry == "backoff":
            return None
        errmsg, rid = split_rid(str(data.get("errmsg", "")))
        return _Refusal(errcode, errmsg, rid, kind)

    @staticmethod
    def _observe(path: str, outcome: str, started: float) -> None:
        metrics.WECHAT_CALLS.labels(path, outcome).inc()
        metrics.WECHAT_DURATION.labels(path).observe(time.monotonic() - started)
