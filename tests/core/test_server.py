"""Core's server frame: caller auth, health, reflection, UNIMPLEMENTED services, drain."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from wxplatform_client import from_rpc_error

from acme.wxplatform.v1 import error_reason_pb2 as error_reason
from acme.wxplatform.v1 import ingress_service_pb2 as ingress
from acme.wxplatform.v1 import (
    ingress_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
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
)
from wxplatform.core.server import API_SERVICES


async def _call_ingress(
    channel: grpc.aio.Channel, app_id: str, metadata: tuple[tuple[str, str], ...]
) -> grpc.aio.AioRpcError:
    stub = ingress_service_pb2_grpc.IngressServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeliverMessage(deliver_request(text_message(app_id, "hello")), metadata=metadata)
    return caught.value


async def test_calls_without_a_valid_credential_are_unauthenticated(
    redis_client: redis.Redis,
) -> None:
    app_id = new_app_id()
    async with running_stack(make_settings(app_table(app_id)), redis_client) as stack:
        for metadata in ((), bearer("not-a-credential"), (("authorization", EDGE_CREDENTIAL),)):
            error = await _call_ingress(stack.channel, app_id, metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error_info(error)[0] == "CALLER_UNAUTHENTICATED"
            assert EDGE_CREDENTIAL not in (error.details() or "")


async def test_authorization_is_per_caller_app_and_rpc(redis_client: redis.Redis) -> None:
    app_a, app_b = new_app_id(), new_app_id()
    settings = make_settings(app_table(app_a), app_table(app_b), team_apps=[app_a])
    async with running_stack(settings, redis_client) as stack:
        # `team` may call everything for app A, nothing for app B.
        error = await _call_ingress(stack.channel, app_b, bearer(TEAM_CREDENTIAL))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(error)[0] == "CALLER_NOT_AUTHORIZED"
        # The edge may call Ingress only.
        tokens = token_service_pb2_grpc.TokenServiceStub(stack.channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await tokens.GetAccessToken(
                token_service_pb2.GetAccessTokenRequest(app_id=app_a),
                metadata=bearer(EDGE_CREDENTIAL),
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # `other` has TokenService grants but not Ingress.
        error = await _call_ingress(stack.channel, app_a, bearer(OTHER_CREDENTIAL))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_every_rpc_of_the_api_is_served(redis_client: redis.Redis) -> None:
    """Each RPC of the descriptors reaches a handler of ours, not the generated base.

    A caller granted everything sends an empty request: our servicers refuse it with a
    reason of their own (no such app, an invalid request); a method missing from a
    servicer would fall through to the generated base class, which answers
    UNIMPLEMENTED without any ErrorInfo, and gRPC's own "method not found" carries none
    either.
    """
    app_id = new_app_id()
    settings = make_settings(app_table(app_id), team_apps=["*"])
    async with running_stack(settings, redis_client) as stack:
        reflection = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
        for service_name in API_SERVICES:
            files = await _file_containing(reflection, service_name)
            service = next(
                s for f in files for s in f.service if f"{f.package}.{s.name}" == service_name
            )
            for method in service.method:
                rpc = f"{service_name}/{method.name}"
                if method.client_streaming:
                    assert await _streamed_refusal(stack.channel, service_name, method.name) == (
                        "APP_NOT_FOUND"
                    ), rpc
                    continue
                if method.server_streaming:
                    call: Any = stack.channel.unary_stream(f"/{rpc}")
                    refusal = await _first_error(call(b"", metadata=bearer(TEAM_CREDENTIAL)))
                else:
                    call = stack.channel.unary_unary(f"/{rpc}")
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await call(b"", metadata=bearer(TEAM_CREDENTIAL))
                    refusal = caught.value
                reason = from_rpc_error(refusal).reason
                assert reason in {"APP_NOT_FOUND", "INVALID_REQUEST"}, (rpc, refusal)


async def _first_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    return caught.value


async def _streamed_refusal(channel: grpc.aio.Channel, service: str, method: str) -> str:
    """The in-band error of one delivery for an app that does not exist."""
    call = channel.stream_stream(
        f"/{service}/{method}",
        request_serializer=ingress.DeliverStreamRequest.SerializeToString,
        response_deserializer=ingress.DeliverStreamResponse.FromString,
    )
    request = ingress.DeliverStreamRequest(
        deliveries=[
            ingress.StreamedDelivery(id=1, request=deliver_request(text_message("wxnot", "x")))
        ]
    )
    async for response in call(iter([request]), metadata=bearer(TEAM_CREDENTIAL)):
        (result,) = response.results
        assert result.id == 1
        return error_reason.ErrorReason.Name(result.error.reason).removeprefix("ERROR_REASON_")
    raise AssertionError("no result")


async def _file_containing(
    stub: reflection_pb2_grpc.ServerReflectionStub, symbol: str
) -> list[descriptor_pb2.FileDescriptorProto]:
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)])
    )
    async for response in responses:
        return [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in response.file_descriptor_response.file_descriptor_proto
        ]
    raise AssertionError("no reflection response")


async def test_reflection_lists_all_six_services_and_health(redis_client: redis.Redis) -> None:
    async with running_stack(make_settings(app_table(new_app_id())), redis_client) as stack:
        stub = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names: set[str] = set()
        async for response in responses:
            names = {s.name for s in response.list_services_response.service}
            break
        assert set(API_SERVICES) <= names
        assert len(API_SERVICES) == 6
        assert "grpc.health.v1.Health" in names


async def test_health_serves_then_drains_gracefully(redis_client: redis.Redis) -> None:
    from wxplatform.core.server import create_server

    app_id = new_app_id()
    settings = make_settings(
        app_table(app_id), core={"drain_seconds": 5, "metrics_listen": "127.0.0.1:0"}
    )
    core = await create_server(settings, redis_client, listen="127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{core.port}")
    health = health_pb2_grpc.HealthStub(channel)
    watched = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watched.read()).status == health_pb2.HealthCheckResponse.SERVING
    for name in API_SERVICES:
        check = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert check.status == health_pb2.HealthCheckResponse.SERVING

    # The metrics endpoint of core answers with Prometheus text.
    assert core.metrics_server is not None
    url = f"http://127.0.0.1:{core.metrics_server.port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    assert b"wxp_core_rpc_total" in body

    stopping = asyncio.create_task(core.stop())
    update = await asyncio.wait_for(watched.read(), 5)
    assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
    watched.cancel()  # an open stream would hold the drain for its whole grace period
    await stopping
    await channel.close()


async def test_drain_lets_an_in_flight_call_finish(redis_client: redis.Redis) -> None:
    """A call still running when SIGTERM-style drain starts completes normally."""
    from wxplatform.core.server import create_server

    app_id = new_app_id()
    settings = make_settings(app_table(app_id), core={"drain_seconds": 5})
    core = await create_server(settings, redis_client, listen="127.0.0.1:0", serve_metrics=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{core.port}")
    stub = ingress_service_pb2_grpc.IngressServiceStub(channel)
    await channel.channel_ready()
    # Hold Redis writes: the delivery below stays in flight inside core until released.
    await redis_client.execute_command("CLIENT", "PAUSE", "1500", "WRITE")  # type: ignore[no-untyped-call]
    in_flight = asyncio.ensure_future(
        stub.DeliverMessage(
            deliver_request(text_message(app_id, "hello", "31337")),
            metadata=bearer(EDGE_CREDENTIAL),
            timeout=10,
        )
    )
    for _ in range(500):  # in flight once core's script waits behind the pause
        if await _blocked_clients(redis_client):
            break
        await asyncio.sleep(0.01)
    stopping = asyncio.create_task(core.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done(), "the server must wait for the in-flight call"
    # New calls are refused while draining.
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.DeliverMessage(
            deliver_request(text_message(app_id, "hello", "31338")),
            metadata=bearer(EDGE_CREDENTIAL),
            timeout=2,
        )
    response = await in_flight  # completes once the pause ends
    assert not response.duplicate
    assert response.reply.text.content == "hi there"
    await stopping
    await channel.close()


async def _blocked_clients(client: redis.Redis) -> int:
    """Clients Redis holds back (CLIENT PAUSE counts them as blocked)."""
    return int((await client.info("clients")).get("blocked_clients", 0))
