"""`TokenService`: the shared access token and JS-SDK signatures."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from acme.wxplatform.v1 import token_service_pb2 as pb
from acme.wxplatform.v1 import token_service_pb2_grpc as pb_grpc
from wxplatform.core.servicers.deadlines import deadline_of
from wxplatform.core.services.credentials import Credential
from wxplatform.core.services.tokens import TokenService

__all__ = ["TokenServicer"]


def _expiry(credential: Credential) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(credential.expires_at))


class TokenServicer(pb_grpc.TokenServiceServicer):
    """Maps the TokenService RPCs onto `TokenService`."""

    def __init__(self, service: TokenService) -> None:
        self._service = service

    async def GetAccessToken(
        self, request: pb.GetAccessTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetAccessTokenResponse:
        token = await self._service.get_access_token(request.app_id, deadline=deadline_of(context))
        return pb.GetAccessTokenResponse(access_token=token.value, expire_time=_expiry(token))

    async def InvalidateAccessToken(
        self, request: pb.InvalidateAccessTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InvalidateAccessTokenResponse:
        invalidated, token = await self._service.invalidate_access_token(
            request.app_id, request.access_token, deadline=deadline_of(context)
        )
        return pb.InvalidateAccessTokenResponse(
            invalidated=invalidated, access_token=token.value, expire_time=_expiry(token)
        )

    async def GetJsSdkSignature(
        self, request: pb.GetJsSdkSignatureRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetJsSdkSignatureResponse:
        config = await self._service.js_sdk_config(
            request.app_id, request.url, deadline=deadline_of(context)
        )
        return pb.GetJsSdkSignatureResponse(
            app_id=config.app_id,
            timestamp=config.timestamp,
            nonce_str=config.nonce_str,
            signature=config.signature,
            url=config.url,
        )
