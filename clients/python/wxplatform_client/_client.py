"""`Client`: one channel, the six typed stubs, credential and deadline on every call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from acme.wxplatform.v1 import (
    event_service_pb2_grpc,
    ingress_service_pb2_grpc,
    messaging_service_pb2_grpc,
    oauth_service_pb2_grpc,
    session_service_pb2_grpc,
    token_service_pb2_grpc,
)
from wxplatform_client._errors import from_rpc_error

__all__ = ["Client"]


class _CallDefaults:
    """Adds the credential and a default deadline to every call."""

    def __init__(self, credential: str, timeout: float) -> None:
        self._auth = ("authorization", f"Bearer {credential}")
        self._timeout = timeout

    def _details(
        self, details: grpc.aio.ClientCallDetails, *, stream: bool = False
    ) -> grpc.aio.ClientCallDetails:
        """The credential added; the default deadline too, unless `stream` (streams stay
        open indefinitely)."""
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._auth)
        default = None if stream else self._timeout
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout if details.timeout is not None else default,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


class _UnaryDefaults(_CallDefaults, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Unary calls: defaults, and failures raised as typed exceptions."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        call = await continuation(self._details(client_call_details), request)
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None


# grpc registers an interceptor object for one call shape only, hence a class per shape.
class _StreamDefaults(_CallDefaults, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Server-streaming calls: defaults (no deadline), failures as typed exceptions."""

    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        call = await continuation(self._details(client_call_details, stream=True), request)

        async def responses() -> AsyncIterator[Any]:
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from None

        # Iterate the call (`async for`); failures arrive as typed exceptions.
        return responses()


class _BidiDefaults(_CallDefaults, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Bidirectional streams (the edge's DeliverStream): the credential, no deadline.

    The call is handed back as grpc made it (`write`, `read`, `done_writing`), so its
    failures are grpc's `AioRpcError`; `wxplatform_client.from_rpc_error` types them.
    """

    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        details = self._details(client_call_details, stream=True)
        return await continuation(details, request_iterator)


class Client:
    """A connection to wxplatform's core for one caller.

    `channel_credentials` enables TLS (or mTLS); without it the channel is plaintext,
    for loopback and service meshes that encrypt for you.
    """

    def __init__(
        self,
        target: str,
        credential: str,
        *,
        timeout: float = 5.0,
        channel_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        interceptors = [
            _UnaryDefaults(credential, timeout),
            _StreamDefaults(credential, timeout),
            _BidiDefaults(credential, timeout),
        ]
        self.channel = (
            grpc.aio.secure_channel(target, channel_credentials, interceptors=interceptors)
            if channel_credentials is not None
            else grpc.aio.insecure_channel(target, interceptors=interceptors)
        )
        self.ingress = ingress_service_pb2_grpc.IngressServiceStub(self.channel)
        self.events = event_service_pb2_grpc.EventServiceStub(self.channel)
        self.messaging = messaging_service_pb2_grpc.MessagingServiceStub(self.channel)
        self.tokens = token_service_pb2_grpc.TokenServiceStub(self.channel)
        self.oauth = oauth_service_pb2_grpc.OAuthServiceStub(self.channel)
        self.sessions = session_service_pb2_grpc.SessionServiceStub(self.channel)

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
