"""Web login in a real browser: headless Chromium, the edge, core, the simulator as WeChat,
and a small "team app" that resolves the session cookie through GetSession.

The browser reaches two made-up hosts, as a production deployment would have them:
`login.example.test` (the edge, the domain registered at WeChat) and `shop.example.test`
(the team's page); Chromium maps both to this machine's ports. The session cookie is set
for `.example.test`, so the team's page receives it.

Needs Debian's `chromium` and `chromium-driver`; without them the tests skip, unless
`WXP_REQUIRE_BROWSER=1` (CI sets it), when they fail instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as redis
import tornado.httpserver
import tornado.netutil
import tornado.web

from acme.wxplatform.v1 import session_service_pb2 as spb
from acme.wxplatform.v1 import session_service_pb2_grpc as spb_grpc
from tests.support import (
    TEAM_CREDENTIAL,
    app_table,
    bearer,
    make_settings,
    new_app_id,
    simulated_stack,
)
from wxplatform.sim import WeChatSimulator

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LOGIN, SHOP = "login.example.test", "shop.example.test"

if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    if os.environ.get("WXP_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"browser tests required, but {CHROMIUM} or {DRIVER} is missing")
    pytest.skip(
        "no Chromium here (apt install chromium chromium-driver); browser tests skipped",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402 - only where a browser exists
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


class TeamPage(tornado.web.RequestHandler):
    """The team's page: who is logged in, as GetSession says for the session cookie."""

    def initialize(
        self, sessions: spb_grpc.SessionServiceStub, app_id: str, cookie: str = "shop_session"
    ) -> None:
        self.sessions, self.app_id, self.cookie = sessions, app_id, cookie

    async def get(self) -> None:
        token = self.get_cookie(self.cookie)
        openid = ""
        if token:
            with contextlib.suppress(Exception):
                found = await self.sessions.GetSession(
                    spb.GetSessionRequest(app_id=self.app_id, session_token=token),
                    metadata=bearer(TEAM_CREDENTIAL),
                )
                openid = found.session.openid
        body = f'<p id="user">{openid}</p>' if openid else '<p id="anonymous">nobody</p>'
        self.finish(f"<!doctype html><title>Shop</title>{body}")


class TeamLogin(tornado.web.RequestHandler):
    """The team's login link: off to the edge's start, back to `page`."""

    def initialize(self, app_id: str, page: str, scope: str) -> None:
        self.app_id, self.page, self.scope = app_id, page, scope

    def get(self) -> None:
        query = urllib.parse.urlencode(
            {"return_url": f"http://{SHOP}/app/{self.page}", "scope": self.scope}
        )
        self.redirect(f"http://{LOGIN}/oauth/{self.app_id}/start?{query}")


