"""The edge's delivery stream to core, against a real gRPC server playing core.

The server is a small `IngressService` written here whose answers each test steers
(slow, refusing, breaking the stream), so the client's own behaviour is what is tested:
deadlines, batching, a broken stream, reopening, closing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from acme.wxplatform.v1 import error_reason_pb2 as error_reason
from acme.wxplatform.v1 import ingress_service_pb2 as ingress
from acme.wxplatform.v1 import ingress_service_pb2_grpc
from acme.wxplatform.v1 import passive_reply_pb2 as pr
from edge.core_client import CoreClient
from edge.errors import CoreRejected, CoreUnreachable
from tests.core.helpers import text_message
from tests.support import app_table, make_settings, new_app_id, running_stack
from wxplatform.config import Secret


class PlayCore(ingress_service_pb2_grpc.IngressServiceServicer):
    """Answers by the message's text: `slow` after a pause, `replayed` and `bad` with
    in-band errors, `break` by ending the stream with UNAVAILABLE, anything else echoed."""

    async def DeliverMessage(
        self, request: ingress.DeliverMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingress.DeliverMessageResponse:
        raise AssertionError("the edge delivers on the stream")

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.streams = 0
        self.metadata: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.received = asyncio.Event()
        self.ended = asyncio.Event()  # the edge half-closed the stream

    async def DeliverStream(
        self,
        requests: AsyncIterator[ingress.DeliverStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[ingress.DeliverStreamResponse]:
        self.streams += 1
        self.metadata.append(dict(context.invocation_metadata() or ()))
        await context.send_initial_metadata(())  # as core does: the stream is accepted
        async for request in requests:
            self.batches.append(len(request.deliveries))
            self.received.set()
            results = []
            for delivery in request.deliveries:
                text = delivery.request.message.text.content
                if text == "break":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "core went away")
                if text == "slow":
                    await self.release.wait()
                results.append(self._answer(delivery, text))
            yield ingress.DeliverStreamResponse(results=results)
        self.ended.set()

    @staticmethod
    def _answer(delivery: ingress.StreamedDelivery, text: str) -> ingress.StreamedResult:
        result = ingress.StreamedResult(id=delivery.id)
        if text == "replayed":
            result.error.CopyFrom(
                ingress.DeliveryError(
                    code=grpc.StatusCode.PERMISSION_DENIED.value[0],
                    reason=error_reason.ERROR_REASON_REPLAYED_REQUEST,
                    message="replayed",
                )
            )
        elif text == "future":  # a reason this edge does not know yet
            result.error.code = grpc.StatusCode.FAILED_PRECONDITION.value[0]
            result.error.reason = 9999  # type: ignore[assignment]
            result.error.message = "something new"
        elif text == "bad":
            result.error.CopyFrom(
                ingress.DeliveryError(
                    code=grpc.StatusCode.UNAVAILABLE.value[0],
                    reason=error_reason.ERROR_REASON_STORE_UNAVAILABLE,
                    message="store down",
                )
            )
        else:
            reply = pr.PassiveReply(text=pr.TextReply(content=f"re: {text}"))
            result.response.CopyFrom(
                ingress.DeliverMessageResponse(reply=reply, dedup_key=delivery.request_id)
            )
        return result


@pytest.fixture
async def core() -> AsyncIterator[tuple[PlayCore, CoreClient]]:
    play = PlayCore()
    server = grpc.aio.server()
    ingress_service_pb2_grpc.add_IngressServiceServicer_to_server(play, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = CoreClient(f"127.0.0.1:{port}", Secret("edge-secret"))
    try:
        yield play, client
    finally:
        play.release.set()
        await client.close()
        await server.stop(None)


async def deliver(
    client: CoreClient, text: str, timeout: float = 5.0
) -> ingress.DeliverMessageResponse:
    message = text_message("wxplay", text)
    return await client.deliver(message, timeout=timeout, request_id=f"rid-{text}")


async def test_answers_reach_their_own_callers(core: tuple[PlayCore, CoreClient]) -> None:
    play, client = core
    texts = [f"m{n}" for n in range(40)]
    responses = await asyncio.gather(*(deliver(client, t) for t in texts))
    assert [r.reply.text.content for r in responses] == [f"re: {t}" for t in texts]
    assert [r.dedup_key for r in responses] == [f"rid-{t}" for t in texts]  # request ids
    assert play.streams == 1
    # Deliveries waiting together travel together.
    assert sum(play.batches) == 40
    assert len(play.batches) < 40
    assert play.metadata[0]["authorization"] == "Bearer edge-secret"


async def test_a_deadline_passes_and_the_late_answer_is_dropped(
    core: tuple[PlayCore, CoreClient],
) -> None:
    play, client = core
    with pytest.raises(CoreUnreachable) as caught:
        await deliver(client, "slow", timeout=0.2)
    assert caught.value.reason == "core_deadline_exceeded"
    play.release.set()  # the late answer arrives and is dropped
    assert (await deliver(client, "after")).reply.text.content == "re: after"
    assert play.streams == 1


async def test_in_band_errors_are_typed(core: tuple[PlayCore, CoreClient]) -> None:
    _, client = core
    with pytest.raises(CoreRejected) as rejected:
        await deliver(client, "replayed")
    assert (rejected.value.reason, rejected.value.status) == ("replayed_request", 403)
    with pytest.raises(CoreUnreachable) as unavailable:
        await deliver(client, "bad")
    assert unavailable.value.reason == "core_unavailable"
    with pytest.raises(CoreUnreachable) as unknown:
        await deliver(client, "future")
    assert unknown.value.reason == "core_failed_precondition"
    assert (await deliver(client, "fine")).reply.text.content == "re: fine"


async def test_a_broken_stream_fails_what_waits_and_reopens(
    core: tuple[PlayCore, CoreClient],
) -> None:
    play, client = core
    # One batch: the stream breaks while "slow" waits for its answer.
    results = await asyncio.gather(
        deliver(client, "break"), deliver(client, "slow"), return_exceptions=True
    )
    for result in results:
        assert isinstance(result, CoreUnreachable), result
        assert result.reason == "core_unavailable"
    play.release.set()
    assert (await deliver(client, "again")).reply.text.content == "re: again"
    assert play.streams == 2


async def test_no_time_left_fails_at_once(core: tuple[PlayCore, CoreClient]) -> None:
    play, client = core
    with pytest.raises(CoreUnreachable) as caught:
        await deliver(client, "late", timeout=0)
    assert caught.value.reason == "core_deadline"
    assert play.streams == 0


async def test_core_down_fails_fast() -> None:
    client = CoreClient("127.0.0.1:1", None)  # nothing listens on port 1
    try:
        with pytest.raises(CoreUnreachable) as caught:
            await deliver(client, "anyone?", timeout=3)
        assert caught.value.reason == "core_unavailable"
    finally:
        await client.close()


async def test_close_waits_for_answers_in_flight(core: tuple[PlayCore, CoreClient]) -> None:
    play, client = core
    waiting = asyncio.create_task(deliver(client, "slow"))
    await play.received.wait()
    asyncio.get_running_loop().call_later(0.2, play.release.set)
    await client.close()
    assert (await waiting).reply.text.content == "re: slow"


async def old_core_deliver(
    request: ingress.DeliverMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> ingress.DeliverMessageResponse:
    """A core from before DeliverStream: only the unary call."""
    text = request.message.text.content
    if text == "replayed":
        await context.abort_with_status(
            rpc_status.to_status(
                status_pb2.Status(
                    code=code_pb2.PERMISSION_DENIED,
                    message="replayed",
                    details=[_packed(error_details_pb2.ErrorInfo(reason="REPLAYED_REQUEST"))],
                )
            )
        )
    return ingress.DeliverMessageResponse(
        reply=pr.PassiveReply(text=pr.TextReply(content=f"unary: {text}"))
    )


def _packed(detail: error_details_pb2.ErrorInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


async def test_an_older_core_gets_unary_calls() -> None:
    """A rolling upgrade: the edge is new, core is not yet. Nothing is lost meanwhile."""
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        old_core_deliver,
        request_deserializer=ingress.DeliverMessageRequest.FromString,
        response_serializer=ingress.DeliverMessageResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "acme.wxplatform.v1.IngressService", {"DeliverMessage": handler}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = CoreClient(f"127.0.0.1:{port}", Secret("edge-secret"))
    try:
        # The stream is refused (UNIMPLEMENTED): this delivery and the next go unary.
        assert (await deliver(client, "first")).reply.text.content == "unary: first"
        assert (await deliver(client, "second")).reply.text.content == "unary: second"
        with pytest.raises(CoreRejected) as rejected:
            await deliver(client, "replayed")
        assert rejected.value.status == 403
    finally:
        await client.close()
        await server.stop(None)


async def test_a_refused_stream_reports_cores_status(redis_client: redis.Redis) -> None:
    """A wrong credential: core refuses the stream when it opens, and says why."""
    settings = make_settings(app_table(new_app_id()))
    async with running_stack(settings, redis_client) as stack:
        client = CoreClient(f"127.0.0.1:{stack.core.port}", Secret("not-the-edge-credential"))
        try:
            for _ in range(3):  # every new stream is refused alike
                with pytest.raises(CoreUnreachable) as caught:
                    await deliver(client, "hello")
                assert caught.value.reason == "core_unauthenticated"
        finally:
            await client.close()


async def test_big_pushes_are_split_over_stream_messages(
    core: tuple[PlayCore, CoreClient],
) -> None:
    """120 pushes of 40 KB in one turn: more than core takes in one message (4 MiB)."""
    play, client = core
    texts = [f"{n:03d}" + "x" * 40_000 for n in range(120)]
    responses = await asyncio.gather(*(deliver(client, t) for t in texts))
    assert [r.reply.text.content for r in responses] == [f"re: {t}" for t in texts]
    assert sum(play.batches) == 120
    assert max(play.batches) <= 27  # 1 MiB of 40 KB deliveries per stream message
    assert play.streams == 1


async def test_a_stream_that_stopped_answering_is_replaced(
    core: tuple[PlayCore, CoreClient],
) -> None:
    play, client = core
    # "slow" holds the first stream's only reader: nothing after it gets an answer.
    for n in range(16):
        with pytest.raises(CoreUnreachable):
            await deliver(client, "slow" if n == 0 else f"stuck {n}", timeout=0.1)
    assert (await deliver(client, "after")).reply.text.content == "re: after"
    assert play.streams == 2


async def test_close_half_closes_with_deliveries_still_queued(
    core: tuple[PlayCore, CoreClient],
) -> None:
    play, client = core
    waiting = [asyncio.create_task(deliver(client, f"late {n}")) for n in range(3)]
    await asyncio.sleep(0)  # submitted, not yet written
    started = time.monotonic()
    await client.close()
    # Half-closed as soon as they were written and answered: well before close's 5 s
    # wait for a stream that does not end (the generous bound is for a noisy machine).
    assert time.monotonic() - started < 4.0
    assert play.ended.is_set()
    assert [(await w).reply.text.content for w in waiting] == [f"re: late {n}" for n in range(3)]
