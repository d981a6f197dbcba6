"""The edge's gRPC client for core: generated stub, credential, request id, deadline.

Failures split in two: `CoreRejected` when core refuses this message for good (a
replayed signature, a malformed message), and `CoreUnavailable` for everything else
(down, slow, draining, misconfigured): those messages go to the spool and are retried.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from acme.wxplatform.v1 import inbound_message_pb2, ingress_service_pb2, ingress_service_pb2_grpc
from edge import metrics
from edge.errors import CoreRejected, CoreUnavailable
from wxplatform.config import Secret
from wxplatform.logs import REQUEST_ID_METADATA

__all__ = ["CoreClient"]

# Core's verdicts that replaying later cannot change: status code → (reason → HTTP status).
_FINAL = {
    (grpc.StatusCode.PERMISSION_DENIED, "REPLAYED_REQUEST"): 403,
    (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"): 400,
}


def _reason(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


class CoreClient:
    """One channel to core for the whole edge process."""

    def __init__(self, target: str, credential: Secret | None) -> None:
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                # Fail fast while core is down rather than queueing pushes behind a reconnect.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2_000),
            ],
        )
        self._stub = ingress_service_pb2_grpc.IngressServiceStub(self._channel)
        self._auth = (("authorization", f"Bearer {credential.reveal()}"),) if credential else ()

    async def deliver(
        self, message: inbound_message_pb2.InboundMessage, *, timeout: float, request_id: str
    ) -> ingress_service_pb2.DeliverMessageResponse:
        """Deliver one message; raises `CoreRejected` or `CoreUnavailable` on failure."""
        if timeout <= 0:
            metrics.CORE_CALLS.labels("BUDGET_SPENT").inc()
            raise CoreUnavailable("core_deadline", "no time left in the budget")
        try:
            response: ingress_service_pb2.DeliverMessageResponse = await self._stub.DeliverMessage(
                ingress_service_pb2.DeliverMessageRequest(app_id=message.app_id, message=message),
                timeout=timeout,
                metadata=((REQUEST_ID_METADATA, request_id), *self._auth),
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            metrics.CORE_CALLS.labels(code.name).inc()
            reason = _reason(exc)
            status = _FINAL.get((code, reason))
            if status is not None:
                raise CoreRejected(reason.lower(), exc.details() or "", status=status) from None
            raise CoreUnavailable(f"core_{code.name.lower()}", exc.details() or "") from None
        metrics.CORE_CALLS.labels("OK").inc()
        return response

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()
