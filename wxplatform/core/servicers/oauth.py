"""`OAuthService`: mini-program login, open data and phone numbers (web OAuth: next)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from acme.wxplatform.v1 import oauth_service_pb2 as pb
from acme.wxplatform.v1 import oauth_service_pb2_grpc as pb_grpc
from wxplatform.core.servicers.deadlines import deadline_of
from wxplatform.core.servicers.sessions import session_message
from wxplatform.core.services.mini_program import MiniProgramIdentity
from wxplatform.errors import NotImplementedYet

__all__ = ["OAuthServicer"]


class OAuthServicer(pb_grpc.OAuthServiceServicer):
    """Maps the OAuthService RPCs onto the identity services."""

    def __init__(self, mini_programs: MiniProgramIdentity) -> None:
        self._mini = mini_programs

    async def BuildAuthorizeUrl(
        self, request: pb.BuildAuthorizeUrlRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.BuildAuthorizeUrlResponse:
        raise NotImplementedYet("OAuthService/BuildAuthorizeUrl is not implemented yet")

    async def ExchangeCode(
        self, request: pb.ExchangeCodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ExchangeCodeResponse:
        raise NotImplementedYet("OAuthService/ExchangeCode is not implemented yet")

    async def GetUserInfo(
        self, request: pb.GetUserInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetUserInfoResponse:
        raise NotImplementedYet("OAuthService/GetUserInfo is not implemented yet")

    async def Code2Session(
        self, request: pb.Code2SessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Code2SessionResponse:
        login = await self._mini.code_to_session(
            request.app_id, request.js_code, request.attributes, deadline=deadline_of(context)
        )
        return pb.Code2SessionResponse(
            openid=login.openid,
            unionid=login.unionid,
            session_token=login.created.token,
            session=session_message(request.app_id, login.created.session),
        )

    async def DecryptUserData(
        self, request: pb.DecryptUserDataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DecryptUserDataResponse:
        opened = await self._mini.decrypt_user_data(
            request.app_id,
            request.session_token,
            request.encrypted_data,
            request.iv,
            raw_data=request.raw_data,
            signature=request.signature,
        )
        data = struct_pb2.Struct()
        data.update(opened.data)
        return pb.DecryptUserDataResponse(
            data=data, watermark_time=timestamp_pb2.Timestamp(seconds=opened.timestamp)
        )

    async def GetPhoneNumber(
        self, request: pb.GetPhoneNumberRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetPhoneNumberResponse:
        number = await self._mini.phone_number(
            request.app_id, request.code, deadline=deadline_of(context)
        )
        return pb.GetPhoneNumberResponse(
            phone_number=number.phone_number,
            pure_phone_number=number.pure_phone_number,
            country_code=number.country_code,
            watermark_time=timestamp_pb2.Timestamp(seconds=number.watermark_timestamp),
        )
