"""`IngressService`: the edge's entry into core."""

from __future__ import annotations

from typing import Any

import grpc

from acme.wxplatform.v1 import ingress_service_pb2 as pb
from acme.wxplatform.v1 import ingress_service_pb2_grpc as pb_grpc
from wxplatform.core import metrics
from wxplatform.core.services.ingress import IngressService

__all__ = ["IngressServicer"]


class IngressServicer(pb_grpc.IngressServiceServicer):
    """Maps `DeliverMessage` onto `IngressService.deliver`."""

    def __init__(self, service: IngressService) -> None:
        self._service = service

    async def DeliverMessage(
        self, request: pb.DeliverMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeliverMessageResponse:
        result = await self._service.deliver(request.app_id, request.message)
        metrics.INGRESS_MESSAGES.labels(
            request.app_id, "duplicate" if result.duplicate else "new"
        ).inc()
        return pb.DeliverMessageResponse(
            reply=result.reply, duplicate=result.duplicate, dedup_key=result.dedup_key
        )
