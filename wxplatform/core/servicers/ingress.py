"""`IngressService`: the edge's entry into core."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from acme.wxplatform.v1 import error_reason_pb2
from acme.wxplatform.v1 import ingress_service_pb2 as pb
from acme.wxplatform.v1 import ingress_service_pb2_grpc as pb_grpc
from wxplatform.core import metrics
from wxplatform.core.servicers.context import current_caller, stream_authorizer
from wxplatform.core.servicers.errors import STATUS_BY_REASON
from wxplatform.core.services.ingress import Delivered, IngressService
from wxplatform.errors import CallerNotAuthorized, ShuttingDown, WxPlatformError
from wxplatform.logs import new_request_id, request_id

__all__ = ["IngressServicer"]

log = logging.getLogger("wxplatform.core.ingress")

# Deliveries of one stream being processed at once; beyond it core stops reading the
# stream, and gRPC's flow control holds the sender back.
MAX_IN_FLIGHT = 256
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


def _response(app_id: str, result: Delivered) -> pb.DeliverMessageResponse:
    metrics.INGRESS_MESSAGES.labels(app_id, "duplicate" if result.duplicate else "new").inc()
    return pb.DeliverMessageResponse(
        reply=result.reply, duplicate=result.duplicate, dedup_key=result.dedup_key
    )


def _error(exc: WxPlatformError) -> pb.DeliveryError:
    code = STATUS_BY_REASON.get(exc.reason, grpc.StatusCode.INTERNAL)
    return pb.DeliveryError(
        code=code.value[0],
        reason=error_reason_pb2.ErrorReason.Value(f"ERROR_REASON_{exc.reason}"),
        message=exc.message,
    )


class IngressServicer(pb_grpc.IngressServiceServicer):
    """Maps `DeliverMessage` and `DeliverStream` onto `IngressService.deliver`."""

    def __init__(self, service: IngressService, stopping: asyncio.Event | None = None) -> None:
        self._service = service
        self._stopping = stopping or asyncio.Event()

    async def DeliverMessage(
        self, request: pb.DeliverMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeliverMessageResponse:
        result = await self._service.deliver(request.app_id, request.message)
        return _response(request.app_id, result)

    async def DeliverStream(
        self,
        requests: AsyncIterator[pb.DeliverStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.DeliverStreamResponse]:
        # Headers at once: the edge waits for them before its first write, so a refused
        # stream reaches it as its real status, not as a failed write.
        await context.send_initial_metadata(())
        stream = _DeliveryStream(self._service, self._stopping)
        async for response in stream.run(requests):
            yield response


class _DeliveryStream:
    """One `DeliverStream` call: deliveries processed concurrently, results batched.

    A reader task takes deliveries off the stream and starts one task each (at most
    `MAX_IN_FLIGHT` at a time); the response side sends whatever results are ready as
    one response. When core starts draining, the reader stops taking deliveries, the
    ones already taken are answered, and the stream ends with SHUTTING_DOWN.
    """

    def __init__(self, service: IngressService, stopping: asyncio.Event) -> None:
        self._service = service
        self._stopping = stopping
        self._authorize = stream_authorizer.get()
        self._results: asyncio.Queue[pb.StreamedResult | None] = asyncio.Queue()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(
        self, requests: AsyncIterator[pb.DeliverStreamRequest]
    ) -> AsyncIterator[pb.DeliverStreamResponse]:
        reader = asyncio.create_task(self._read(requests), name="deliver-stream-reader")
        try:
            while True:
                first = await self._results.get()
                if first is None:
                    break
                batch = [first]
                while not self._results.empty():
                    item = self._results.get_nowait()
                    if item is None:
                        self._results.put_nowait(None)  # seen again by the outer loop
                        break
                    batch.append(item)
                yield pb.DeliverStreamResponse(results=batch)
            await reader  # re-raises what ended the reading side
        finally:
            reader.cancel()
            for task in list(self._tasks):
                task.cancel()
        if self._stopping.is_set():
            raise ShuttingDown("server is draining; deliver the rest elsewhere")

    async def _read(self, requests: AsyncIterator[pb.DeliverStreamRequest]) -> None:
        try:
            async for request in self._until_stopping(requests):
                read_at = time.monotonic()
                for delivery in request.deliveries:
                    await self._slots.acquire()
                    task = asyncio.create_task(self._deliver(delivery, read_at))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            while self._tasks:  # the ones already taken are answered, also when draining
                await asyncio.wait(list(self._tasks))
        finally:
            self._results.put_nowait(None)

    async def _until_stopping(
        self, requests: AsyncIterator[pb.DeliverStreamRequest]
    ) -> AsyncIterator[pb.DeliverStreamRequest]:
        """The stream's requests until it ends or core starts draining."""
        iterator = aiter(requests)
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            while True:
                following = asyncio.ensure_future(anext(iterator))
                await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    return
                try:
                    yield following.result()
                except StopAsyncIteration:
                    return
        finally:
            stopping.cancel()

    async def _deliver(self, delivery: pb.StreamedDelivery, read_at: float) -> None:
        request_id.set(delivery.request_id or new_request_id())
        app_id = delivery.request.app_id
        result = pb.StreamedResult(id=delivery.id)
        waited = time.monotonic() - read_at
        if delivery.timeout_ms and waited * 1000 > delivery.timeout_ms:
            # The sender gave up on it (and spooled the push): spend nothing on it now.
            self._slots.release()
            metrics.INGRESS_REFUSED.labels("DEADLINE_EXCEEDED").inc()
            result.error.CopyFrom(
                pb.DeliveryError(code=_DEADLINE_EXCEEDED, message="waited past its timeout in core")
            )
            self._results.put_nowait(result)
            return
        try:
            if self._authorize is None:  # no auth interceptor ran: default deny
                raise CallerNotAuthorized("stream opened without caller authentication")
            self._authorize(app_id)
            delivered = await self._service.deliver(app_id, delivery.request.message)
            result.response.CopyFrom(_response(app_id, delivered))
            # Counted by metrics; per delivery only at DEBUG, like successful RPCs.
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "delivered",
                    extra={
                        "app_id": app_id,
                        "caller": current_caller.get() or None,
                        "duplicate": delivered.duplicate,
                        "dedup_key": delivered.dedup_key,
                    },
                )
        except WxPlatformError as exc:
            metrics.INGRESS_REFUSED.labels(exc.reason).inc()
            log.info(
                "delivery refused",
                extra={
                    "app_id": app_id,
                    "caller": current_caller.get() or None,
                    "reason": exc.reason,
                },
            )
            result.error.CopyFrom(_error(exc))
        except Exception:
            metrics.INGRESS_REFUSED.labels("INTERNAL").inc()
            log.exception("unhandled error in a streamed delivery", extra={"app_id": app_id})
            result.error.CopyFrom(pb.DeliveryError(code=_INTERNAL, message="internal error"))
        finally:
            self._slots.release()
        self._results.put_nowait(result)
