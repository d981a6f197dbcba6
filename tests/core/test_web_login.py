"""Web login (OAuthService) through its gRPC stub; the simulator's consent page over HTTP."""

from __future__ import annotations

import hashlib
import re
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
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

AUTH = bearer(TEAM_CREDENTIAL)
EDGE = "https://edge.example.test"
SHOP = "https://shop.example.test/app/"
BASE, USERINFO = pb.AUTHORIZE_SCOPE_BASE, pb.AUTHORIZE_SCOPE_USERINFO


def oauth_table(app_id: str) -> dict[str, Any]:
    return app_table(app_id, oauth={"public_base_url": EDGE, "return_urls": [SHOP]})


@dataclass
class Browser:
    """A browser's binding: the value only it holds, as core sees it (its hash)."""

    binding: str = ""

    def __post_init__(self) -> None:
        self.binding = hashlib.sha256(secrets.token_bytes(32)).hexdigest()


@dataclass
class Env:
    sim: WeChatSimulator
    clock: ManualClock
    app: str
    other_app: str
    oauth: pb_grpc.OAuthServiceStub
    sessions: spb_grpc.SessionServiceStub
    redis: redis.Redis

    async def authorize(
        self,
        browser: Browser,
        scope: pb.AuthorizeScope.ValueType = BASE,
        return_url: str = SHOP + "page",
        **extra: Any,
    ) -> pb.BuildAuthorizeUrlResponse:
        request = pb.BuildAuthorizeUrlRequest(
            app_id=extra.pop("app_id", self.app),
            scope=scope,
            return_url=return_url,
            browser_binding=browser.binding,
            **extra,
        )
        response: pb.BuildAuthorizeUrlResponse = await self.oauth.BuildAuthorizeUrl(
            request, metadata=AUTH
        )
        return response

    async def consent(self, url: str, decision: str = "allow", openid: str = "") -> dict[str, str]:
        """What the browser comes back to the callback with, after the WeChat page."""
        async with httpx.AsyncClient() as http:
            page = await http.get(url.split("#", 1)[0])
            if page.status_code == 200:  # the consent page: answer its form
                form = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
                form.update(decision=decision, openid=openid or form["openid"])
                page = await http.post(str(page.url), data=form)
            assert page.status_code == 302, page.text
            location = page.headers["location"]
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))

    async def exchange(self, browser: Browser, back: dict[str, str], **extra: Any) -> Any:
        request = pb.ExchangeCodeRequest(
            app_id=extra.pop("app_id", self.app),
            code=back.get("code", ""),
            state=back.get("state", ""),
            browser_binding=browser.binding,
        )
        return await self.oauth.ExchangeCode(request, metadata=AUTH)

    async def login(
        self, browser: Browser, scope: pb.AuthorizeScope.ValueType = BASE, openid: str = ""
    ) -> tuple[Any, dict[str, str]]:
        built = await self.authorize(browser, scope)
        back = await self.consent(built.authorize_url, openid=openid)
        return await self.exchange(browser, back), back

    def exchanges(self) -> int:
        return len(self.sim.requests("/sns/oauth2/access_token"))


@pytest.fixture
async def env(redis_client: redis.Redis) -> AsyncIterator[Env]:
    app, other = new_app_id("wxoa"), new_app_id("wxoa")
    settings = make_settings(oauth_table(app), oauth_table(other))
    clock = ManualClock()
    async with simulated_stack(settings, redis_client, clock=clock) as (sim, running):
        yield Env(
            sim,
            clock,
            app,
            other,
            pb_grpc.OAuthServiceStub(running.channel),
            spb_grpc.SessionServiceStub(running.channel),
            redis_client,
        )


async def test_the_authorize_url_is_the_one_wechat_expects(env: Env) -> None:
    built = await env.authorize(Browser(), USERINFO, force_popup=True)
    redirect = urllib.parse.quote(f"{EDGE}/oauth/{env.app}/callback", safe="")
    assert re.fullmatch(r"[A-Za-z0-9]{32}", built.state)
    assert built.authorize_url == (
        f"{env.sim.base_url}/connect/oauth2/authorize?appid={env.app}&redirect_uri={redirect}"
        f"&response_type=code&scope=snsapi_userinfo&state={built.state}&forcePopup=true"
        "#wechat_redirect"
    )
    assert built.expire_time.seconds == pytest.approx(env.clock.now() + 600, abs=1)


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/app/",
        "//evil.example/app/",
        "javascript:alert(1)",
        "http://shop.example.test/app/",  # another scheme
        "https://shop.example.test:8443/app/",  # another port
        "https://shop.example.test/application",  # not at a path boundary
        "https://shop.example.test/app/../admin",
        "https://shop.example.test/app/%2e%2e/admin",
        "https://shop.example.test/app/%2F%2Fevil",
        "https://shop.example.test\\@evil.example/app/",
        "https://user@shop.example.test/app/",
        "https://shop.example.test.evil.example/app/",
        "HTTPS://SHOP.EXAMPLE.TEST/APP/",  # the path's case matters
        "https://shop.example.test/app/\n",
        "",
    ],
)
async def test_return_urls_off_the_allow_list_are_refused(env: Env, url: str) -> None:
    error = await refused(env.authorize(Browser(), return_url=url))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error)[0] == "RETURN_URL_NOT_ALLOWED"


