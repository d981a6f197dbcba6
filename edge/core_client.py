"""The edge's gRPC client for core: generated stub, credential, request id, deadline.

Deliveries travel on one long-lived `DeliverStream` per edge process: a unary call
costs the edge more CPU than the rest of a push together, a stream message a fraction
of it, and deliveries queued while the previous write was in flight go out together.
The stream opens on first use and again after it breaks; every delivery keeps its own
deadline (the push's remaining budget), enforced here.

Failures split in two: `CoreRejected` when core refuses this message for good (a
replayed signature, a malformed message), and `CoreUnreachable` for everything else
(down, slow, draining, misconfigured, stream broken): those messages go to the spool
and are retried.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from typing import Any, cast

import grpc
from wxplatform_client import from_rpc_error

from acme.wxplatform.v1 import (
    error_reason_pb2,
    inbound_message_pb2,
    ingress_service_pb2,
    ingress_service_pb2_grpc,
    oauth_service_pb2,
    oauth_service_pb2_grpc,
)
from edge import metrics
from edge.errors import CoreRefused, CoreRejected, CoreUnreachable
from wxplatform.config import Secret
from wxplatform.logs import REQUEST_ID_METADATA, new_request_id

__all__ = ["CoreClient"]

log = logging.getLogger("wxplatform.edge.core")

# Core's verdicts that replaying later cannot change: status code → (reason → HTTP status).
_FINAL = {
    (grpc.StatusCode.PERMISSION_DENIED, "REPLAYED_REQUEST"): 403,
    (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"): 400,
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
_MAX_BATCH = 256  # deliveries per stream message
_MAX_BATCH_BYTES = 1 << 20  # and bytes: core takes messages of up to 4 MiB
_MAX_QUEUED = 5_000  # deliveries waiting to be written; beyond, the stream is stuck
_STUCK_AFTER = 16  # deadlines passed in a row with no answer at all: reopen the stream
_UNARY_RECHECK = 60.0  # seconds between looks for DeliverStream on a core that had none
_CLOSE_WAIT = 5.0  # seconds `close` waits for answers to deliveries already sent
_HEADERS = 1.0  # seconds the first write waits for core to accept the stream
_OAUTH_TIMEOUT = 10.0  # a web login: up to three WeChat calls behind it, and a person waiting
# Codes that, without a reason of core's, mean core itself was not reached.
_UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

Response = ingress_service_pb2.DeliverMessageResponse


def _reason(error: grpc.aio.AioRpcError) -> str:
    """The `ErrorInfo.reason` of a failed unary call, if core sent one."""
    return from_rpc_error(error).reason


def _check_budget(timeout: float) -> None:
    if timeout <= 0:
        metrics.CORE_CALLS.labels("BUDGET_SPENT").inc()
        raise CoreUnreachable("core_deadline", "no time left in the budget")


def _failure(code: grpc.StatusCode, reason: str, details: str) -> CoreRejected | CoreUnreachable:
    """The edge's error for a delivery core did not accept."""
    metrics.CORE_CALLS.labels(code.name).inc()
    status = _FINAL.get((code, reason))
    if status is not None:
        return CoreRejected(reason.lower(), details, status=status)
    return CoreUnreachable(f"core_{code.name.lower()}", details)


