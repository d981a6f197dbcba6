"""`/cgi-bin/token` and the access-token check, over real HTTP on a manual clock."""

from __future__ import annotations

import re

import httpx
import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from wxplatform.clock import ManualClock
from wxplatform.sim import (
    ApiError,
    ApiHandler,
    Caller,
    TokenPolicy,
    WeChatSimulator,
    requires_access_token,
)
from wxplatform.sim.tokens import TokenStore

from .sim_support import (
    BEIJING_MIDNIGHT,
    PLAIN,
    RID,
    SAFE,
    SECRET,
    advance,
    errcode_for,
    get_token,
    make_app,
    stable_token,
)


async def test_token_is_new_long_and_lives_7200_seconds(client: httpx.AsyncClient) -> None:
    first = await get_token(client)
    second = await get_token(client)
    assert set(first) == {"access_token", "expires_in"}
    assert first["expires_in"] == 7200
    assert len(first["access_token"]) >= 100
    assert re.fullmatch(r"[A-Za-z0-9_-]+", first["access_token"])
    assert first["access_token"] != second["access_token"]


async def test_response_is_wechat_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/cgi-bin/token", params={"grant_type": "client_credential"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["errcode"] == 41002
    assert re.fullmatch(r"appid missing " + RID, body["errmsg"])


async def test_previous_token_overlaps_five_minutes(client: httpx.AsyncClient) -> None:
    old = (await get_token(client))["access_token"]
    await advance(client, 600)
    new = (await get_token(client))["access_token"]
    assert await errcode_for(client, old) == 0
    await advance(client, 299)
    assert await errcode_for(client, old) == 0
    await advance(client, 1)
    # Superseded, not expired: 40001 "invalid credential … not latest".
    assert await errcode_for(client, old) == 40001
    assert await errcode_for(client, new) == 0


async def test_older_tokens_die_at_once(client: httpx.AsyncClient) -> None:
    first = (await get_token(client))["access_token"]
    second = (await get_token(client))["access_token"]
    third = (await get_token(client))["access_token"]
    assert await errcode_for(client, first) == 40001
    assert await errcode_for(client, second) == 0
    assert await errcode_for(client, third) == 0


async def test_expired_token_gives_42001(client: httpx.AsyncClient) -> None:
    token = (await get_token(client))["access_token"]
    await advance(client, 7199)
    assert await errcode_for(client, token) == 0
    await advance(client, 1)
    assert await errcode_for(client, token) == 42001


async def test_token_that_expired_before_its_overlap_ended_gives_42001(
    client: httpx.AsyncClient,
) -> None:
    old = (await get_token(client))["access_token"]
    await advance(client, 7100)
    await get_token(client)  # overlap would last until 7400, but the token dies at 7200
    await advance(client, 150)
    assert await errcode_for(client, old) == 42001


async def test_token_check_errcodes(client: httpx.AsyncClient) -> None:
    assert await errcode_for(client, None) == 41001
    assert await errcode_for(client, "") == 41001
    assert await errcode_for(client, "not-a-token") == 40014
    token = (await get_token(client))["access_token"]
    assert await errcode_for(client, token) == 0
    body = (await client.get("/cgi-bin/getcallbackip", params={"access_token": token})).json()
    assert body["ip_list"]
    assert all(isinstance(ip, str) for ip in body["ip_list"])


@pytest.mark.parametrize(
    ("params", "errcode"),
    [
        ({"grant_type": "client_credential", "appid": "wxnobody", "secret": SECRET}, 40013),
        ({"grant_type": "client_credential", "appid": PLAIN, "secret": "wrong"}, 40001),
        ({"grant_type": "password", "appid": PLAIN, "secret": SECRET}, 40002),
        ({"appid": PLAIN, "secret": SECRET}, 40002),
        ({"grant_type": "client_credential", "secret": SECRET}, 41002),
        ({"grant_type": "client_credential", "appid": PLAIN}, 41004),
    ],
)
async def test_token_request_errors(
    client: httpx.AsyncClient, params: dict[str, str], errcode: int
) -> None:
    response = await client.get("/cgi-bin/token", params=params)
    body = response.json()
    assert response.status_code == 200
    assert body["errcode"] == errcode
    assert re.search(RID, body["errmsg"])
    assert SECRET not in response.text


async def test_wrong_secret_has_wechats_text(client: httpx.AsyncClient) -> None:
    body = await get_token(client, secret="f" * 32)
    assert body["errmsg"].startswith("invalid credential")


async def test_tokens_are_per_app(client: httpx.AsyncClient) -> None:
    plain = (await get_token(client, PLAIN))["access_token"]
    await get_token(client, SAFE)
    await get_token(client, SAFE)
    assert await errcode_for(client, plain) == 0


async def test_daily_quota_resets_at_beijing_midnight() -> None:
    clock = ManualClock(BEIJING_MIDNIGHT - 60)
    apps = {PLAIN: make_app(PLAIN)}
    async with (
        WeChatSimulator(apps, clock, policy=TokenPolicy(daily_quota=3)) as sim,
        httpx.AsyncClient(base_url=sim.base_url, trust_env=False) as client,
    ):
        tokens = [(await get_token(client))["access_token"] for _ in range(3)]
        refused = await get_token(client)
        assert refused["errcode"] == 45009
        assert refused["errmsg"].startswith("reach max api daily quota limit rid: ")
        # A refused call issues nothing: the latest token is still current.
        assert await errcode_for(client, tokens[-1]) == 0
        await advance(client, 59)
        assert (await get_token(client))["errcode"] == 45009
        await advance(client, 1)  # midnight in Beijing
        assert "access_token" in await get_token(client)
        stats = (await client.get("/_sim/stats")).json()
        assert stats["apps"][PLAIN]["token"] == {"issued": 4, "calls_today": 1, "daily_quota": 3}


def test_default_daily_quota_is_2000() -> None:
    clock = ManualClock(BEIJING_MIDNIGHT + 3600)
    store = TokenStore({PLAIN: make_app(PLAIN)}, clock)
    for _ in range(2000):
        store.issue(PLAIN)
    with pytest.raises(ApiError) as refused:
        store.issue(PLAIN)
    assert refused.value.errcode == 45009
    clock.advance(86400)
    assert store.issue(PLAIN).expires_in == 7200


class _EchoHandler(ApiHandler):
    """A token-guarded endpoint with a path argument, as later endpoints will be."""

    @requires_access_token
    async def post(self, caller: Caller, name: str) -> None:
        self.send_json({"app": caller.app_id, "source": caller.source, "name": name})


async def test_requires_access_token_guards_new_endpoints(sim: WeChatSimulator) -> None:
    app = sim.make_app()
    app.add_handlers(r".*", [(r"/cgi-bin/echo/(\w+)", _EchoHandler, {"state": sim.state})])
    sockets = bind_sockets(0, address="127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    try:
        async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
            token = (await stable_token(client, SAFE))["access_token"]
            ok = await client.post("/cgi-bin/echo/bob", params={"access_token": token})
            assert ok.json() == {"app": SAFE, "source": "stable_token", "name": "bob"}
            missing = await client.post("/cgi-bin/echo/bob")
            assert missing.json()["errcode"] == 41001
            assert sim.requests("/cgi-bin/echo/bob")[0]["method"] == "POST"
    finally:
        server.stop()
        await server.close_all_connections()
