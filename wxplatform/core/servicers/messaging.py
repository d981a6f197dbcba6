"""`MessagingService`: template, customer-service and subscribe sends, and their records."""

from __future__ import annotations

from typing import Any

import grpc

from acme.wxplatform.v1 import messaging_service_pb2 as pb
from acme.wxplatform.v1 import messaging_service_pb2_grpc as pb_grpc
from wxplatform.core.servicers.context import current_caller
from wxplatform.core.servicers.deadlines import deadline_of
from wxplatform.core.services.messaging import MessagingService

__all__ = ["MessagingServicer"]


class MessagingServicer(pb_grpc.MessagingServiceServicer):
    """Maps the MessagingService RPCs onto `MessagingService`; the caller scopes idempotency."""

    def __init__(self, service: MessagingService) -> None:
        self._service = service

    async def SendTemplate(
        self, request: pb.SendTemplateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SendTemplateResponse:
        delivery = await self._service.send_template(
            request, current_caller.get(), deadline=deadline_of(context)
        )
        return pb.SendTemplateResponse(delivery=delivery)

    async def SendCustomerMessage(
        self, request: pb.SendCustomerMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SendCustomerMessageResponse:
        delivery = await self._service.send_customer(
            request, current_caller.get(), deadline=deadline_of(context)
        )
        return pb.SendCustomerMessageResponse(delivery=delivery)

    async def SendSubscribeMessage(
        self, request: pb.SendSubscribeMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SendSubscribeMessageResponse:
        delivery = await self._service.send_subscribe(
            request, current_caller.get(), deadline=deadline_of(context)
        )
        return pb.SendSubscribeMessageResponse(delivery=delivery)

    async def GetDelivery(
        self, request: pb.GetDeliveryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetDeliveryResponse:
        delivery = await self._service.get_delivery(request.app_id, request.delivery_id)
        return pb.GetDeliveryResponse(delivery=delivery)