class _Stream:
    """One open `DeliverStream` call: a writer batching the queue, a reader answering."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._queue: collections.deque[ingress_service_pb2.StreamedDelivery] = collections.deque()
        self._queued = asyncio.Event()
        self._closing = False
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._deadlines: dict[int, float] = {}  # of the pending, by id (monotonic)
        self._ids = itertools.count(1)
        self._unanswered = 0  # deadlines passed since the last result of any delivery
        self.broken = False
        self.ended_with: grpc.StatusCode | None = None
        self._writer = asyncio.create_task(self._write(), name="core-stream-writer")
        self._reader = asyncio.create_task(self._read(), name="core-stream-reader")

    def submit(
        self, request: ingress_service_pb2.DeliverMessageRequest, request_id: str, timeout: float
    ) -> tuple[int, asyncio.Future[Response]]:
        """Queue one delivery: its id, and a future for core's response or the error."""
        if len(self._queue) >= _MAX_QUEUED:
            raise CoreUnreachable("core_backlog", "too many deliveries waiting to be written")
        delivery_id = next(self._ids)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[delivery_id] = future
        self._deadlines[delivery_id] = time.monotonic() + timeout
        self._queue.append(
            ingress_service_pb2.StreamedDelivery(
                id=delivery_id, request=request, request_id=request_id
            )
        )
        self._queued.set()
        return delivery_id, future

    def forget(self, delivery_id: int) -> None:
        """Its deadline passed: a late answer is dropped, and it is not written if queued.

        Many deadlines in a row with no answer at all mean a stream that is open but
        stuck (core hung, a half-dead connection): it is abandoned, and the next
        delivery opens a new one.
        """
        self._pending.pop(delivery_id, None)
        self._deadlines.pop(delivery_id, None)
        self._unanswered += 1
        if self._unanswered >= _STUCK_AFTER and not self.broken:
            log.warning("no answer on the delivery stream; opening a new one")
            self._call.cancel()
            self._fail(grpc.StatusCode.UNAVAILABLE, "no answer from core on this stream")

    def _next_batch(self) -> list[ingress_service_pb2.StreamedDelivery]:
        """Queued deliveries still awaited, up to the count and size caps of one message."""
        batch: list[ingress_service_pb2.StreamedDelivery] = []
        size = 0
        now = time.monotonic()
        while self._queue and len(batch) < _MAX_BATCH:
            item = self._queue[0]
            if item.id not in self._pending:  # its deadline passed while it waited
                self._queue.popleft()
                continue
            size += item.ByteSize()
            if batch and size > _MAX_BATCH_BYTES:
                break
            # What is left of its time, as it leaves: core skips it if it waits longer.
            item.timeout_ms = max(int((self._deadlines[item.id] - now) * 1000), 1)
            batch.append(self._queue.popleft())
        return batch

    async def _write(self) -> None:
        try:
            # Core sends its headers when it accepts the stream. Writing before them could
            # race a refusal, which grpc then reports as a failed write (INTERNAL) instead
            # of core's status (UNAUTHENTICATED, or UNIMPLEMENTED from an older core).
            with contextlib.suppress(TimeoutError):  # a core that sends them late: go on
                await asyncio.wait_for(asyncio.shield(self._call.initial_metadata()), _HEADERS)
            if self._call.done():
                self._fail(await self._call.code(), await self._call.details() or "")
                return
            while True:
                await self._queued.wait()
                # One loop turn for deliveries of pushes read in the same turn to join.
                await asyncio.sleep(0)
                batch = self._next_batch()
                if not self._queue and not self._closing:
                    self._queued.clear()  # closing: come round again to half-close
                if batch:
                    request = ingress_service_pb2.DeliverStreamRequest(deliveries=batch)
                    await self._call.write(request)
                elif self._closing:
                    await self._call.done_writing()
                    return
        except grpc.aio.AioRpcError as exc:
            self._fail(exc.code(), exc.details() or "")
        except (asyncio.InvalidStateError, grpc.aio.UsageError):
            self._fail(grpc.StatusCode.UNAVAILABLE, "the stream to core closed")

    async def _read(self) -> None:
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    break
                self._unanswered = 0
                for result in response.results:
                    self._settle(result)
            code = await self._call.code()
            self._fail(
                grpc.StatusCode.UNAVAILABLE if code == grpc.StatusCode.OK else code,
                await self._call.details() or "the stream to core ended",
            )
        except grpc.aio.AioRpcError as exc:
            self._fail(exc.code(), exc.details() or "")

    def _settle(self, result: ingress_service_pb2.StreamedResult) -> None:
        self._deadlines.pop(result.id, None)
        future = self._pending.pop(result.id, None)
        if future is None or future.done():
            return  # its deadline passed: the push went to the spool
        if result.HasField("response"):
            metrics.CORE_CALLS.labels("OK").inc()
            future.set_result(result.response)
            return
        error = result.error
        code = _CODES.get(error.code, grpc.StatusCode.UNKNOWN)
        try:
            reason = error_reason_pb2.ErrorReason.Name(error.reason).removeprefix("ERROR_REASON_")
        except ValueError:  # a reason newer than this edge: not final, so it is spooled
            reason = ""
        future.set_exception(_failure(code, reason, error.message))

    def _fail(self, code: grpc.StatusCode, details: str) -> None:
        """The stream is over: every delivery still waiting fails as unavailable."""
        self.broken = True
        self.ended_with = self.ended_with or code
        pending, self._pending = self._pending, {}
        self._deadlines.clear()
        for future in pending.values():
            if not future.done():
                future.set_exception(
                    CoreUnreachable(f"core_{code.name.lower()}", details or "stream to core broke")
                )
                metrics.CORE_CALLS.labels(code.name).inc()
        self._writer.cancel()

    async def close(self) -> None:
        """Finish writing, wait a little for outstanding answers, then cancel."""
        if not self.broken:
            self._closing = True
            self._queued.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), _CLOSE_WAIT)
        self._call.cancel()
        for task in (self._writer, self._reader):
            task.cancel()
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)
        self._fail(grpc.StatusCode.UNAVAILABLE, "edge shutting down")


