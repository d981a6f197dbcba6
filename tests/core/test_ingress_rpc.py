"""IngressService through the generated stub against a real server and real Redis."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as redis

from acme.wxplatform.v1 import ingress_service_pb2_grpc
from tests.core.helpers import deliver_request, text_message
from tests.support import (
    EDGE_CREDENTIAL,
    app_table,
    bearer,
    make_settings,
    new_app_id,
    running_stack,
)


async def test_keyword_rule_default_and_no_reply(redis_client: redis.Redis) -> None:
    app_id = new_app_id()
    settings = make_settings(app_table(app_id))
    async with running_stack(settings, redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        hello = await stub.DeliverMessage(
            deliver_request(text_message(app_id, "hello", "1")), metadata=bearer(EDGE_CREDENTIAL)
        )
        assert hello.reply.text.content == "hi there"
        assert not hello.duplicate
        assert hello.dedup_key == "msg:1"
        other = await stub.DeliverMessage(
            deliver_request(text_message(app_id, "something else", "2")),
            metadata=bearer(EDGE_CREDENTIAL),
        )
        assert other.reply.text.content == "default answer"


async def test_app_without_rules_gives_no_reply(redis_client: redis.Redis) -> None:
    app_id = new_app_id()
    settings = make_settings(app_table(app_id, auto_reply=[], default_reply=None))
    async with running_stack(settings, redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        response = await stub.DeliverMessage(
            deliver_request(text_message(app_id, "hello")), metadata=bearer(EDGE_CREDENTIAL)
        )
        assert response.reply.WhichOneof("reply") is None


async def test_retry_gets_the_first_reply_and_is_marked_duplicate(
    redis_client: redis.Redis,
) -> None:
    app_id = new_app_id()
    settings = make_settings(app_table(app_id))
    async with running_stack(settings, redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        request = deliver_request(text_message(app_id, "hello", "77"))
        first, second, third = await asyncio.gather(
            *(stub.DeliverMessage(request, metadata=bearer(EDGE_CREDENTIAL)) for _ in range(3))
        )
        assert [first.duplicate, second.duplicate, third.duplicate].count(False) == 1
        assert first.reply == second.reply == third.reply
        assert first.reply.text.content == "hi there"


async def test_message_for_another_app_is_invalid(redis_client: redis.Redis) -> None:
    app_id = new_app_id()
    settings = make_settings(app_table(app_id))
    async with running_stack(settings, redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        request = deliver_request(text_message(app_id, "hello"))
        request.message.app_id = "wxsomeoneelse"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DeliverMessage(request, metadata=bearer(EDGE_CREDENTIAL))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_app_is_not_found(redis_client: redis.Redis) -> None:
    settings = make_settings(app_table(new_app_id()))
    async with running_stack(settings, redis_client) as stack:
        stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DeliverMessage(
                deliver_request(text_message("wxnotconfigured", "hello")),
                metadata=bearer(EDGE_CREDENTIAL),
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_dead_redis_is_unavailable_not_internal(redis_client: redis.Redis) -> None:
    from wxplatform.core.adapters.redis_client import connect

    app_id = new_app_id()
    settings = make_settings(app_table(app_id))
    dead = connect("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        async with running_stack(settings, dead) as stack:
            stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.DeliverMessage(
                    deliver_request(text_message(app_id, "hello")), metadata=bearer(EDGE_CREDENTIAL)
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "STORE_UNAVAILABLE" in str(caught.value.trailing_metadata())
    finally:
        await dead.aclose()


async def test_two_replicas_accept_a_message_once(redis_client: redis.Redis) -> None:
    from wxplatform.core.adapters.redis_keys import app_key

    app_id = new_app_id()
    settings = make_settings(app_table(app_id))
    async with (
        running_stack(settings, redis_client) as one,
        running_stack(settings, redis_client) as two,
    ):
        request = deliver_request(text_message(app_id, "hello", "4242"))
        stubs = [ingress_service_pb2_grpc.IngressServiceStub(s.channel) for s in (one, two)]
        responses = await asyncio.gather(
            *(stub.DeliverMessage(request, metadata=bearer(EDGE_CREDENTIAL)) for stub in stubs * 3)
        )
        assert [r.duplicate for r in responses].count(False) == 1
        assert {r.reply.text.content for r in responses} == {"hi there"}
        assert await redis_client.xlen(app_key(app_id, "events")) == 1
