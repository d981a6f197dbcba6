"""The published client: typed errors, credential and deadline on every call."""

from __future__ import annotations

import pytest
import redis.asyncio as redis
import wxplatform_client

from acme.wxplatform.v1 import (
    event_service_pb2,
    ingress_service_pb2,
    session_service_pb2,
    token_service_pb2,
)
from tests.core.helpers import deliver_request, text_message
from tests.support import (
    EDGE_CREDENTIAL,
    TEAM_CREDENTIAL,
    app_table,
    make_settings,
    new_app_id,
    running_stack,
)
from wxplatform.core.server import API_SERVICES


async def test_calls_carry_the_credential_and_map_errors(redis_client: redis.Redis) -> None:
    app_id = new_app_id()
    async with running_stack(make_settings(app_table(app_id)), redis_client) as stack:
        target = f"127.0.0.1:{stack.core.port}"
        async with wxplatform_client.Client(target, EDGE_CREDENTIAL) as client:
            response = await client.ingress.DeliverMessage(
                deliver_request(text_message(app_id, "hello"))
            )
            assert isinstance(response, ingress_service_pb2.DeliverMessageResponse)
            assert response.reply.text.content == "hi there"
            with pytest.raises(wxplatform_client.PermissionDenied) as denied:
                await client.tokens.GetAccessToken(
                    token_service_pb2.GetAccessTokenRequest(app_id=app_id)
                )
            assert denied.value.reason == "CALLER_NOT_AUTHORIZED"
            bad = deliver_request(text_message(app_id, "hello"))
            bad.message.app_id = "wxmismatch"
            with pytest.raises(wxplatform_client.InvalidArgument) as invalid:
                await client.ingress.DeliverMessage(bad)
            assert invalid.value.violations == [("message.app_id", "must equal app_id")]
        async with wxplatform_client.Client(target, TEAM_CREDENTIAL) as team:
            with pytest.raises(wxplatform_client.NotFound) as missing:
                await team.sessions.GetSession(
                    session_service_pb2.GetSessionRequest(app_id=app_id, session_token="t")
                )
            assert missing.value.reason == "SESSION_NOT_FOUND"
        async with wxplatform_client.Client(target, "wrong") as stranger:
            with pytest.raises(wxplatform_client.Unauthenticated):
                await stranger.ingress.DeliverMessage(
                    deliver_request(text_message(app_id, "hello"))
                )


async def test_unreachable_core_is_unavailable() -> None:
    async with wxplatform_client.Client("127.0.0.1:1", TEAM_CREDENTIAL, timeout=2) as client:
        with pytest.raises((wxplatform_client.Unavailable, wxplatform_client.DeadlineExceeded)):
            await client.tokens.GetAccessToken(token_service_pb2.GetAccessTokenRequest(app_id="wx"))


async def test_the_client_wraps_every_service() -> None:
    async with wxplatform_client.Client("127.0.0.1:1", "x") as client:  # in a running loop
        client_services = {
            stub.__class__.__name__.removesuffix("Stub")
            for stub in vars(client).values()
            if stub.__class__.__name__.endswith("ServiceStub")
        }
    assert {name.rsplit(".", 1)[1] for name in API_SERVICES} == client_services


async def test_streams_carry_the_credential_and_map_errors(redis_client: redis.Redis) -> None:
    app_id = new_app_id()
    async with running_stack(make_settings(app_table(app_id)), redis_client) as stack:
        target = f"127.0.0.1:{stack.core.port}"
        async with wxplatform_client.Client(target, EDGE_CREDENTIAL) as edge:
            await edge.ingress.DeliverMessage(deliver_request(text_message(app_id, "streamed")))
        async with wxplatform_client.Client(target, TEAM_CREDENTIAL) as team:
            request = event_service_pb2.StreamEventsRequest(
                app_id=app_id,
                consumer_group="client-test",
                consumer_name="c1",
                start_position=event_service_pb2.START_POSITION_EARLIEST,
            )
            async for event in team.events.StreamEvents(request):
                assert event.message.text.content == "streamed"
                break
            bad = event_service_pb2.StreamEventsRequest(
                app_id=app_id, consumer_group="bad group", consumer_name="c1"
            )
            with pytest.raises(wxplatform_client.InvalidArgument) as caught:
                async for _ in team.events.StreamEvents(bad):
                    pass
            assert caught.value.reason == "INVALID_CONSUMER_GROUP"


async def test_the_delivery_stream_carries_the_credential(redis_client: redis.Redis) -> None:
    app_id = new_app_id()
    async with running_stack(make_settings(app_table(app_id)), redis_client) as stack:
        target = f"127.0.0.1:{stack.core.port}"
        async with wxplatform_client.Client(target, EDGE_CREDENTIAL) as client:
            call = client.ingress.DeliverStream()
            delivery = ingress_service_pb2.StreamedDelivery(
                id=1, request=deliver_request(text_message(app_id, "hello")), timeout_ms=5000
            )
            await call.write(ingress_service_pb2.DeliverStreamRequest(deliveries=[delivery]))
            answer = await call.read()
            (result,) = answer.results
            assert result.id == 1
            assert result.response.reply.text.content == "hi there"
            await call.done_writing()