class CoreClient:
    """One channel to core for the whole edge process, one delivery stream on it."""

    def __init__(self, target: str, credential: Secret | None) -> None:
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                # Fail fast while core is down rather than queueing pushes behind a reconnect.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2_000),
            ],
        )
        self._stub = ingress_service_pb2_grpc.IngressServiceStub(self._channel)
        self._oauth = oauth_service_pb2_grpc.OAuthServiceStub(self._channel)
        self._auth = (("authorization", f"Bearer {credential.reveal()}"),) if credential else ()
        self._stream: _Stream | None = None
        # Until then one unary call per push: core had no DeliverStream (older version).
        self._unary_until = 0.0

    def _unary(self) -> bool:
        """Whether to deliver with unary calls, as for a core that predates the stream."""
        if self._unary_until and time.monotonic() >= self._unary_until:
            self._unary_until = 0.0  # look again: core may have been upgraded
            self._stream = None
        if self._stream is not None and self._stream.ended_with == _UNIMPLEMENTED:
            log.warning("core has no DeliverStream; delivering with unary calls for a while")
            self._unary_until = time.monotonic() + _UNARY_RECHECK
            self._stream = None
        return bool(self._unary_until)

    def _open(self) -> _Stream:
        if self._stream is None or self._stream.broken:
            call = self._stub.DeliverStream(
                metadata=((REQUEST_ID_METADATA, new_request_id()), *self._auth)
            )
            self._stream = _Stream(call)
        return self._stream

    async def deliver(
        self, message: inbound_message_pb2.InboundMessage, *, timeout: float, request_id: str
    ) -> Response:
        """Deliver one message; raises `CoreRejected` or `CoreUnreachable` on failure."""
        _check_budget(timeout)
        request = ingress_service_pb2.DeliverMessageRequest(app_id=message.app_id, message=message)
        if self._unary():
            return await self._deliver_unary(request, timeout, request_id)
        stream = self._open()
        deadline = time.monotonic() + timeout
        delivery_id, future = stream.submit(request, request_id, timeout)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except CoreUnreachable as exc:
            if exc.reason != "core_unimplemented" or not self._unary():
                raise
            # Core turned out to predate the stream: this delivery goes unary at once.
            return await self._deliver_unary(request, deadline - time.monotonic(), request_id)
        except TimeoutError:
            stream.forget(delivery_id)
            metrics.CORE_CALLS.labels(grpc.StatusCode.DEADLINE_EXCEEDED.name).inc()
            raise CoreUnreachable("core_deadline_exceeded", "core did not answer in time") from None

    async def _deliver_unary(
        self,
        request: ingress_service_pb2.DeliverMessageRequest,
        timeout: float,
        request_id: str,
    ) -> Response:
        """`DeliverMessage`, for a core that is older than the delivery stream."""
        _check_budget(timeout)
        try:
            response: Response = await self._stub.DeliverMessage(
                request, timeout=timeout, metadata=((REQUEST_ID_METADATA, request_id), *self._auth)
            )
        except grpc.aio.AioRpcError as exc:
            raise _failure(exc.code(), _reason(exc), exc.details() or "") from None
        metrics.CORE_CALLS.labels("OK").inc()
        return response

    async def build_authorize_url(
        self, request: oauth_service_pb2.BuildAuthorizeUrlRequest, *, request_id: str
    ) -> oauth_service_pb2.BuildAuthorizeUrlResponse:
        """Start a web login; raises `CoreRefused` or `CoreUnreachable`."""
        return cast(
            oauth_service_pb2.BuildAuthorizeUrlResponse,
            await self._oauth_call(self._oauth.BuildAuthorizeUrl, request, request_id),
        )

    async def exchange_code(
        self, request: oauth_service_pb2.ExchangeCodeRequest, *, request_id: str
    ) -> oauth_service_pb2.ExchangeCodeResponse:
        """Complete a web login; raises `CoreRefused` or `CoreUnreachable`."""
        return cast(
            oauth_service_pb2.ExchangeCodeResponse,
            await self._oauth_call(self._oauth.ExchangeCode, request, request_id),
        )

    async def _oauth_call(self, method: Any, request: Any, request_id: str) -> Any:
        try:
            return await method(
                request,
                timeout=_OAUTH_TIMEOUT,
                metadata=((REQUEST_ID_METADATA, request_id), *self._auth),
            )
        except grpc.aio.AioRpcError as exc:
            reason = _reason(exc)
            if exc.code() in _UNREACHABLE_CODES and reason in ("", "SHUTTING_DOWN"):
                raise CoreUnreachable(
                    f"core_{exc.code().name.lower()}", exc.details() or ""
                ) from None
            raise CoreRefused(reason or exc.code().name, exc.details() or "") from None

    async def close(self) -> None:
        """Close the stream (answers to deliveries in flight still arrive) and the channel."""
        if self._stream is not None:
            await self._stream.close()
        await self._channel.close()
