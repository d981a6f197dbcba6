"""SessionService through its gRPC stub, on two replicas sharing Redis, with a manual clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf import duration_pb2

from acme.wxplatform.v1 import session_service_pb2 as pb
from acme.wxplatform.v1 import session_service_pb2_grpc as pb_grpc
from tests.support import (
    TEAM_CREDENTIAL,
    app_table,
    bearer,
    error_info,
    make_settings,
    new_app_id,
    refused,
    running_stack,
)
from wxplatform.clock import ManualClock
from wxplatform.config import Settings

IDLE, ABSOLUTE = 600, 3600
AUTH = bearer(TEAM_CREDENTIAL)


@dataclass
class Env:
    settings: Settings
    clock: ManualClock
    app: str
    other_app: str
    replicas: list[pb_grpc.SessionServiceStub]
    redis: redis.Redis

    @property
    def stub(self) -> pb_grpc.SessionServiceStub:
        return self.replicas[0]

    async def create(self, openid: str = "oUser1", *, replica: int = 0, **fields: Any) -> Any:
        request = pb.CreateSessionRequest(app_id=fields.pop("app_id", self.app), openid=openid)
        for name, value in fields.items():
            if name == "attributes":
                request.attributes.update(value)
            elif name == "ttl":
                request.ttl.CopyFrom(duration_pb2.Duration(seconds=value))
            else:
                setattr(request, name, value)
        return await self.replicas[replica].CreateSession(request, metadata=AUTH)

    async def get(self, token: str, app: str | None = None) -> pb.Session:
        request = pb.GetSessionRequest(app_id=app or self.app, session_token=token)
        response: pb.GetSessionResponse = await self.stub.GetSession(request, metadata=AUTH)
        return response.session


@pytest.fixture
async def env(redis_client: redis.Redis) -> AsyncIterator[Env]:
    app, other = new_app_id(), new_app_id()
    sessions = {"idle_ttl_seconds": IDLE, "absolute_ttl_seconds": ABSOLUTE}
    settings = make_settings(app_table(app, sessions=sessions), app_table(other))
    clock = ManualClock()
    async with contextlib.AsyncExitStack() as stack:
        replicas = []
        for _ in range(2):
            running = await stack.enter_async_context(
                running_stack(settings, redis_client, clock=clock)
            )
            replicas.append(pb_grpc.SessionServiceStub(running.channel))
        yield Env(settings, clock, app, other, replicas, redis_client)


def seconds(stamp: Any) -> float:
    return float(stamp.seconds + stamp.nanos / 1e9)


async def test_a_created_session_is_found_by_its_token(env: Env) -> None:
    created = await env.create(
        "oUser1", unionid="uUnion1", attributes={"role": "buyer", "tier": "gold"}
    )
    assert len(created.session_token) >= 43  # 256 bits, URL-safe base64
    session = await env.get(created.session_token)
    assert session == created.session
    assert (session.app_id, session.openid, session.unionid) == (env.app, "oUser1", "uUnion1")
    assert dict(session.attributes) == {"role": "buyer", "tier": "gold"}
    assert session.session_id
    assert session.session_id not in created.session_token
    now = env.clock.now()
    assert seconds(session.create_time) == pytest.approx(now, abs=0.01)
    assert seconds(session.expire_time) == pytest.approx(now + IDLE, abs=0.01)
    assert seconds(session.absolute_expire_time) == pytest.approx(now + ABSOLUTE, abs=0.01)


async def test_a_session_unused_for_its_idle_ttl_expires(env: Env) -> None:
    token = (await env.create()).session_token
    env.clock.advance(IDLE - 1)
    await env.get(token)  # reading does not extend it
    env.clock.advance(2)
    error = await refused(env.get(token))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error)[0] == "SESSION_NOT_FOUND"


async def test_refreshing_slides_the_expiry_but_never_past_the_cap(env: Env) -> None:
    token = (await env.create()).session_token
    refresh = pb.RefreshSessionRequest(app_id=env.app, session_token=token)
    for _ in range(ABSOLUTE // (IDLE - 100)):
        env.clock.advance(IDLE - 100)
        session = (await env.replicas[1].RefreshSession(refresh, metadata=AUTH)).session
        expected = min(env.clock.now() + IDLE, seconds(session.absolute_expire_time))
        assert seconds(session.expire_time) == pytest.approx(expected, abs=0.01)
    env.clock.advance(seconds(session.absolute_expire_time) - env.clock.now() + 1)
    error = await refused(env.replicas[1].RefreshSession(refresh, metadata=AUTH))
    assert error_info(error)[0] == "SESSION_NOT_FOUND"


async def test_a_shorter_ttl_may_be_asked_for_but_not_a_longer_one(env: Env) -> None:
    token = (await env.create(ttl=60)).session_token
    assert seconds((await env.get(token)).expire_time) == pytest.approx(env.clock.now() + 60, 0.01)
    error = await refused(env.create(ttl=IDLE + 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ttl" in (error.details() or "")


async def test_revoking_a_session_ends_it_everywhere(env: Env) -> None:
    token = (await env.create()).session_token
    revoke = pb.RevokeSessionRequest(app_id=env.app, session_token=token)
    assert (await env.replicas[1].RevokeSession(revoke, metadata=AUTH)).revoked
    assert error_info(await refused(env.get(token)))[0] == "SESSION_NOT_FOUND"
    assert not (await env.stub.RevokeSession(revoke, metadata=AUTH)).revoked  # no error


async def test_revoking_a_user_ends_their_sessions_made_on_any_replica(env: Env) -> None:
    mine = [(await env.create("oUserA", replica=i % 2)).session_token for i in range(3)]
    other = (await env.create("oUserB")).session_token
    expired = (await env.create("oUserA", ttl=1)).session_token
    env.clock.advance(2)
    request = pb.RevokeUserSessionsRequest(app_id=env.app, openid="oUserA")
    assert (await env.replicas[1].RevokeUserSessions(request, metadata=AUTH)).revoked_count == 3
    for token in [*mine, expired]:
        assert error_info(await refused(env.get(token)))[0] == "SESSION_NOT_FOUND"
    assert (await env.get(other)).openid == "oUserB"
    assert (await env.stub.RevokeUserSessions(request, metadata=AUTH)).revoked_count == 0


async def test_a_token_of_one_app_is_nothing_to_another(env: Env) -> None:
    token = (await env.create()).session_token
    error = await refused(env.get(token, app=env.other_app))
    assert error_info(error)[0] == "SESSION_NOT_FOUND"
    revoke = pb.RevokeSessionRequest(app_id=env.other_app, session_token=token)
    assert not (await env.stub.RevokeSession(revoke, metadata=AUTH)).revoked
    assert (await env.get(token)).openid == "oUser1"


async def test_unknown_expired_and_revoked_tokens_look_the_same(env: Env) -> None:
    expired = (await env.create(ttl=1)).session_token
    revoked = (await env.create()).session_token
    await env.stub.RevokeSession(
        pb.RevokeSessionRequest(app_id=env.app, session_token=revoked), metadata=AUTH
    )
    env.clock.advance(2)
    answers = set()
    for token in (expired, revoked, "A" * 43, "not a token", expired[:-1]):
        error = await refused(env.get(token))
        reason, metadata = error_info(error)
        answers.add((error.code(), error.details(), reason, tuple(sorted(metadata.items()))))
    assert len(answers) == 1


async def test_bad_requests_name_each_field(env: Env) -> None:
    error = await refused(env.create("", attributes={f"k{i}": "v" for i in range(33)}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "openid" in (error.details() or "")
    assert "attributes" in (error.details() or "")
    error = await refused(env.create("oUser1", attributes={"big": "x" * 5000}))
    assert "4096 bytes" in (error.details() or "")
    error = await refused(env.create("oUser1", attributes={"bad key": "v"}))
    assert "key must be" in (error.details() or "")
    empty = pb.GetSessionRequest(app_id=env.app, session_token="")
    assert (await refused(env.stub.GetSession(empty, metadata=AUTH))).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


async def everything_stored(client: redis.Redis, app_id: str) -> bytes:
    """Every key of the app, and every value in them, as one blob."""
    stored = b""
    async for key in client.scan_iter(match=f"*{{{app_id}}}*"):
        stored += key
        kind = await client.type(key)
        if kind == b"hash":
            fields = cast(dict[bytes, bytes], await client.hgetall(key))
            stored += b"".join(k + v for k, v in fields.items())
        elif kind == b"set":
            stored += b"".join(cast(set[bytes], await client.smembers(key)))
        elif kind == b"stream":
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(key))
            stored += b"".join(k + v for _, entry in entries for k, v in entry.items())
    return stored


async def test_redis_holds_no_session_token(env: Env) -> None:
    tokens = [(await env.create(f"oUser{i}")).session_token for i in range(3)]
    await env.stub.RefreshSession(
        pb.RefreshSessionRequest(app_id=env.app, session_token=tokens[0]), metadata=AUTH
    )
    stored = await everything_stored(env.redis, env.app)
    assert b"oUser1" in stored  # the scan saw the sessions
    for token in tokens:
        assert token.encode() not in stored


# --- WatchSessionEvents ------------------------------------------------------------


class Watcher:
    """One WatchSessionEvents call, read in the background."""

    def __init__(self, stub: pb_grpc.SessionServiceStub, app: str, after: str = "") -> None:
        request = pb.WatchSessionEventsRequest(app_id=app, after_event_id=after)
        self.call = stub.WatchSessionEvents(request, metadata=AUTH)
        self.events: list[pb.SessionEvent] = []
        self.position = ""
        self._changed = asyncio.Event()
        self.started = asyncio.Event()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            self.events.extend(response.events)
            self.position = response.last_event_id
            self.started.set()
            self._changed.set()

    async def until(self, count: int) -> list[pb.SessionEvent]:
        async with asyncio.timeout(30):
            while len(self.events) < count:
                self._changed.clear()
                if self.task.done():
                    self.task.result()  # the stream's error, if it ended
                    raise AssertionError("the watch ended early")
                await asyncio.wait(
                    [asyncio.ensure_future(self._changed.wait()), self.task],
                    return_when=asyncio.FIRST_COMPLETED,
                )
        return self.events

    async def stop(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self.task


def kinds(events: list[pb.SessionEvent]) -> list[tuple[int, str]]:
    return [(e.type, e.openid) for e in events]


async def test_a_watcher_sees_every_change_in_order_and_resumes_without_gap_or_repeat(
    env: Env,
) -> None:
    watcher = Watcher(env.replicas[0], env.app)
    async with asyncio.timeout(30):
        await watcher.started.wait()  # live from its first (empty) response
    first = await env.create("oW1", replica=1)
    second = await env.create("oW2")
    await env.replicas[1].RevokeSession(
        pb.RevokeSessionRequest(app_id=env.app, session_token=first.session_token), metadata=AUTH
    )
    seen = await watcher.until(3)
    created, revoked = pb.SESSION_EVENT_TYPE_CREATED, pb.SESSION_EVENT_TYPE_REVOKED
    assert kinds(seen) == [(created, "oW1"), (created, "oW2"), (revoked, "oW1")]
    assert seen[2].session_id == first.session.session_id
    position = watcher.position
    assert position == seen[-1].event_id
    await watcher.stop()

    # While nobody watches: a revocation of all of oW2's sessions, and a new one.
    await env.stub.RevokeUserSessions(
        pb.RevokeUserSessionsRequest(app_id=env.app, openid="oW2"), metadata=AUTH
    )
    await env.create("oW3")
    resumed = Watcher(env.replicas[1], env.app, after=position)
    assert kinds(await resumed.until(2)) == [(revoked, "oW2"), (created, "oW3")]
    assert resumed.events[0].session_id == second.session.session_id
    await env.create("oW4")
    assert kinds(await resumed.until(3))[2] == (created, "oW4")
    await resumed.stop()


async def test_a_watch_resumes_across_a_core_restart(redis_client: redis.Redis) -> None:
    app = new_app_id()
    settings = make_settings(app_table(app))
    async with running_stack(settings, redis_client) as first:
        stub = pb_grpc.SessionServiceStub(first.channel)
        watcher = Watcher(stub, app)
        await watcher.started.wait()
        await stub.CreateSession(pb.CreateSessionRequest(app_id=app, openid="oR1"), metadata=AUTH)
        await watcher.until(1)
        position = watcher.position
        await first.core.stop()  # the watch ends with UNAVAILABLE: resume elsewhere
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await watcher.task
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    async with running_stack(settings, redis_client) as second:
        stub = pb_grpc.SessionServiceStub(second.channel)
        await stub.CreateSession(pb.CreateSessionRequest(app_id=app, openid="oR2"), metadata=AUTH)
        resumed = Watcher(stub, app, after=position)
        assert [e.openid for e in await resumed.until(1)] == ["oR2"]
        await resumed.stop()


async def test_resuming_after_trimmed_events_says_so(env: Env) -> None:
    watcher = Watcher(env.stub, env.app)
    await watcher.started.wait()
    await env.create("oT1")
    position = (await watcher.until(1))[0].event_id
    await watcher.stop()
    for i in range(3):
        await env.create(f"oT{i + 2}")
    # Retention trims the oldest events (here at once, exactly).
    await env.redis.xtrim(f"wxp:{{{env.app}}}:session:events", maxlen=1, approximate=False)
    late = Watcher(env.stub, env.app, after=position)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await late.task
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_info(caught.value)[0] == "SESSION_EVENTS_EXPIRED"
    bad = Watcher(env.stub, env.app, after="yesterday")
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await bad.task
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