async def test_allowed_return_urls_pass(env: Env) -> None:
    for url in (SHOP, SHOP + "a/b?x=1", "HTTPS://Shop.Example.Test/app/c", SHOP + "#top"):
        assert (await env.authorize(Browser(), return_url=url)).state


async def test_a_silent_login_gives_a_session_for_the_user(env: Env) -> None:
    env.sim.set_browser_user(env.app, "oWebUser1")
    exchanged, _ = await env.login(Browser())
    assert (exchanged.openid, exchanged.scope, exchanged.snapshot_user) == (
        "oWebUser1",
        BASE,
        False,
    )
    assert exchanged.return_url == SHOP + "page"
    found = await env.sessions.GetSession(
        spb.GetSessionRequest(app_id=env.app, session_token=exchanged.session_token),
        metadata=AUTH,
    )
    assert found.session.openid == "oWebUser1"


async def test_consent_brings_the_profile(env: Env) -> None:
    env.sim.set_profile(env.app, "oWebUser2", nickname="Ling", unionid="uUnionWeb2")
    exchanged, _ = await env.login(Browser(), USERINFO, openid="oWebUser2")
    assert (exchanged.openid, exchanged.unionid) == ("oWebUser2", "uUnionWeb2")
    info = await env.oauth.GetUserInfo(
        pb.GetUserInfoRequest(app_id=env.app, openid="oWebUser2"), metadata=AUTH
    )
    assert (info.nickname, info.unionid) == ("Ling", "uUnionWeb2")


async def test_a_refused_consent_brings_no_code(env: Env) -> None:
    built = await env.authorize(Browser(), USERINFO)
    back = await env.consent(built.authorize_url, decision="deny")
    assert "code" not in back
    assert back["state"] == built.state


async def test_a_reload_of_the_callback_gets_the_same_user_without_a_second_exchange(
    env: Env,
) -> None:
    browser = Browser()
    first, back = await env.login(browser)
    again = await env.exchange(browser, back)
    assert again.openid == first.openid
    assert again.session_token != first.session_token
    assert env.exchanges() == 1
    stranger = await refused(env.exchange(Browser(), back))
    assert error_info(stranger)[0] == "OAUTH_STATE_INVALID"


async def test_states_that_are_replayed_foreign_forged_or_of_another_browser_fail(
    env: Env,
) -> None:
    browser = Browser()
    _, back = await env.login(browser)
    # The same state with a fresh code: spent.
    built_again = await env.authorize(browser)
    fresh = await env.consent(built_again.authorize_url)
    replayed = await refused(env.exchange(browser, {"code": fresh["code"], "state": back["state"]}))
    assert error_info(replayed)[0] == "OAUTH_STATE_INVALID"
    # Another app's state, and a made-up one.
    other = await env.authorize(browser, app_id=env.other_app)
    foreign = await refused(env.exchange(browser, {"code": fresh["code"], "state": other.state}))
    assert error_info(foreign)[0] == "OAUTH_STATE_INVALID"
    forged = await refused(env.exchange(browser, {"code": fresh["code"], "state": "A" * 32}))
    assert error_info(forged)[0] == "OAUTH_STATE_INVALID"
    # An attacker's state in a victim's browser fails, and costs the flow nothing.
    victim = Browser()
    attacked = await refused(env.exchange(victim, fresh))
    assert error_info(attacked)[0] == "OAUTH_STATE_INVALID"
    assert (await env.exchange(browser, fresh)).openid
    assert env.exchanges() == 2  # none of the refusals reached WeChat


async def test_expired_states_and_codes_fail(env: Env) -> None:
    browser = Browser()
    built = await env.authorize(browser)
    back = await env.consent(built.authorize_url)
    env.clock.advance(301)  # the code's 5 minutes
    expired = await refused(env.exchange(browser, back))
    assert error_info(expired)[0] == "AUTH_CODE_INVALID"
    assert error_info(expired)[1]["errcode"] == "42003"
    late = await env.authorize(browser)
    late_back = await env.consent(late.authorize_url)
    env.clock.advance(601)  # the state's 10 minutes
    stale = await refused(env.exchange(browser, late_back))
    assert error_info(stale)[0] == "OAUTH_STATE_INVALID"


async def test_a_snapshot_user_gets_no_session(env: Env) -> None:
    env.sim.set_profile(env.app, "oSnapshot1", snapshot=True)
    exchanged, _ = await env.login(Browser(), USERINFO, openid="oSnapshot1")
    assert exchanged.snapshot_user
    assert not exchanged.session_token


