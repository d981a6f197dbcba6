"""`SessionService`: platform sessions and their event stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from acme.wxplatform.v1 import session_service_pb2 as pb
from acme.wxplatform.v1 import session_service_pb2_grpc as pb_grpc
from wxplatform.core.model import SessionChange, StoredSession
from wxplatform.core.services.sessions import SessionService

__all__ = ["SessionServicer", "session_message"]


def _time(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def session_message(app_id: str, session: StoredSession) -> pb.Session:
    """The API form of a stored session."""
    return pb.Session(
        session_id=session.session_id,
        app_id=app_id,
        openid=session.openid,
        unionid=session.unionid,
        attributes=session.attributes,
        create_time=_time(session.created_ms),
        expire_time=_time(session.expires_ms),
        absolute_expire_time=_time(session.absolute_ms),
    )


def _event(change: SessionChange) -> pb.SessionEvent:
    return pb.SessionEvent(
        event_id=change.event_id,
        type=pb.SESSION_EVENT_TYPE_REVOKED if change.revoked else pb.SESSION_EVENT_TYPE_CREATED,
        session_id=change.session_id,
        openid=change.openid,
        time=_time(change.at_ms),
    )


class SessionServicer(pb_grpc.SessionServiceServicer):
    """Maps the SessionService RPCs onto `SessionService`."""

    def __init__(self, service: SessionService) -> None:
        self._service = service

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateSessionResponse:
        ttl = request.ttl.ToTimedelta().total_seconds() if request.HasField("ttl") else None
        created = await self._service.create(
            request.app_id,
            request.openid,
            unionid=request.unionid,
            attributes=request.attributes,
            ttl_seconds=ttl,
        )
        return pb.CreateSessionResponse(
            session_token=created.token, session=session_message(request.app_id, created.session)
        )

    async def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetSessionResponse:
        session = await self._service.get(request.app_id, request.session_token)
        return pb.GetSessionResponse(session=session_message(request.app_id, session))

    async def RefreshSession(
        self, request: pb.RefreshSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RefreshSessionResponse:
        session = await self._service.refresh(request.app_id, request.session_token)
        return pb.RefreshSessionResponse(session=session_message(request.app_id, session))

    async def RevokeSession(
        self, request: pb.RevokeSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RevokeSessionResponse:
        revoked = await self._service.revoke(request.app_id, request.session_token)
        return pb.RevokeSessionResponse(revoked=revoked)

    async def RevokeUserSessions(
        self, request: pb.RevokeUserSessionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RevokeUserSessionsResponse:
        count = await self._service.revoke_user(request.app_id, request.openid)
        return pb.RevokeUserSessionsResponse(revoked_count=count)

    async def WatchSessionEvents(
        self, request: pb.WatchSessionEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchSessionEventsResponse]:
        async for changes, position in self._service.watch(request.app_id, request.after_event_id):
            yield pb.WatchSessionEventsResponse(
                events=[_event(c) for c in changes], last_event_id=position
            )
