"""The messaging side of `/_sim/`: users, templates, consent, windows, sent log, callbacks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from wxplatform.sim import WeChatSimulator

from .send_support import OPENID, SUB_ID, TEMPLATE, TEMPLATE_ID, errcode, template_body, token_for
from .sim_support import DOC_MP, PLAIN


async def test_users_over_http(client: httpx.AsyncClient, sim: WeChatSimulator) -> None:
    response = await client.post("/_sim/users", json={"app_id": PLAIN, "openid": OPENID})
    assert response.status_code == 200
    assert response.json() == {
        "openid": OPENID,
        "follows": True,
        "blocked": False,
        "template_blocked": False,
    }
    body = {"app_id": PLAIN, "openid": OPENID, "blocked": True, "template_blocked": True}
    updated = (await client.post("/_sim/users", json=body)).json()
    assert (updated["follows"], updated["blocked"], updated["template_blocked"]) == (
        True,
        True,
        True,
    )
    listed = (await client.get("/_sim/users", params={"app_id": PLAIN})).json()
    assert listed == [updated] == sim.users(PLAIN)
    unfollow = {"app_id": PLAIN, "openid": OPENID, "follows": False}
    assert (await client.post("/_sim/users", json=unfollow)).json()["follows"] is False


async def test_templates_over_http(client: httpx.AsyncClient, sim: WeChatSimulator) -> None:
    body = {"app_id": PLAIN, "template_id": SUB_ID, "kind": "subscribe", "keys": ["thing1"]}
    response = await client.post("/_sim/templates", json=body)
    assert response.status_code == 201
    assert response.json() == {
        "template_id": SUB_ID,
        "kind": "subscribe",
        "keys": {"thing1": "thing"},
    }
    typed = {**body, "template_id": "t2", "keys": {"k1": "phone_number"}}
    assert (await client.post("/_sim/templates", json=typed)).status_code == 201
    listed = (await client.get("/_sim/templates", params={"app_id": PLAIN})).json()
    assert [t["template_id"] for t in listed] == [SUB_ID, "t2"]
    assert listed == sim.templates(PLAIN)


async def test_consent_over_http(client: httpx.AsyncClient, sim: WeChatSimulator) -> None:
    body = {"app_id": PLAIN, "openid": OPENID, "template_id": SUB_ID, "count": 2}
    response = await client.post("/_sim/consent", json=body)
    assert response.json() == {"template_id": SUB_ID, "remaining": 2}
    del body["count"]
    assert (await client.post("/_sim/consent", json=body)).json()["remaining"] == 3
    held = await client.get("/_sim/consent", params={"app_id": PLAIN, "openid": OPENID})
    assert held.json() == {SUB_ID: 3} == sim.consent(PLAIN, OPENID)
    # Consent makes the openid known, without making it a follower.
    assert sim.users(PLAIN)[0]["follows"] is False


async def test_sent_log_over_http(client: httpx.AsyncClient, sim: WeChatSimulator) -> None:
    sim.set_user(PLAIN, OPENID)
    sim.add_template(PLAIN, TEMPLATE_ID, "template", {"keyword1": "", "keyword2": ""})
    token = await token_for(client, PLAIN)
    assert await errcode(client, TEMPLATE, token, template_body()) == 0
    sent = (await client.get("/_sim/sent")).json()
    assert sent == sim.sent() == (await client.get("/_sim/sent", params={"app_id": PLAIN})).json()
    assert (await client.get("/_sim/sent", params={"app_id": DOC_MP})).json() == []
    assert (await client.delete("/_sim/sent")).status_code == 200
    assert sim.sent() == []


async def test_callback_settings(client: httpx.AsyncClient, sim: WeChatSimulator) -> None:
    set_url = {"app_id": PLAIN, "edge_url": "http://127.0.0.1:9/"}
    assert (await client.post("/_sim/callbacks", json=set_url)).status_code == 200
    assert sim.callback_settings() == {"urls": {PLAIN: "http://127.0.0.1:9/"}, "delay": 0.05}
    stop = {"app_id": PLAIN, "edge_url": None}
    assert (await client.post("/_sim/callbacks", json=stop)).json()["urls"] == {}
    assert (await client.post("/_sim/callbacks", json={"delay": 0})).json()["delay"] == 0
    assert (await client.get("/_sim/callbacks")).json() == sim.callback_settings()


async def test_windows_of_an_unknown_user_are_empty(client: httpx.AsyncClient) -> None:
    response = await client.get("/_sim/windows", params={"app_id": PLAIN, "openid": "nobody"})
    assert response.json() == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/_sim/users", {"app_id": "wxnobody", "openid": OPENID}, 404),
        ("POST", "/_sim/users", {"app_id": PLAIN}, 400),
        ("POST", "/_sim/users", {"app_id": PLAIN, "openid": OPENID, "follows": "yes"}, 400),
        ("GET", "/_sim/users", None, 400),
        ("POST", "/_sim/templates", {"app_id": PLAIN, "template_id": "t", "kind": "x"}, 400),
        (
            "POST",
            "/_sim/templates",
            {"app_id": PLAIN, "template_id": "t", "kind": "subscribe", "keys": ["keyword1"]},
            400,
        ),
        (
            "POST",
            "/_sim/templates",
            {"app_id": PLAIN, "template_id": "t", "kind": "template", "keys": []},
            400,
        ),
        (
            "POST",
            "/_sim/templates",
            {"app_id": DOC_MP, "template_id": "t", "kind": "template", "keys": ["k1"]},
            400,
        ),
        (
            "POST",
            "/_sim/templates",
            {"app_id": PLAIN, "template_id": "t", "kind": "template", "keys": {"a b": ""}},
            400,
        ),
        (
            "POST",
            "/_sim/consent",
            {"app_id": PLAIN, "openid": OPENID, "template_id": "t", "count": 0},
            400,
        ),
        (
            "POST",
            "/_sim/consent",
            {"app_id": PLAIN, "openid": OPENID, "template_id": "t", "count": True},
            400,
        ),
        ("GET", "/_sim/windows?app_id=wxnobody&openid=x", None, 404),
        ("POST", "/_sim/callbacks", {}, 400),
        ("POST", "/_sim/callbacks", {"app_id": PLAIN}, 400),
        ("POST", "/_sim/callbacks", {"app_id": PLAIN, "edge_url": "ftp://x"}, 400),
        ("POST", "/_sim/callbacks", {"delay": -1}, 400),
        ("POST", "/_sim/template_result", {"app_id": PLAIN, "status": "failed"}, 400),
        (
            "POST",
            "/_sim/template_result",
            {"app_id": PLAIN, "status": "success", "openid": OPENID, "msgid": 1},
            400,
        ),
        ("POST", "/_sim/template_result", {"app_id": PLAIN, "status": "success", "msgid": 1}, 404),
    ],
)
async def test_bad_control_requests(
    client: httpx.AsyncClient, method: str, path: str, body: Any, status: int
) -> None:
    response = await client.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_python_methods_check_their_input(sim: WeChatSimulator) -> None:
    with pytest.raises(KeyError):
        sim.set_user("wxnobody", OPENID)
    with pytest.raises(ValueError, match="official accounts"):
        sim.add_template(DOC_MP, TEMPLATE_ID, "template", ["keyword1"])
    with pytest.raises(ValueError, match="http"):
        sim.set_callback_url(PLAIN, "127.0.0.1:8080")
    with pytest.raises(ValueError, match="status"):
        sim.force_template_result(PLAIN, "failed:system failed")
    with pytest.raises(KeyError):
        WeChatSimulator(sim.apps, callback_urls={"wxnobody": "http://127.0.0.1:9"})