async def test_wechat_unreachable_leaves_the_callback_retryable(env: Env) -> None:
    browser = Browser()
    built = await env.authorize(browser)
    back = await env.consent(built.authorize_url)
    env.sim.add_fault("/sns/oauth2/access_token", errcode=-1, times=20)  # busy throughout
    down = await refused(env.exchange(browser, back))
    assert down.code() == grpc.StatusCode.UNAVAILABLE
    env.sim.clear_faults()
    assert (await env.exchange(browser, back)).openid


async def test_user_info_comes_from_the_follower_list_or_the_stored_profile(env: Env) -> None:
    env.sim.set_profile(env.app, "oFollower1", nickname="Follows")
    env.sim.set_user(env.app, "oFollower1", follows=True)
    request = pb.GetUserInfoRequest(app_id=env.app, openid="oFollower1")
    assert (await env.oauth.GetUserInfo(request, metadata=AUTH)).nickname == "Follows"

    unknown = pb.GetUserInfoRequest(app_id=env.app, openid="oNobody1")
    nobody = await refused(env.oauth.GetUserInfo(unknown, metadata=AUTH))
    assert nobody.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(nobody)[0] == "USER_AUTHORIZATION_REQUIRED"
    await env.login(Browser(), BASE, openid="")  # the default browser user, base scope only
    base_only = pb.GetUserInfoRequest(app_id=env.app, openid="oBrowserUser000000000001")
    assert error_info(await refused(env.oauth.GetUserInfo(base_only, metadata=AUTH)))[0] == (
        "USER_AUTHORIZATION_REQUIRED"
    )


async def test_a_stale_profile_is_refreshed_with_the_users_tokens(env: Env) -> None:
    env.sim.set_profile(env.app, "oWebUser3", nickname="Before")
    await env.login(Browser(), USERINFO, openid="oWebUser3")
    env.sim.set_profile(env.app, "oWebUser3", nickname="After")
    request = pb.GetUserInfoRequest(app_id=env.app, openid="oWebUser3")
    assert (await env.oauth.GetUserInfo(request, metadata=AUTH)).nickname == "Before"  # fresh
    env.clock.advance(7300)  # the profile is stale and the access token expired
    assert (await env.oauth.GetUserInfo(request, metadata=AUTH)).nickname == "After"
    assert len(env.sim.requests("/sns/oauth2/refresh_token")) == 1
    env.clock.advance(31 * 86400)  # past the refresh token's 30 days
    gone = await refused(env.oauth.GetUserInfo(request, metadata=AUTH))
    assert error_info(gone)[0] == "USER_AUTHORIZATION_REQUIRED"


async def test_redis_holds_no_oauth_token_in_the_clear(env: Env) -> None:
    await env.login(Browser(), USERINFO, openid="oWebUser4")
    stored = await everything_stored(env.redis, env.app)
    assert b"oWebUser4" in stored
    tokens = [request["query"]["access_token"] for request in env.sim.requests("/sns/userinfo")]
    assert tokens
    assert all(isinstance(token, str) and len(token) > 20 for token in tokens)
    for token in tokens:
        assert token.encode() not in stored


async def test_a_website_app_logs_in_through_the_qr_page(redis_client: redis.Redis) -> None:
    website = new_app_id("wxweb")
    table = app_table(
        website,
        kind="website",
        token="",
        auto_reply=[],
        default_reply=None,
        subscribe_reply=None,
        oauth={"public_base_url": EDGE, "return_urls": [SHOP]},
    )
    table.pop("token")
    settings = make_settings(table)
    async with simulated_stack(settings, redis_client) as (sim, running):
        env = Env(
            sim,
            ManualClock(),
            website,
            website,
            pb_grpc.OAuthServiceStub(running.channel),
            spb_grpc.SessionServiceStub(running.channel),
            redis_client,
        )
        sim.set_profile(website, "oWebsite1", nickname="Desk", unionid="uDesk1")
        browser = Browser()
        built = await env.authorize(browser, pb.AUTHORIZE_SCOPE_UNSPECIFIED)
        assert built.authorize_url.startswith(f"{sim.base_url}/connect/qrconnect?appid={website}&")
        assert "&scope=snsapi_login&" in built.authorize_url
        back = await env.consent(built.authorize_url, openid="oWebsite1")
        exchanged = await env.exchange(browser, back)
        assert (exchanged.openid, exchanged.unionid) == ("oWebsite1", "uDesk1")
        assert exchanged.scope == pb.AUTHORIZE_SCOPE_LOGIN
        info = await env.oauth.GetUserInfo(
            pb.GetUserInfoRequest(app_id=website, openid="oWebsite1"), metadata=AUTH
        )
        assert info.nickname == "Desk"
        wrong = await refused(env.authorize(Browser(), USERINFO))
        assert wrong.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not sim.requests("/cgi-bin/token")
        assert not sim.requests("/cgi-bin/stable_token")
