"""HTTP handlers: WeChat callbacks, health and metrics. One `write_error` for all.

The callback handler orchestrates: it opens a push with `edge.push` (pure functions:
parameters, timestamp, signature, decryption, parsing), delivers it to core or spools
it when core is unreachable, and answers with the reply `edge.push` seals.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from edge import metrics
from edge.core_client import CoreClient
from edge.errors import (
    BadParameters,
    CoreUnreachable,
    EdgeRejection,
    LengthRequired,
    MethodNotAllowed,
    PayloadTooLarge,
    ReplayedPush,
    SpoolFailed,
    UnknownApp,
)
from edge.push import open_push, seal_reply, signed_pair, verify_url
from edge.replayer import Replayer
from edge.spool import Spool, SpoolConflict, SpoolUnavailable
from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.logs import REQUEST_ID_HEADER, new_request_id, request_id
from wxplatform.wechat.crypto import MessageCrypto

__all__ = [
    "CallbackDeps",
    "CallbackHandler",
    "EdgeHandler",
    "HealthHandler",
    "InFlight",
    "MetricsHandler",
]

log = logging.getLogger("wxplatform.edge")

_DEFAULT_BODY_SECONDS = 5.0
NO_REPLY = b"success"  # stops WeChat's retries and shows the user nothing (docs/wechat.md §4.2)


class InFlight:
    """Counts callbacks being processed, so shutdown can wait for them.

    A push counts from its headers on (its body may still be arriving). Once `draining`,
    every answer closes its connection, so keep-alive clients bring no new pushes.
    """

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        """A callback started."""
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        """A callback finished."""
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no callback is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


@tornado.web.stream_request_body
class EdgeHandler(tornado.web.RequestHandler):
    """Base: request id, access log line, the one `write_error`, and the body guard.

    Every handler streams its request body, so none is buffered by Tornado: a body must
    declare its length (411 otherwise), stay under `body_limit()` (413 before a byte of
    it is read) and arrive within `body_seconds()` (the connection is dropped after).
    Handlers other than the callbacks take no body at all.
    """

    _body_timer: asyncio.TimerHandle | None = None
    _body: list[bytes] | None = None
    _size = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before anything can fail: Tornado refuses some requests (an unknown method,
        # a path that is not UTF-8) before `prepare`, and `on_finish` still runs for them.
        self.started = time.perf_counter()
        self.path_kwargs: dict[str, str] = {}
        super().__init__(*args, **kwargs)

    def body_limit(self) -> int:
        """Bytes of body this request may carry."""
        return 0

    def body_seconds(self) -> float:
        """How long the body may take to arrive."""
        return _DEFAULT_BODY_SECONDS

    def prepare(self) -> None:
        self.request_id = new_request_id()
        request_id.set(self.request_id)
        self.set_header(REQUEST_ID_HEADER, self.request_id)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.route()
        self._guard_body()

    def route(self) -> None:
        """Refuse what this handler does not serve, before the body guard: whatever the
        request's body, it is never read. Here: a method the handler does not take."""
        if self.request.method not in self._methods():
            raise MethodNotAllowed("method_not_allowed", self.request.method or "")

    def _guard_body(self) -> None:
        headers = self.request.headers
        length = headers.get("Content-Length")
        if length is None:
            if "Transfer-Encoding" in headers:
                raise LengthRequired("length_required")
            return  # no body
        if not (length.isascii() and length.isdigit()):  # "²".isdigit() is True
            raise BadParameters("bad_content_length")
        # Checked by its digits first: int() refuses a number of 4,300 digits or more.
        size = int(length) if len(length) <= 15 else None
        if size is None or size > self.body_limit():
            raise PayloadTooLarge("body_too_large", f"{length[:16]} bytes")
        if size:
            self._body = []
            # A body trickling in too slowly (slowloris) must not pin the connection.
            # One plain timer: Tornado's own `body_timeout` wraps every body read in
            # `gen.with_timeout`, several times the cost per push.
            self._body_timer = asyncio.get_running_loop().call_later(
                self.body_seconds(), self._body_too_slow
            )

    def data_received(self, chunk: bytes) -> None:
        # Content-Length bounds the body (checked in prepare); this keeps the invariant.
        self._size += len(chunk)
        if self._body is not None and self._size <= self.body_limit():
            self._body.append(chunk)

    def body(self) -> bytes:
        """The whole request body (once it has arrived)."""
        self._stop_body_timer()
        return b"".join(self._body or ())

    def _body_too_slow(self) -> None:
        self._body_timer = None
        metrics.REJECTED.labels("body_timeout").inc()
        log.warning("rejected", extra={"reason": "body_timeout", "status": None})
        self.request.connection.close()  # type: ignore[union-attr]

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def on_connection_close(self) -> None:
        self._stop_body_timer()
        super().on_connection_close()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every failure answers with a short text body: no detail, no stack trace."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, MethodNotAllowed):
            self.set_header("Allow", ", ".join(self._methods()))
        if isinstance(exc, EdgeRejection):
            metrics.REJECTED.labels(exc.reason).inc()
            log.warning(
                "rejected",
                # A detail may quote the request (a duplicated tag name): bounded.
                extra={"reason": exc.reason, "detail": exc.detail[:200], "status": status_code},
            )
        # send_error cleared the headers prepare() set; the request id lets a caller
        # match this refusal to its log line.
        self.set_header(REQUEST_ID_HEADER, getattr(self, "request_id", ""))
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {self._reason}\n")

    def _methods(self) -> list[str]:
        """The methods this handler takes."""
        base = tornado.web.RequestHandler
        return [
            m
            for m in self.SUPPORTED_METHODS
            if getattr(type(self), m.lower(), None) is not getattr(base, m.lower(), None)
        ]

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, EdgeRejection):
            return  # logged once, without a stack, by write_error
        if isinstance(value, tornado.web.HTTPError):
            log.warning("http error", extra={"status": value.status_code})
            return
        log.error("unhandled error", exc_info=(typ, value, tb))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, EdgeRejection):
            status_code = exc.status
        super().send_error(status_code, **kwargs)

    def on_finish(self) -> None:
        self._stop_body_timer()
        status = self.get_status()
        # Success lines are pure volume at WeChat's rates (metrics count them): DEBUG.
        # Anything else stays visible at INFO.
        level = logging.DEBUG if status < 400 else logging.INFO
        if not log.isEnabledFor(level):
            return
        log.log(
            level,
            "http",
            extra={
                "method": self.request.method,
                "path": self.request.path,
                "status": status,
                "ms": round((time.perf_counter() - self.started) * 1000, 2),
            },
        )


