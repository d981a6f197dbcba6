"""Builders for core tests."""

from __future__ import annotations

import time

from google.protobuf import struct_pb2

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import ingress_service_pb2 as ingress


def text_message(
    app_id: str, content: str, msg_id: str = "1001", openid: str = "oUser1"
) -> inbound.InboundMessage:
    """A normalized text message as the edge would deliver it."""
    raw = struct_pb2.Struct()
    raw.update({"MsgType": "text", "Content": content, "MsgId": msg_id, "FromUserName": openid})
    return inbound.InboundMessage(
        app_id=app_id,
        to_user_name="gh_test",
        from_user_name=openid,
        create_time=int(time.time()),
        msg_type="text",
        msg_id=msg_id,
        text=inbound.TextMessage(content=content),
        raw=raw,
    )


def deliver_request(message: inbound.InboundMessage) -> ingress.DeliverMessageRequest:
    """The request the edge sends for `message`."""
    return ingress.DeliverMessageRequest(app_id=message.app_id, message=message)
