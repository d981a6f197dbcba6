"""Mini-program identity through the gRPC stub, against the simulator as WeChat."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from acme.wxplatform.v1 import oauth_service_pb2 as pb
from acme.wxplatform.v1 import oauth_service_pb2_grpc as pb_grpc
from acme.wxplatform.v1 import session_service_pb2 as spb
from acme.wxplatform.v1 import session_service_pb2_grpc as spb_grpc
from tests.core.test_sessions import everything_stored
from tests.support import (
    TEAM_CREDENTIAL,
    app_table,
    bearer,
    error_info,
    make_settings,
    new_app_id,
    refused,
    simulated_stack,
)
from wxplatform.clock import ManualClock
from wxplatform.sim import WeChatSimulator
from wxplatform.wechat.user_data import encrypt_user_data

AUTH = bearer(TEAM_CREDENTIAL)
PROFILE = {"nickName": "Band", "gender": 1, "city": "Guangzhou"}


@dataclass
class Env:
    sim: WeChatSimulator
    clock: ManualClock
    mini: str
    other_mini: str
    official: str
    oauth: pb_grpc.OAuthServiceStub
    sessions: spb_grpc.SessionServiceStub
    redis: redis.Redis

    async def login(self, openid: str = "oMini1", **extra: Any) -> Any:
        code = self.sim.login_code(self.mini, openid, extra.pop("unionid", ""))
        request = pb.Code2SessionRequest(app_id=self.mini, js_code=code, **extra)
        return await self.oauth.Code2Session(request, metadata=AUTH)

    async def decrypt(self, token: str, data: Any, app: str | None = None, **extra: Any) -> Any:
        request = pb.DecryptUserDataRequest(
            app_id=app or self.mini,
            session_token=token,
            encrypted_data=data.encrypted_data,
            iv=data.iv,
            **extra,
        )
        return await self.oauth.DecryptUserData(request, metadata=AUTH)


def mini_table(app_id: str) -> dict[str, Any]:
    return app_table(app_id, kind="mini_program", auto_reply=[], default_reply=None)


@pytest.fixture
async def env(redis_client: redis.Redis) -> AsyncIterator[Env]:
    mini, other, official = new_app_id("wxmini"), new_app_id("wxmini"), new_app_id("wxoa")
    settings = make_settings(mini_table(mini), mini_table(other), app_table(official))
    clock = ManualClock()
    async with simulated_stack(settings, redis_client, clock=clock) as (sim, running):
        yield Env(
            sim,
            clock,
            mini,
            other,
            official,
            pb_grpc.OAuthServiceStub(running.channel),
            spb_grpc.SessionServiceStub(running.channel),
            redis_client,
        )


async def test_a_login_makes_a_platform_session_and_keeps_the_session_key(env: Env) -> None:
    login = await env.login("oMini1", unionid="uUnion1", attributes={"channel": "scan"})
    assert (login.openid, login.unionid) == ("oMini1", "uUnion1")
    found = await env.sessions.GetSession(
        spb.GetSessionRequest(app_id=env.mini, session_token=login.session_token), metadata=AUTH
    )
    assert found.session == login.session
    assert dict(found.session.attributes) == {"channel": "scan"}
    assert "session_key" not in str(login)  # nothing of it in the answer
    stored = await everything_stored(env.redis, env.mini)
    assert env.sim.state.logins.session_key(env.mini, "oMini1").encode() not in stored
    assert login.session_token.encode() not in stored


async def test_codes_are_single_use_and_expire(env: Env) -> None:
    code = env.sim.login_code(env.mini, "oMini2")
    request = pb.Code2SessionRequest(app_id=env.mini, js_code=code)
    await env.oauth.Code2Session(request, metadata=AUTH)
    again = await refused(env.oauth.Code2Session(request, metadata=AUTH))
    assert again.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(again)[0] == "AUTH_CODE_INVALID"  # 40163
    late = pb.Code2SessionRequest(app_id=env.mini, js_code=env.sim.login_code(env.mini, "oMini2"))
    env.clock.advance(301)
    expired = await refused(env.oauth.Code2Session(late, metadata=AUTH))
    assert error_info(expired)[0] == "AUTH_CODE_INVALID"  # 40029
    assert error_info(expired)[1]["errcode"] == "40029"


async def test_blocked_users_and_rate_limits_are_typed(env: Env) -> None:
    env.sim.block_login(env.mini, "oRisky")
    blocked = await refused(env.login("oRisky"))
    assert blocked.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(blocked)[0] == "USER_LOGIN_BLOCKED"
    env.sim.add_fault("/sns/jscode2session", errcode=45011)
    limited = await refused(env.login("oMini3"))
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(limited)[0] == "WECHAT_RATE_LIMITED"


async def test_login_is_for_mini_programs_and_checks_before_spending_the_code(env: Env) -> None:
    wrong_kind = await refused(
        env.oauth.Code2Session(
            pb.Code2SessionRequest(app_id=env.official, js_code="x"), metadata=AUTH
        )
    )
    assert wrong_kind.code() == grpc.StatusCode.FAILED_PRECONDITION
    code = env.sim.login_code(env.mini, "oMini4")
    bad = pb.Code2SessionRequest(app_id=env.mini, js_code=code, attributes={"bad key": "v"})
    assert (await refused(env.oauth.Code2Session(bad, metadata=AUTH))).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    good = pb.Code2SessionRequest(app_id=env.mini, js_code=code)
    assert (await env.oauth.Code2Session(good, metadata=AUTH)).openid == "oMini4"


async def test_open_data_is_decrypted_and_signed_data_checked(env: Env) -> None:
    login = await env.login("oMini5")
    data = env.sim.user_data(env.mini, "oMini5", PROFILE)
    opened = await env.decrypt(
        login.session_token, data, raw_data=data.raw_data, signature=data.signature
    )
    assert {k: opened.data[k] for k in PROFILE} == PROFILE
    assert opened.data["watermark"]["appid"] == env.mini
    assert opened.watermark_time.seconds == int(env.clock.now())
    forged = await refused(
        env.decrypt(login.session_token, data, raw_data=data.raw_data, signature="0" * 40)
    )
    assert error_info(forged)[0] == "USER_DATA_INVALID"
    assert "signature" in (forged.details() or "")
    half = await refused(env.decrypt(login.session_token, data, raw_data=data.raw_data))
    assert half.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_data_made_before_a_later_login_says_so(env: Env) -> None:
    first = await env.login("oMini6")
    stale = env.sim.user_data(env.mini, "oMini6", PROFILE)
    await env.login("oMini6")  # a new login: WeChat hands out a new session key
    error = await refused(env.decrypt(first.session_token, stale))
    assert error_info(error)[0] == "USER_DATA_INVALID"
    assert "later login replaced" in (error.details() or "")
    fresh = env.sim.user_data(env.mini, "oMini6", PROFILE)
    assert (await env.decrypt(first.session_token, fresh)).data["nickName"] == "Band"


async def test_malformed_or_foreign_data_is_refused(env: Env) -> None:
    login = await env.login("oMini7")
    data = env.sim.user_data(env.mini, "oMini7", PROFILE)
    cases = [
        (data.encrypted_data, "AAAA", "iv must be 16 bytes"),
        ("not base64!", data.iv, "not base64"),
        (base64.b64encode(b"x" * 20).decode(), data.iv, "whole AES blocks"),
        (data.encrypted_data[:-24] + data.encrypted_data[-2:], data.iv, ""),
    ]
    for encrypted, iv, problem in cases:
        request = pb.DecryptUserDataRequest(
            app_id=env.mini, session_token=login.session_token, encrypted_data=encrypted, iv=iv
        )
        error = await refused(env.oauth.DecryptUserData(request, metadata=AUTH))
        assert error_info(error)[0] == "USER_DATA_INVALID", problem
        assert problem in (error.details() or ""), problem
    # Another mini program's user, logged in there: its watermark names the other app.
    env.sim.login_code(env.other_mini, "oMini7")
    other_code = env.sim.login_code(env.other_mini, "oMini7")
    other = await env.oauth.Code2Session(
        pb.Code2SessionRequest(app_id=env.other_mini, js_code=other_code), metadata=AUTH
    )
    theirs = env.sim.user_data(env.other_mini, "oMini7", PROFILE)
    assert (await env.decrypt(other.session_token, theirs, app=env.other_mini)).data
    foreign = await refused(env.decrypt(login.session_token, theirs))
    assert error_info(foreign)[0] == "USER_DATA_INVALID"
    # Our user's own key, but a watermark of the other app (data lifted from there).
    key = env.sim.state.logins.session_key(env.mini, "oMini7")
    lifted = {**PROFILE, "watermark": {"appid": env.other_mini, "timestamp": 1}}
    vector = bytes(16)
    request = pb.DecryptUserDataRequest(
        app_id=env.mini,
        session_token=login.session_token,
        encrypted_data=encrypt_user_data(key, lifted, vector),
        iv=base64.b64encode(vector).decode(),
    )
    watermark = await refused(env.oauth.DecryptUserData(request, metadata=AUTH))
    assert "watermark names another app" in (watermark.details() or "")
    unknown = await refused(env.decrypt("A" * 43, data))
    assert error_info(unknown)[0] == "SESSION_NOT_FOUND"


async def test_a_session_made_without_a_login_has_no_session_key(env: Env) -> None:
    created = await env.sessions.CreateSession(
        spb.CreateSessionRequest(app_id=env.mini, openid="oNoLogin"), metadata=AUTH
    )
    await env.login("oMini8")
    data = env.sim.user_data(env.mini, "oMini8", PROFILE)
    error = await refused(env.decrypt(created.session_token, data))
    assert error_info(error)[0] == "USER_DATA_INVALID"
    assert "no mini-program login" in (error.details() or "")


async def test_phone_numbers_are_exchanged_once_with_the_central_token(env: Env) -> None:
    code = env.sim.phone_code(env.mini, "13800138000")
    request = pb.GetPhoneNumberRequest(app_id=env.mini, code=code)
    number = await env.oauth.GetPhoneNumber(request, metadata=AUTH)
    assert (number.phone_number, number.pure_phone_number, number.country_code) == (
        "13800138000",
        "13800138000",
        "86",
    )
    assert number.watermark_time.seconds == int(env.clock.now())
    again = await refused(env.oauth.GetPhoneNumber(request, metadata=AUTH))
    assert error_info(again)[0] == "AUTH_CODE_INVALID"
    foreign = pb.GetPhoneNumberRequest(
        app_id=env.mini, code=env.sim.phone_code(env.mini, "5550100", "1")
    )
    assert (await env.oauth.GetPhoneNumber(foreign, metadata=AUTH)).phone_number == "+15550100"
    invalid = pb.GetPhoneNumberRequest(app_id=env.mini, code="no-such-code")
    assert (
        error_info(await refused(env.oauth.GetPhoneNumber(invalid, metadata=AUTH)))[1]["errcode"]
        == "40029"
    )


async def test_a_phone_number_call_replaces_a_rejected_token_once(env: Env) -> None:
    env.sim.add_fault("/wxa/business/getuserphonenumber", errcode=40001)
    code = env.sim.phone_code(env.mini, "13900139000")
    number = await env.oauth.GetPhoneNumber(
        pb.GetPhoneNumberRequest(app_id=env.mini, code=code), metadata=AUTH
    )
    assert number.pure_phone_number == "13900139000"
    assert len(env.sim.requests("/wxa/business/getuserphonenumber")) == 2