# The metric children per label set, looked up once: `labels()` costs more than the
# increment itself, on every push. Label values are bounded (configured apps or
# "unknown", two methods, a handful of statuses).
@functools.lru_cache(maxsize=4096)
def _callbacks(app_label: str, method: str, status: int) -> Any:
    return metrics.CALLBACKS.labels(app_label, method, str(status))


@functools.lru_cache(maxsize=16)
def _callback_duration(method: str) -> Any:
    return metrics.CALLBACK_DURATION.labels(method)


@dataclass(frozen=True)
class CallbackDeps:
    """What the callback handler needs, injected through `initialize`."""

    apps: Mapping[str, AppConfig]
    cryptos: Mapping[str, MessageCrypto]
    core: CoreClient
    spool: Spool
    replayer: Replayer
    clock: Clock
    in_flight: InFlight
    budget_seconds: float
    max_body_bytes: int
    timestamp_window_seconds: int


# Time kept back from core's deadline so that spooling still fits in WeChat's 5 s.
_SPOOL_RESERVE = 0.3
_SPOOL_MIN = 0.02  # less than this left: do not even try to spool
_SPOOLED_REPLAY = ("replayed_request", "a spooled push has its timestamp and nonce")


class CallbackHandler(EdgeHandler):
    """`GET /wx/{app_id}` (URL verification) and `POST /wx/{app_id}` (pushes).

    The body is streamed so the size cap holds before anything is buffered: a push
    must declare its length (WeChat's always do), and one over the cap is refused
    with 413 without reading it.
    """

    def initialize(self, deps: CallbackDeps) -> None:
        self.deps = deps

    def body_limit(self) -> int:
        return self.deps.max_body_bytes if self.request.method == "POST" else 0

    def body_seconds(self) -> float:
        # A body slower than the push budget cannot be answered in time anyway.
        return self.deps.budget_seconds

    _counted = False  # in `deps.in_flight`, from prepare until finished or cut off

    def prepare(self) -> None:
        if self.request.method == "POST":
            self.deps.in_flight.enter()
            self._counted = True
        if self.request.method == "POST" and "Content-Length" not in self.request.headers:
            super().prepare()  # request id and headers, for the refusal too
            raise LengthRequired("length_required")  # WeChat's pushes always declare it
        super().prepare()

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> asyncio.Future[None]:
        if not self.deps.in_flight.draining:
            return super().finish(chunk)
        # Shutting down: no further request on this connection. Tornado closes only when
        # the request asked for it, so close it ourselves once the answer is written.
        self.set_header("Connection", "close")
        written = super().finish(chunk)
        connection = self.request.connection
        written.add_done_callback(lambda _: connection.close())  # type: ignore[union-attr]
        return written

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.deps.in_flight.leave()

    def on_connection_close(self) -> None:
        self._uncount()
        super().on_connection_close()

    def on_finish(self) -> None:
        self._uncount()
        app_id = self.path_kwargs.get("app_id", "")
        label = app_id if app_id in self.deps.apps else "unknown"
        method = self.request.method or ""
        _callbacks(label, method, self.get_status()).inc()
        _callback_duration(method).observe(time.perf_counter() - self.started)
        super().on_finish()

    def _app(self, app_id: str) -> AppConfig:
        app = self.deps.apps.get(app_id)
        if app is None or app.kind == "website":  # a website app gets no callbacks
            raise UnknownApp("unknown_app")
        return app

    # --- GET: URL verification ----------------------------------------------------

    async def get(self, app_id: str) -> None:
        app = self._app(app_id)
        echostr = verify_url(
            app,
            self.request.query_arguments,
            now=self.deps.clock.now(),
            window=self.deps.timestamp_window_seconds,
        )
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(echostr)

    # --- POST: pushes: open, deliver or spool, answer -----------------------------

    async def post(self, app_id: str) -> None:
        self._stop_body_timer()  # the whole body is here
        deadline = self.started + self.deps.budget_seconds
        app = self._app(app_id)
        crypto = self.deps.cryptos.get(app.app_id)
        opened = open_push(
            app,
            crypto,
            self.request.query_arguments,
            self.body(),
            now=self.deps.clock.now(),
            window=self.deps.timestamp_window_seconds,
        )
        message = opened.message
        if message is None:  # a probe, not a message
            self._no_reply()
            return
        if self.deps.replayer.may_hold_entries:  # an outage's pushes wait to be replayed
            await self._refuse_replays_of_spooled(message)
        remaining = deadline - time.perf_counter() - _SPOOL_RESERVE
        try:
            response = await self.deps.core.deliver(
                message, timeout=remaining, request_id=self.request_id
            )
        except CoreUnreachable as exc:
            await self._spool(message, exc)
            self._no_reply()
            return
        body = seal_reply(app, crypto, opened, response.reply, now=self.deps.clock.now())
        if body is None:
            self._no_reply()
            return
        self.set_header("Content-Type", "application/xml; charset=utf-8")
        self.finish(body)

    async def _spool(self, message: inbound.InboundMessage, cause: CoreUnreachable) -> None:
        """Keep the message for later; if even that fails, do not acknowledge WeChat."""
        transport = message.transport
        # What is left of the budget bounds the wait for another worker's write lock:
        # an answer after WeChat's 5 s is as good as none, and a 503 now is retried.
        left = self.started + self.deps.budget_seconds - time.perf_counter()
        try:
            if left <= _SPOOL_MIN:
                raise SpoolUnavailable("no time left in the push's budget")
            await self.deps.spool.put(
                message.app_id,
                self.request_id,
                self.deps.clock.now(),
                message.SerializeToString(),
                signed=signed_pair(transport),
                body_sha256=transport.body_sha256,
                deadline=time.monotonic() + left,
            )
        except SpoolConflict:  # checked again with the write: two pushes at once
            raise ReplayedPush(*_SPOOLED_REPLAY) from None
        except SpoolUnavailable as exc:
            metrics.SPOOL_FAILURES.inc()
            log.error(
                "spool write failed; leaving the push to WeChat's retry", extra={"error": str(exc)}
            )
            raise SpoolFailed("spool_unavailable", str(exc)) from None
        metrics.SPOOLED.inc()  # the depth gauge follows within seconds (the replayer)
        log.warning("core unavailable; push spooled", extra={"reason": cause.reason})
        self.deps.replayer.wake()

    async def _refuse_replays_of_spooled(self, message: inbound.InboundMessage) -> None:
        """Core has not seen the (timestamp, nonce) of a spooled push yet, so its replay
        guard cannot protect it: a push reusing them with another body (a captured URL
        replayed while core was away) would be accepted first and the genuine push then
        refused as the replay. Refused here instead, as core would."""
        transport = message.transport
        try:
            conflict = await self.deps.spool.conflicts(
                message.app_id,
                signed_pair(transport),
                transport.body_sha256,
            )
        except SpoolUnavailable as exc:  # cannot tell: core's own guard still applies
            log.warning("spool unreadable for the replay check", extra={"error": str(exc)})
            return
        if conflict:
            raise ReplayedPush(*_SPOOLED_REPLAY)

    def _no_reply(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(NO_REPLY)


class HealthHandler(EdgeHandler):
    """`GET /healthz`: the edge process is up."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": "ok"}))


class MetricsHandler(EdgeHandler):
    """`GET /metrics`: Prometheus exposition."""

    def initialize(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.registry))

    def on_finish(self) -> None:
        pass  # scrapes would drown the access log
