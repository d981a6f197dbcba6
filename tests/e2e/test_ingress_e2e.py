"""From a signed WeChat push (the simulator's push side) to a consumer group's stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from google.protobuf import duration_pb2

from acme.wxplatform.v1 import event_service_pb2 as ev
from acme.wxplatform.v1 import event_service_pb2_grpc
from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from tests.support import (
    TEAM_CREDENTIAL,
    Stack,
    app_table,
    bearer,
    make_settings,
    new_app_id,
    running_stack,
)
from tests.support import app_by_prefix as app
from wxplatform.config import AppConfig
from wxplatform.core.adapters.redis_keys import app_key
from wxplatform.core.server import create_server
from wxplatform.sim import build_push, event_message, original_id, push, text_message

OPENID = "oE2eUser000000000000000000"


@pytest.fixture
async def stack(redis_client: redis.Redis) -> AsyncIterator[Stack]:
    settings = make_settings(
        app_table(new_app_id("wxplain")),
        app_table(new_app_id("wxcompat"), encryption="compatible"),
        app_table(new_app_id("wxsafe"), encryption="safe"),
        app_table(
            new_app_id("wxmini"),
            kind="mini_program",
            encryption="safe",
            data_format="json",
            auto_reply=[],
            default_reply=None,
        ),
    )
    async with running_stack(settings, redis_client, with_edge=True) as running:
        yield running


def text(target: AppConfig, content: str, msg_id: int | None = None) -> dict[str, Any]:
    return text_message(original_id(target.app_id), OPENID, content, msg_id=msg_id)


async def stream_length(redis_client: redis.Redis, target: AppConfig) -> int:
    return int(await redis_client.xlen(app_key(target.app_id, "events")))


def subscribe(stack: Stack, target: AppConfig, group: str, **extra: Any) -> Any:
    stub = event_service_pb2_grpc.EventServiceStub(stack.channel)
    request = ev.StreamEventsRequest(
        app_id=target.app_id,
        consumer_group=group,
        consumer_name=f"{group}-1",
        start_position=ev.START_POSITION_EARLIEST,
        **extra,
    )
    return stub.StreamEvents(request, metadata=bearer(TEAM_CREDENTIAL))


async def read(stream: Any, count: int, timeout: float = 15) -> list[ev.StreamEventsResponse]:
    async def take() -> list[ev.StreamEventsResponse]:
        return [await stream.read() for _ in range(count)]

    return await asyncio.wait_for(take(), timeout)


@pytest.mark.parametrize("prefix", ["wxplain", "wxcompat", "wxsafe"])
async def test_official_account_modes(stack: Stack, redis_client: redis.Redis, prefix: str) -> None:
    target = app(stack, prefix)
    hello = await push(target, stack.edge_url, text(target, "hello"))
    assert hello.ok, hello.error
    assert hello.reply is not None
    assert hello.reply["Content"] == "hi there"
    other = await push(target, stack.edge_url, text(target, "anything"))
    assert other.reply is not None
    assert other.reply["Content"] == "default answer"
    for event, key in (("subscribe", "qrscene_42"), ("CLICK", "MENU_1"), ("LOCATION", None)):
        result = await push(
            target, stack.edge_url, event_message(original_id(target.app_id), OPENID, event, key)
        )
        assert result.ok, result.error
        assert result.reply is None  # events get no default reply
    assert await stream_length(redis_client, target) == 5


async def test_mini_program_json_safe_mode(stack: Stack, redis_client: redis.Redis) -> None:
    target = app(stack, "wxmini")
    for fields in (
        text(target, "hi from a mini program"),
        event_message(
            original_id(target.app_id),
            OPENID,
            "user_enter_tempsession",
            extra={"SessionFrom": "cart"},
        ),
    ):
        result = await push(target, stack.edge_url, fields)
        assert result.ok, result.error
        assert result.reply is None
    stream = subscribe(stack, target, "mini")
    first, second = await read(stream, 2)
    stream.cancel()
    assert first.message.text.content == "hi from a mini program"
    assert first.message.transport.format == inbound.DATA_FORMAT_JSON
    assert first.message.transport.encryption == inbound.ENCRYPTION_MODE_SAFE
    assert second.message.user_enter_temp_session.session_from == "cart"


async def test_wechat_retry_is_processed_once_and_answered_alike(
    stack: Stack, redis_client: redis.Redis
) -> None:
    target = app(stack, "wxplain")
    # Hold every Redis write for longer than WeChat waits, so the first answer comes
    # too late and WeChat (the simulator) re-sends the identical push.
    await redis_client.execute_command("CLIENT", "PAUSE", "1500", "WRITE")  # type: ignore[no-untyped-call]
    result = await push(target, stack.edge_url, text(target, "hello"), timeout=1.0)
    assert result.ok, result.error
    assert result.attempts >= 2
    assert result.reply is not None
    assert result.reply["Content"] == "hi there"
    assert await stream_length(redis_client, target) == 1


async def test_three_concurrent_identical_pushes_make_one_event(
    stack: Stack, redis_client: redis.Redis
) -> None:
    target = app(stack, "wxplain")
    request = build_push(
        target,
        stack.edge_url,
        text(target, "hello"),
        timestamp=int(time.time()),
        nonce="31337",
    )
    async with httpx.AsyncClient() as client:
        responses = await asyncio.gather(
            *(
                client.post(request.url, content=request.body, headers=request.headers)
                for _ in range(3)
            )
        )
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert len({r.text.split("<CreateTime>")[0] for r in responses}) == 1
    assert all("hi there" in r.text for r in responses)
    assert await stream_length(redis_client, target) == 1


async def test_two_events_from_one_user_in_one_second_are_both_kept(
    stack: Stack, redis_client: redis.Redis
) -> None:
    target = app(stack, "wxsafe")
    second = int(time.time())
    for key in ("MENU_A", "MENU_B"):
        fields = event_message(original_id(target.app_id), OPENID, "CLICK", key, create_time=second)
        assert (await push(target, stack.edge_url, fields)).ok
    assert await stream_length(redis_client, target) == 2


async def test_core_down_then_up_delivers_each_push_once(
    stack: Stack, redis_client: redis.Redis
) -> None:
    target = app(stack, "wxsafe")
    port = stack.core.port
    await stack.core.stop()
    pushes = [text(target, f"while down {n}", msg_id=880000 + n) for n in range(3)]
    for fields in pushes:
        result = await push(target, stack.edge_url, fields)
        assert result.ok, result.error
        assert result.reply is None  # acknowledged with `success`, spooled
    assert (await push(target, stack.edge_url, pushes[0])).ok  # WeChat retries one of them
    assert await stream_length(redis_client, target) == 0

    core = await create_server(
        stack.settings, redis_client, listen=f"127.0.0.1:{port}", serve_metrics=False
    )
    try:
        stream = subscribe(stack, target, "after-outage")
        got = await read(stream, 3)
        assert sorted(e.message.text.content for e in got) == [f"while down {n}" for n in range(3)]
        assert all(e.message.transport.spool_replays >= 1 for e in got)
        with pytest.raises(TimeoutError):  # and nothing twice
            await read(stream, 1, timeout=1.5)
        stream.cancel()
    finally:
        await core.stop()


async def test_groups_each_receive_and_unacked_events_return(stack: Stack) -> None:
    target = app(stack, "wxplain")
    assert (await push(target, stack.edge_url, text(target, "fan out"))).ok
    one_second = duration_pb2.Duration(seconds=1)
    audit, billing = (
        subscribe(stack, target, "audit", visibility_timeout=one_second),
        subscribe(stack, target, "billing"),
    )
    (seen_by_audit,) = await read(audit, 1)
    (seen_by_billing,) = await read(billing, 1)
    assert seen_by_audit.event_id == seen_by_billing.event_id
    (again,) = await read(audit, 1)  # audit never acknowledged it
    assert again.event_id == seen_by_audit.event_id
    assert again.delivery_count == 2
    ack = event_service_pb2_grpc.EventServiceStub(stack.channel).AckEvents
    acked = await ack(
        ev.AckEventsRequest(
            app_id=target.app_id, consumer_group="audit", event_ids=[again.event_id]
        ),
        metadata=bearer(TEAM_CREDENTIAL),
    )
    assert acked.acknowledged_count == 1
    audit.cancel()
    billing.cancel()
