"""The simulator's identity side over HTTP: logins, open data and web-login users."""

from __future__ import annotations

import httpx

from wxplatform.config import AppConfig
from wxplatform.sim import WeChatSimulator
from wxplatform.wechat.user_data import decrypt_user_data, signature_matches

from .sim_support import DOC_MP, PLAIN


async def login(client: httpx.AsyncClient, app: AppConfig, code: str) -> dict[str, object]:
    query = {
        "appid": app.app_id,
        "secret": app.app_secret.reveal(),
        "js_code": code,
        "grant_type": "authorization_code",
    }
    answer: dict[str, object] = (await client.get("/sns/jscode2session", params=query)).json()
    return answer


async def test_login_codes_are_single_use_and_rotate_the_session_key(
    sim: WeChatSimulator, client: httpx.AsyncClient, apps: dict[str, AppConfig]
) -> None:
    made = await client.post(
        "/_sim/mini_program/login_codes",
        json={"app_id": DOC_MP, "openid": "oSimMini1", "unionid": "uSim1", "count": 2},
    )
    assert made.status_code == 201
    first, second = made.json()["codes"]
    answer = await login(client, apps[DOC_MP], first)
    assert (answer["openid"], answer["unionid"]) == ("oSimMini1", "uSim1")
    assert (await login(client, apps[DOC_MP], first))["errcode"] == 40163
    rotated = await login(client, apps[DOC_MP], second)
    assert rotated["session_key"] != answer["session_key"]
    data = await client.post(
        "/_sim/mini_program/user_data",
        json={"app_id": DOC_MP, "openid": "oSimMini1", "data": {"nickName": "Sim"}},
    )
    body = data.json()
    key = str(rotated["session_key"])
    opened = decrypt_user_data(key, body["encrypted_data"], body["iv"])
    assert opened.data["nickName"] == "Sim"
    assert opened.appid == DOC_MP
    assert signature_matches(body["raw_data"], key, body["signature"])


async def test_blocked_users_and_bad_requests(
    sim: WeChatSimulator, client: httpx.AsyncClient, apps: dict[str, AppConfig]
) -> None:
    await client.post("/_sim/mini_program/block", json={"app_id": DOC_MP, "openid": "oRisky1"})
    codes = await client.post(
        "/_sim/mini_program/login_codes", json={"app_id": DOC_MP, "openid": "oRisky1"}
    )
    assert (await login(client, apps[DOC_MP], codes.json()["codes"][0]))["errcode"] == 40226
    wrong_kind = await client.post(
        "/_sim/mini_program/login_codes", json={"app_id": PLAIN, "openid": "oX"}
    )
    assert wrong_kind.status_code == 404
    too_many = await client.post(
        "/_sim/mini_program/login_codes",
        json={"app_id": DOC_MP, "openid": "oX", "count": 10**9},
    )
    assert too_many.status_code == 400


async def test_profiles_and_the_browser_user(
    sim: WeChatSimulator, client: httpx.AsyncClient
) -> None:
    made = await client.post(
        "/_sim/oauth/profiles",
        json={"app_id": PLAIN, "openid": "oWebSim1", "nickname": "Web", "browser": True},
    )
    assert made.json()["nickname"] == "Web"
    assert sim.state.oauth.browser_user(PLAIN) == "oWebSim1"