@dataclass
class Env:
    sim: WeChatSimulator
    app: str
    website: str
    driver: Any

    def callback_urls(self) -> list[str]:
        """The edge callbacks the browser requested so far (from Chromium's own log)."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                if "/oauth/" in url and "/callback" in url:
                    urls.append(url)
        return urls


def _chromium(edge_port: int, shop_port: int, profile_dir: str) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        f"--host-resolver-rules=MAP {LOGIN}:80 127.0.0.1:{edge_port},"
        f" MAP {SHOP}:80 127.0.0.1:{shop_port}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@contextlib.contextmanager
def _profile() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="wxp-chromium-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def env(redis_client: redis.Redis) -> AsyncIterator[Env]:
    app, website = new_app_id("wxoa"), new_app_id("wxweb")
    oauth = {
        "public_base_url": f"http://{LOGIN}",
        "return_urls": [f"http://{SHOP}/app/"],
        "cookie_name": "shop_session",
        "cookie_domain": ".example.test",
        "cookie_secure": False,  # plain http on this machine
    }
    desk = app_table(
        website,
        kind="website",
        auto_reply=[],
        default_reply=None,
        subscribe_reply=None,
        oauth={**oauth, "cookie_name": "desk_session"},
    )
    desk.pop("token")
    settings = make_settings(app_table(app, oauth=oauth), desk)
    async with contextlib.AsyncExitStack() as stack:
        sim, running = await stack.enter_async_context(
            simulated_stack(settings, redis_client, with_edge=True)
        )
        sessions = spb_grpc.SessionServiceStub(running.channel)
        shop = tornado.httpserver.HTTPServer(
            tornado.web.Application(
                [
                    (r"/app/page", TeamPage, {"sessions": sessions, "app_id": app}),
                    (
                        r"/app/desk",
                        TeamPage,
                        {"sessions": sessions, "app_id": website, "cookie": "desk_session"},
                    ),
                    (
                        r"/app/login",
                        TeamLogin,
                        {"app_id": app, "page": "page", "scope": "userinfo"},
                    ),
                    (
                        r"/app/desk-login",
                        TeamLogin,
                        {"app_id": website, "page": "desk", "scope": "login"},
                    ),
                ]
            )
        )
        [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
        shop.add_sockets([sock])
        stack.callback(shop.stop)
        assert running.edge is not None
        profile = stack.enter_context(_profile())
        driver = await asyncio.to_thread(
            _chromium, running.edge.port, sock.getsockname()[1], profile
        )
        stack.push_async_callback(asyncio.to_thread, driver.quit)
        yield Env(sim, app, website, driver)


def _wait_for(driver: Any, element_id: str) -> str:
    found = WebDriverWait(driver, 30).until(
        expected_conditions.presence_of_element_located((By.ID, element_id))
    )
    return str(found.text)


def _log_in(env: Env, openid: str, decision: str = "allow", link: str = "login") -> str:
    """From the team's login link through WeChat's consent page; the page reached."""
    driver = env.driver
    driver.get(f"http://{SHOP}/app/{link}")
    field = WebDriverWait(driver, 30).until(
        expected_conditions.presence_of_element_located((By.ID, "openid"))
    )
    field.clear()
    field.send_keys(openid)
    driver.find_element(By.ID, decision).click()
    if decision == "allow":
        return _wait_for(driver, "user")
    WebDriverWait(driver, 30).until(lambda d: "/callback" in d.current_url)
    return str(driver.find_element(By.TAG_NAME, "body").text)


async def test_a_user_logs_in_and_the_team_page_knows_them(env: Env) -> None:
    shown = await asyncio.to_thread(_log_in, env, "oBrowserA1")
    assert shown == "oBrowserA1"
    # The session cookie is HttpOnly: the page's scripts cannot read it.
    cookies = await asyncio.to_thread(env.driver.execute_script, "return document.cookie")
    assert "shop_session" not in cookies


async def test_a_refused_consent_shows_a_page_and_logs_nobody_in(env: Env) -> None:
    text = await asyncio.to_thread(_log_in, env, "oBrowserB1", "deny")
    assert "did not allow" in text
    await asyncio.to_thread(env.driver.get, f"http://{SHOP}/app/page")
    assert await asyncio.to_thread(_wait_for, env.driver, "anonymous") == "nobody"


async def test_reloading_the_callback_keeps_the_user_logged_in(env: Env) -> None:
    await asyncio.to_thread(_log_in, env, "oBrowserC1")
    (callback,) = await asyncio.to_thread(env.callback_urls)
    await asyncio.to_thread(env.driver.get, callback)  # the user pressed reload, or back
    assert await asyncio.to_thread(_wait_for, env.driver, "user") == "oBrowserC1"
    assert len(env.sim.requests("/sns/oauth2/access_token")) == 1


async def test_a_website_user_logs_in_through_the_qr_page(env: Env) -> None:
    shown = await asyncio.to_thread(_log_in, env, "oDeskUser1", "allow", "desk-login")
    assert shown == "oDeskUser1"
    (authorize,) = [r for r in env.sim.requests() if r["path"] == "/connect/qrconnect"][:1]
    assert authorize["query"]["scope"] == "snsapi_login"
