"""`OAuthService`: web login for official accounts, and mini-program identity."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from acme.wxplatform.v1 import oauth_service_pb2 as pb
from acme.wxplatform.v1 import oauth_service_pb2_grpc as pb_grpc
from wxplatform.core.servicers.deadlines import deadline_of
from wxplatform.core.servicers.sessions import session_message
from wxplatform.core.services.mini_program import MiniProgramIdentity
from wxplatform.core.services.web_login import WebLogin

_SCOPES = {
    pb.AUTHORIZE_SCOPE_BASE: "snsapi_base",
    pb.AUTHORIZE_SCOPE_USERINFO: "snsapi_userinfo",
    pb.AUTHORIZE_SCOPE_LOGIN: "snsapi_login",
}
_SCOPE_VALUES = {name: value for value, name in _SCOPES.items()}

__all__ = ["OAuthServicer"]


def _scope(request: pb.BuildAuthorizeUrlRequest) -> str:
    """The scope asked for; unset is a website's login or an official account's base."""
    if request.scope == pb.AUTHORIZE_SCOPE_UNSPECIFIED:
        return ""  # the service picks the app's default
    return _SCOPES.get(request.scope, "unknown")


class OAuthServicer(pb_grpc.OAuthServiceServicer):
    """Maps the OAuthService RPCs onto the identity services."""

    def __init__(self, web: WebLogin, mini_programs: MiniProgramIdentity) -> None:
        self._web = web
        self._mini = mini_programs

    async def BuildAuthorizeUrl(
        self, request: pb.BuildAuthorizeUrlRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.BuildAuthorizeUrlResponse:
        built = await self._web.build_authorize_url(
            request.app_id,
            _scope(request),
            request.return_url,
            force_popup=request.force_popup,
            binding=request.browser_binding,
        )
        expiry = timestamp_pb2.Timestamp()
        expiry.FromNanoseconds(int(built.expires_at * 1e9))
        return pb.BuildAuthorizeUrlResponse(
            authorize_url=built.url, state=built.state, expire_time=expiry
        )

    async def ExchangeCode(
        self, request: pb.ExchangeCodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ExchangeCodeResponse:
        identity = await self._web.exchange_code(
            request.app_id,
            request.code,
            request.state,
            binding=request.browser_binding,
            deadline=deadline_of(context),
        )
        response = pb.ExchangeCodeResponse(
            openid=identity.openid,
            unionid=identity.unionid,
            scope=_SCOPE_VALUES.get(identity.scope, pb.AUTHORIZE_SCOPE_BASE),
            snapshot_user=identity.snapshot_user,
            return_url=identity.return_url,
        )
        if identity.created is not None:
            response.session_token = identity.created.token
            response.session.CopyFrom(session_message(request.app_id, identity.created.session))
        return response

    async def GetUserInfo(
        self, request: pb.GetUserInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetUserInfoResponse:
        profile = await self._web.user_info(
            request.app_id, request.openid, request.lang, deadline=deadline_of(context)
        )
        return pb.GetUserInfoResponse(
            openid=profile.openid,
            nickname=profile.nickname,
            head_image_url=profile.head_image_url,
            unionid=profile.unionid,
            privileges=profile.privileges,
        )

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
