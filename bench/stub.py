"""An in-process stand-in for core: the edge measured alone, with no gRPC and no Redis."""

from __future__ import annotations

from acme.wxplatform.v1 import inbound_message_pb2, ingress_service_pb2
from acme.wxplatform.v1 import passive_reply_pb2 as pr

__all__ = ["StubCore"]


class StubCore:
    """Has `CoreClient.deliver`'s signature and answers every message with one text reply."""

    def __init__(self, reply_text: str) -> None:
        # Built once: the stub should cost next to nothing, so the edge's own work shows.
        self._response = ingress_service_pb2.DeliverMessageResponse(
            reply=pr.PassiveReply(text=pr.TextReply(content=reply_text))
        )
        self.calls = 0

    async def deliver(
        self, message: inbound_message_pb2.InboundMessage, *, timeout: float, request_id: str
    ) -> ingress_service_pb2.DeliverMessageResponse:
        """The fixed reply, whatever the message."""
        self.calls += 1
        return self._response

    async def close(self) -> None:
        """Nothing to close."""
