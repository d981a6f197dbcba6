"""Ingress records the customer-service windows that interactions open (docs/wechat.md §5.3)."""

from __future__ import annotations

import time
from typing import cast

import redis.asyncio as redis
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import ingress_service_pb2_grpc
from tests.core.helpers import deliver_request, text_message
from tests.support import (
    EDGE_CREDENTIAL,
    Stack,
    app_table,
    bearer,
    make_settings,
    new_app_id,
    running_stack,
)
from wxplatform.core.adapters.redis_keys import app_key


def event(app_id: str, openid: str, name: str, **body: Message) -> inbound.InboundMessage:
    raw = struct_pb2.Struct()
    raw.update({"Event": name, "FromUserName": openid, "nonce": str(time.monotonic_ns())})
    message = inbound.InboundMessage(
        app_id=app_id,
        to_user_name="gh_test",
        from_user_name=openid,
        create_time=int(time.time()),
        msg_type="event",
        event=name,
        raw=raw,
    )
    for field, value in body.items():
        getattr(message, field).CopyFrom(value)
    return message


async def deliver(stack: Stack, message: inbound.InboundMessage) -> str:
    stub = ingress_service_pb2_grpc.IngressServiceStub(stack.channel)
    response = await stub.DeliverMessage(deliver_request(message), metadata=bearer(EDGE_CREDENTIAL))
    return str(response.reply.text.content)


async def windows(client: redis.Redis, app_id: str, openid: str) -> dict[str, tuple[int, int]]:
    """kind → (window length, quota) of the user's open windows.

    The length is the time left rounded to whole minutes, so a slow machine does not
    turn 172800 s into 172799 s.
    """
    stored = cast(dict[bytes, bytes], await client.hgetall(app_key(app_id, "window", openid)))
    now_ms = time.time() * 1000
    out = {}
    for field, value in stored.items():
        if b":" not in field:  # not `<kind>:used`, `<kind>:at` or `unfollowed:at`
            expires_ms, quota = value.decode().split(":")
            minutes = round((int(expires_ms) - now_ms) / 60_000)
            out[field.decode()] = (minutes * 60, int(quota))
    return out


async def test_official_account_interactions_open_windows(redis_client: redis.Redis) -> None:
    app_id = new_app_id()
    welcome = {"type": "text", "content": "welcome!"}
    async with running_stack(
        make_settings(app_table(app_id, subscribe_reply=welcome)), redis_client
    ) as stack:
        assert await deliver(stack, text_message(app_id, "hello", "1", openid="oA")) == "hi there"
        assert await windows(redis_client, app_id, "oA") == {"message": (48 * 3600, 5)}

        assert (
            await deliver(
                stack, event(app_id, "oB", "CLICK", menu_click=inbound.MenuClickEvent(key="K"))
            )
            == ""
        )
        assert await windows(redis_client, app_id, "oB") == {"menu": (60, 3)}

        follow = event(app_id, "oC", "subscribe", subscribe=inbound.SubscribeEvent(qr_scene="42"))
        assert await deliver(stack, follow) == "welcome!"
        assert await windows(redis_client, app_id, "oC") == {"follow": (60, 3), "scan": (60, 3)}

        await deliver(
            stack, event(app_id, "oD", "VIEW", menu_view=inbound.MenuViewEvent(url="https://x"))
        )
        await deliver(stack, event(app_id, "oD", "LOCATION"))
        assert await windows(redis_client, app_id, "oD") == {}  # link menus and reports open none

        # A later click must not shorten the message window the user already has.
        await deliver(
            stack, event(app_id, "oA", "CLICK", menu_click=inbound.MenuClickEvent(key="K"))
        )
        assert await windows(redis_client, app_id, "oA") == {
            "message": (48 * 3600, 5),
            "menu": (60, 3),
        }
        assert await redis_client.pttl(app_key(app_id, "window", "oA")) > 47 * 3600 * 1000


async def test_mini_program_session_window(redis_client: redis.Redis) -> None:
    app_id = new_app_id()
    mini = app_table(app_id, kind="mini_program", auto_reply=[], default_reply=None)
    async with running_stack(make_settings(mini), redis_client) as stack:
        await deliver(stack, event(app_id, "oM", "user_enter_tempsession"))
        assert await windows(redis_client, app_id, "oM") == {"session": (60, 2)}
        await deliver(stack, text_message(app_id, "hi", "9", openid="oM"))
        assert (await windows(redis_client, app_id, "oM"))["message"] == (48 * 3600, 5)
