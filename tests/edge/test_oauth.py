"""Web login through the edge, over HTTP: a cookie-keeping client plays the browser."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from acme.wxplatform.v1 import session_service_pb2 as spb
from acme.wxplatform.v1 import session_service_pb2_grpc as spb_grpc
from tests.support import (
    TEAM_CREDENTIAL,
    Stack,
    app_table,
    bearer,
    make_settings,
    new_app_id,
    simulated_stack,
)
from wxplatform.sim import WeChatSimulator

PUBLIC = "https://login.example.test"  # the domain registered at WeChat
SHOP = "https://shop.example.test/app/"


@dataclass
class Env:
    sim: WeChatSimulator
    stack: Stack
    app: str
    secure_app: str

    def browser(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(follow_redirects=False, timeout=30)

    def to_edge(self, url: str) -> str:
        """A URL of the public domain, as it reaches this test's edge."""
        return url.replace(PUBLIC, self.stack.edge_url)

    async def start(
        self, browser: httpx.AsyncClient, scope: str = "base", return_url: str = SHOP + "page"
    ) -> httpx.Response:
        query = urllib.parse.urlencode({"return_url": return_url, "scope": scope})
        return await browser.get(f"{self.stack.edge_url}/oauth/{self.app}/start?{query}")

    async def wechat(self, browser: httpx.AsyncClient, start: httpx.Response, **form: str) -> str:
        """Through WeChat's page; returns the callback URL WeChat sends the browser to."""
        assert start.status_code == 302, start.text
        page = await browser.get(start.headers["location"].split("#", 1)[0])
        if page.status_code == 200:
            fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
            page = await browser.post(str(page.url), data={**fields, "decision": "allow", **form})
        assert page.status_code == 302, page.text
        return self.to_edge(page.headers["location"])

    async def session_of(self, token: str) -> spb.Session:
        stub = spb_grpc.SessionServiceStub(self.stack.channel)
        request = spb.GetSessionRequest(app_id=self.app, session_token=token)
        found: spb.GetSessionResponse = await stub.GetSession(
            request, metadata=bearer(TEAM_CREDENTIAL)
        )
        return found.session


def oauth_app(app_id: str, *, secure: bool) -> dict[str, Any]:
    return app_table(
        app_id,
        oauth={
            "public_base_url": PUBLIC,
            "return_urls": [SHOP],
            "cookie_name": "shop_session",
            "cookie_secure": secure,
        },
    )


@pytest.fixture
async def env(redis_client: redis.Redis) -> AsyncIterator[Env]:
    app, secure = new_app_id("wxoa"), new_app_id("wxoa")
    settings = make_settings(oauth_app(app, secure=False), oauth_app(secure, secure=True))
    async with simulated_stack(settings, redis_client, with_edge=True) as (sim, running):
        yield Env(sim, running, app, secure)


def assert_private_page(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "Traceback" not in response.text


async def test_a_login_sets_the_session_cookie_and_returns_to_the_page(env: Env) -> None:
    env.sim.set_profile(env.app, "oEdgeUser1", nickname="Edge")
    async with env.browser() as browser:
        start = await env.start(browser, "userinfo")
        assert start.headers["location"].startswith(f"{env.sim.base_url}/connect/oauth2/")
        callback = await env.wechat(browser, start, openid="oEdgeUser1")
        done = await browser.get(callback)
    assert done.status_code == 303
    assert done.headers["location"] == SHOP + "page"
    assert_private_page(done)
    cookie = next(c for c in done.headers.get_list("set-cookie") if c.startswith("shop_session="))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # this app is configured for plain-http development
    token = cookie.split(";", 1)[0].split("=", 1)[1]
    assert (await env.session_of(token)).openid == "oEdgeUser1"


async def test_the_binding_cookie_is_httponly_secure_and_scoped(env: Env) -> None:
    async with env.browser() as browser:
        query = urllib.parse.urlencode({"return_url": SHOP})
        start = await browser.get(f"{env.stack.edge_url}/oauth/{env.secure_app}/start?{query}")
    assert start.status_code == 302
    (cookie,) = start.headers.get_list("set-cookie")
    assert cookie.startswith("wxpb_")
    for attribute in ("HttpOnly", "Secure", "SameSite=Lax", f"Path=/oauth/{env.secure_app}/"):
        assert attribute in cookie
    assert_private_page(start)


async def test_a_reload_of_the_callback_logs_the_same_user_in_again(env: Env) -> None:
    async with env.browser() as browser:
        callback = await env.wechat(browser, await env.start(browser))
        first = await browser.get(callback)
        again = await browser.get(callback)
    assert (first.status_code, again.status_code) == (303, 303)
    assert len(env.sim.requests("/sns/oauth2/access_token")) == 1


async def test_a_callback_in_another_browser_is_refused(env: Env) -> None:
    async with env.browser() as attacker:
        callback = await env.wechat(attacker, await env.start(attacker))
    async with env.browser() as victim:
        refused = await victim.get(callback)
    assert refused.status_code == 400
    assert "another browser" in refused.text
    assert "set-cookie" not in refused.headers
    assert_private_page(refused)


async def test_a_refused_consent_gets_a_page_not_a_session(env: Env) -> None:
    async with env.browser() as browser:
        callback = await env.wechat(browser, await env.start(browser, "userinfo"), decision="deny")
        page = await browser.get(callback)
    assert page.status_code == 403
    assert "did not allow" in page.text
    assert_private_page(page)


@pytest.mark.parametrize(
    "return_url", ["https://evil.example/", "//evil.example/app/", "javascript:alert(1)"]
)
async def test_an_open_redirect_is_refused_at_the_start(env: Env, return_url: str) -> None:
    async with env.browser() as browser:
        page = await env.start(browser, return_url=return_url)
    assert page.status_code == 400
    assert "location" not in page.headers
    assert_private_page(page)


async def test_wechat_down_is_a_retryable_page(env: Env) -> None:
    env.sim.add_fault("/sns/oauth2/access_token", errcode=-1, times=50)
    async with env.browser() as browser:
        callback = await env.wechat(browser, await env.start(browser))
        page = await browser.get(callback)
        assert page.status_code == 502
        assert_private_page(page)
        env.sim.clear_faults()
        assert (await browser.get(callback)).status_code == 303  # the same link, later


async def test_a_snapshot_user_is_told_so(env: Env) -> None:
    env.sim.set_profile(env.app, "oSnapshotEdge", snapshot=True)
    async with env.browser() as browser:
        start = await env.start(browser, "userinfo")
        page = await browser.get(await env.wechat(browser, start, openid="oSnapshotEdge"))
    assert page.status_code == 403
    assert "preview" in page.text
    assert "set-cookie" not in page.headers


async def test_unknown_apps_and_bad_links_get_pages(env: Env) -> None:
    async with env.browser() as browser:
        unknown = await browser.get(f"{env.stack.edge_url}/oauth/wxnobody/start?return_url={SHOP}")
        bad_scope = await env.start(browser, scope="everything")
        no_state = await browser.get(f"{env.stack.edge_url}/oauth/{env.app}/callback?code=x")
    assert unknown.status_code == 404
    assert bad_scope.status_code == 400
    assert no_state.status_code == 400
    for page in (unknown, bad_scope, no_state):
        assert_private_page(page)
