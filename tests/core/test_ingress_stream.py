"""IngressService.DeliverStream: the edge's delivery stream, against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as redis

from acme.wxplatform.v1 import error_reason_pb2 as error_reason
from acme.wxplatform.v1 import ingress_service_pb2 as ingress
from acme.wxplatform.v1 import ingress_service_pb2_grpc
from tests.core.helpers import deliver_request, text_message
from tests.support import (
    EDGE_CREDENTIAL,
    OTHER_CREDENTIAL,
    TEAM_CREDENTIAL,
    app_table,
    bearer,
    error_info,
    make_settings,
    new_app_id,
    running_stack,
    sample,
)


def delivery(number: int, app_id: str, text: str, msg_id: str) -> ingress.StreamedDelivery:
    return ingress.StreamedDelivery(
        id=number,
        request=deliver_request(text_message(app_id, text, msg_id)),
        request_id=f"req-{number}",
    )


def reason(result: ingress.StreamedResult) -> str:
    return error_reason.ErrorReason.Name(result.error.reason).removeprefix("ERROR_REASON_")


async def collect(
    responses: AsyncIterator[ingress.DeliverStreamResponse], count: int
) -> dict[int, ingress.StreamedResult]:
    results: dict[int, ingress.StreamedResult] = {}
    async for response in responses:
        for result in response.results:
            assert result.id not in results, "one result per delivery"
            results[result.id] = result
        if len(results) == count:
            break
    return results


async def test_each_delivery_gets_one_result_with_its_id(redis_client: redis.Redis) -> None:
    app_id = new_app_id()
    async with running_stack(make_settings(app_table(app_id)), redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        requests = [
            ingress.DeliverStreamRequest(
                deliveries=[delivery(n, app_id, "hello", f"{100 + n}") for n in range(1, 6)]
            ),
            ingress.DeliverStreamRequest(
                deliveries=[
                    delivery(6, app_id, "something else", "200"),
                    delivery(7, app_id, "hello", "101"),  # a retry of delivery 1
                ]
            ),
        ]
        call = stub.DeliverStream(iter(requests), metadata=bearer(EDGE_CREDENTIAL))
        results = await collect(call, 7)
        assert await call.code() == grpc.StatusCode.OK  # ends once the sender is done
    assert sorted(results) == [1, 2, 3, 4, 5, 6, 7]
    for number in range(1, 6):
        response = results[number].response
        assert response.reply.text.content == "hi there"
        assert response.dedup_key == f"msg:{100 + number}"
        assert not response.duplicate or number == 1
    assert results[6].response.reply.text.content == "default answer"
    # Deliveries 1 and 7 carry one message and are in flight together: whichever Redis
    # sees first is new, the other a duplicate with the same reply.
    assert results[1].response.duplicate != results[7].response.duplicate
    assert results[7].response.reply == results[1].response.reply
    assert results[7].response.dedup_key == results[1].response.dedup_key


async def test_same_answers_as_the_unary_call(redis_client: redis.Redis) -> None:
    app_id = new_app_id()
    async with running_stack(make_settings(app_table(app_id)), redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        unary = await stub.DeliverMessage(
            deliver_request(text_message(app_id, "hello", "9")), metadata=bearer(EDGE_CREDENTIAL)
        )
        requests = [ingress.DeliverStreamRequest(deliveries=[delivery(1, app_id, "hello", "9")])]
        results = await collect(
            stub.DeliverStream(iter(requests), metadata=bearer(EDGE_CREDENTIAL)), 1
        )
    streamed = results[1].response
    assert streamed.duplicate
    assert not unary.duplicate
    assert (streamed.reply, streamed.dedup_key) == (unary.reply, unary.dedup_key)


async def test_every_delivery_is_authorized_for_its_own_app(redis_client: redis.Redis) -> None:
    mine, theirs = new_app_id(), new_app_id()
    settings = make_settings(app_table(mine), app_table(theirs), team_apps=[mine])
    async with running_stack(settings, redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        requests = [
            ingress.DeliverStreamRequest(
                deliveries=[delivery(1, theirs, "hello", "1"), delivery(2, mine, "hello", "2")]
            )
        ]
        results = await collect(
            stub.DeliverStream(iter(requests), metadata=bearer(TEAM_CREDENTIAL)), 2
        )
    assert results[1].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert reason(results[1]) == "CALLER_NOT_AUTHORIZED"
    assert results[2].response.reply.text.content == "hi there"  # the batch goes on


def refused(reason: str) -> float:
    return sample("wxp_core_ingress_refused_total", reason=reason)


async def test_a_bad_delivery_fails_alone(redis_client: redis.Redis) -> None:
    app_id = new_app_id()
    invalid_before, unknown_before = refused("INVALID_REQUEST"), refused("APP_NOT_FOUND")
    async with running_stack(make_settings(app_table(app_id)), redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        bad = delivery(1, app_id, "hello", "1")
        bad.request.message.app_id = "wxsomeoneelse"
        unknown = delivery(2, "wxunknownapp", "hello", "2")
        requests = [
            ingress.DeliverStreamRequest(
                deliveries=[bad, unknown, delivery(3, app_id, "hello", "3")]
            )
        ]
        results = await collect(
            stub.DeliverStream(iter(requests), metadata=bearer(EDGE_CREDENTIAL)), 3
        )
    assert results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reason(results[1]) == "INVALID_REQUEST"
    assert refused("INVALID_REQUEST") - invalid_before == 1
    assert refused("APP_NOT_FOUND") - unknown_before == 1
    assert "app_id" in results[1].error.message
    assert reason(results[2]) == "APP_NOT_FOUND"
    assert results[3].response.reply.text.content == "hi there"


@pytest.mark.parametrize("credential", [None, "not-a-known-credential"])
async def test_an_unauthenticated_stream_is_refused(
    redis_client: redis.Redis, credential: str | None
) -> None:
    app_id = new_app_id()
    async with running_stack(make_settings(app_table(app_id)), redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        # Refused when the stream opens, before any request is read (nothing written here:
        # a write racing the refusal would fail on the client with a status of its own).
        call = stub.DeliverStream(metadata=bearer(credential) if credential else ())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value)[0] == "CALLER_UNAUTHENTICATED"


async def test_a_caller_without_any_grant_for_the_stream_is_refused_at_once(
    redis_client: redis.Redis,
) -> None:
    """`other` may call TokenService only: no delivery of its can be allowed."""
    app_id = new_app_id()
    async with running_stack(make_settings(app_table(app_id)), redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        call = stub.DeliverStream(metadata=bearer(OTHER_CREDENTIAL))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value)[0] == "CALLER_NOT_AUTHORIZED"


async def test_draining_answers_what_it_took_then_ends_the_stream(
    redis_client: redis.Redis,
) -> None:
    app_id = new_app_id()
    async with running_stack(make_settings(app_table(app_id)), redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        call = stub.DeliverStream(metadata=bearer(EDGE_CREDENTIAL))
        await call.write(ingress.DeliverStreamRequest(deliveries=[delivery(1, app_id, "hi", "1")]))
        first = await call.read()
        assert [r.id for r in first.results] == [1]
        stopping = asyncio.create_task(stack.core.stop())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()  # no more results: the stream ends
        await stopping
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value)[0] == "SHUTTING_DOWN"


async def test_deliveries_that_waited_past_their_timeout_are_skipped(
    redis_client: redis.Redis,
) -> None:
    """More deliveries than core takes at once, each willing to wait 1 ms: the ones that
    queued in core are answered DEADLINE_EXCEEDED without being processed."""
    app_id = new_app_id()
    async with running_stack(make_settings(app_table(app_id)), redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        many = [delivery(n, app_id, "hello", str(1000 + n)) for n in range(1, 401)]
        for item in many:
            item.timeout_ms = 1
        requests = [ingress.DeliverStreamRequest(deliveries=many)]
        results = await collect(
            stub.DeliverStream(iter(requests), metadata=bearer(EDGE_CREDENTIAL)), 400
        )
        skipped = [
            n for n, r in results.items()
            if r.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        ]  # fmt: skip
        assert skipped  # at most 256 run at once; the rest waited for a slot
        # Skipped means not processed: the same message again is new, not a duplicate.
        again = [delivery(n, app_id, "hello", str(1000 + n)) for n in skipped[:5]]
        retried = await collect(
            stub.DeliverStream(
                iter([ingress.DeliverStreamRequest(deliveries=again)]),
                metadata=bearer(EDGE_CREDENTIAL),
            ),
            len(again),
        )
    assert all(not r.response.duplicate for r in retried.values())
    assert all(r.response.reply.text.content == "hi there" for r in retried.values())
