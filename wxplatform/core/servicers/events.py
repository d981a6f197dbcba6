"""`EventService`: consumer-group streaming of inbound events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from acme.wxplatform.v1 import event_service_pb2 as pb
from acme.wxplatform.v1 import event_service_pb2_grpc as pb_grpc
from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from wxplatform.core.services.events import (
    DEFAULT_IN_FLIGHT,
    DEFAULT_VISIBILITY_MS,
    EventService,
    InvalidConsumerGroup,
    Subscription,
)
from wxplatform.errors import FieldViolation

__all__ = ["EventServicer"]


class EventServicer(pb_grpc.EventServiceServicer):
    """Maps `StreamEvents` and `AckEvents` onto `EventService`."""

    def __init__(self, service: EventService) -> None:
        self._service = service

    async def StreamEvents(
        self, request: pb.StreamEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StreamEventsResponse]:
        visibility = request.visibility_timeout
        if request.start_position not in pb.StartPosition.values():
            raise InvalidConsumerGroup(
                FieldViolation("start_position", "is not a known StartPosition")
            )
        subscription = Subscription(
            app_id=request.app_id,
            group=request.consumer_group,
            consumer=request.consumer_name,
            from_start=request.start_position == pb.START_POSITION_EARLIEST,
            msg_types=frozenset(request.msg_types),
            events=frozenset(request.events),
            max_in_flight=request.max_in_flight or DEFAULT_IN_FLIGHT,
            visibility_ms=(
                visibility.seconds * 1000 + visibility.nanos // 1_000_000
                if request.HasField("visibility_timeout")
                else DEFAULT_VISIBILITY_MS
            ),
        )
        async for event in self._service.stream(subscription):
            millis = int(event.event_id.split("-", 1)[0])
            yield pb.StreamEventsResponse(
                event_id=event.event_id,
                message=inbound.InboundMessage.FromString(event.message),
                delivery_count=event.delivery_count,
                append_time=timestamp_pb2.Timestamp(
                    seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000
                ),
            )

    async def AckEvents(
        self, request: pb.AckEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AckEventsResponse:
        count = await self._service.ack(
            request.app_id, request.consumer_group, list(request.event_ids)
        )
        return pb.AckEventsResponse(acknowledged_count=count)
