"""`/cgi-bin/message/custom/send` over real HTTP: payloads, and windows from pushed events."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from wxplatform.sim import WeChatSimulator, event_message, original_id

from .send_support import CUSTOM, OPENID, call, errcode, text_body, token_for
from .sim_support import DOC_MP, PLAIN, SAFE, Receiver, advance


async def push_event(
    client: httpx.AsyncClient,
    receiver: Receiver,
    app_id: str,
    event: str,
    event_key: str | None = None,
) -> None:
    """Push an event from OPENID through the control API; the edge acknowledges it."""
    body: dict[str, Any] = {
        "app_id": app_id,
        "edge_url": receiver.base_url,
        "event": event,
        "openid": OPENID,
    }
    if event_key is not None:
        body["event_key"] = event_key
    response = await client.post("/_sim/push", json=body)
    assert response.json()["status"] == 200, response.text


async def push_text(
    client: httpx.AsyncClient, receiver: Receiver, app_id: str, text: str = "hi"
) -> None:
    """Push a text message from OPENID through the control API."""
    body = {"app_id": app_id, "edge_url": receiver.base_url, "text": text, "openid": OPENID}
    response = await client.post("/_sim/push", json=body)
    assert response.json()["status"] == 200, response.text


async def sends_allowed(client: httpx.AsyncClient, token: str, limit: int = 10) -> int:
    """Send texts until refused; how many went through (the refusal must be 45047)."""
    for count in range(limit):
        code = await errcode(client, CUSTOM, token, text_body())
        if code:
            assert code == 45047
            return count
    return limit


async def windows(client: httpx.AsyncClient, app_id: str) -> list[dict[str, Any]]:
    """OPENID's windows through the control API."""
    response = await client.get("/_sim/windows", params={"app_id": app_id, "openid": OPENID})
    assert response.status_code == 200
    result: list[dict[str, Any]] = response.json()
    return result


@pytest.fixture
async def oa(client: httpx.AsyncClient) -> str:
    """A token of the safe-mode official account (pushes to it are encrypted)."""
    return await token_for(client, SAFE)


async def test_a_user_message_allows_five_sends_in_48_hours(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver, oa: str
) -> None:
    await push_text(client, receiver, SAFE)
    [window] = await windows(client, SAFE)
    now = sim.clock.now()
    assert window == {
        "kind": "message",
        "quota": 5,
        "used": 0,
        "remaining": 5,
        "opened_at": now,
        "expires_at": now + 48 * 3600,
        "open": True,
    }
    answer = await call(client, CUSTOM, oa, text_body())
    assert answer == {"errcode": 0, "errmsg": "ok"}
    await advance(client, 47 * 3600)
    oa = await token_for(client, SAFE)  # tokens live 2 hours
    assert await sends_allowed(client, oa) == 4
    assert (await windows(client, SAFE))[0]["used"] == 5
    # A new message opens a fresh window with the full quota.
    await push_text(client, receiver, SAFE, "again")
    assert await sends_allowed(client, oa) == 5
    await advance(client, 48 * 3600)
    oa = await token_for(client, SAFE)
    assert await errcode(client, CUSTOM, oa, text_body()) == 45015
    assert (await windows(client, SAFE))[0]["open"] is False
    assert len(sim.sent(SAFE)) == 10


async def test_the_window_closes_at_48_hours_sharp(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await push_text(client, receiver, SAFE)
    await advance(client, 48 * 3600 - 1)
    oa = await token_for(client, SAFE)
    assert await errcode(client, CUSTOM, oa, text_body()) == 0
    await advance(client, 1)
    assert await errcode(client, CUSTOM, oa, text_body()) == 45015


@pytest.mark.parametrize("event", ["CLICK", "scancode_push", "scancode_waitmsg"])
async def test_menu_clicks_allow_three_sends_in_a_minute(
    client: httpx.AsyncClient, receiver: Receiver, oa: str, event: str
) -> None:
    await push_event(client, receiver, SAFE, event, "menu_key")
    assert await sends_allowed(client, oa) == 3
    await push_event(client, receiver, SAFE, event, "menu_key")
    await advance(client, 59)
    assert await errcode(client, CUSTOM, oa, text_body()) == 0
    await advance(client, 1)
    assert await errcode(client, CUSTOM, oa, text_body()) == 45015


async def test_link_menus_and_other_events_open_no_window(
    client: httpx.AsyncClient, receiver: Receiver, oa: str
) -> None:
    await push_event(client, receiver, SAFE, "VIEW", "https://example.com/")
    await push_event(client, receiver, SAFE, "LOCATION")
    assert await windows(client, SAFE) == []
    assert await errcode(client, CUSTOM, oa, text_body()) == 45015


async def test_follow_and_scan(client: httpx.AsyncClient, receiver: Receiver, oa: str) -> None:
    await push_event(client, receiver, SAFE, "subscribe")
    assert [w["kind"] for w in await windows(client, SAFE)] == ["follow"]
    assert await sends_allowed(client, oa) == 3
    await push_event(client, receiver, SAFE, "SCAN", "42")
    assert await sends_allowed(client, oa) == 3


async def test_a_follow_through_a_qr_code_is_also_a_scan(
    client: httpx.AsyncClient, receiver: Receiver, oa: str
) -> None:
    await push_event(client, receiver, SAFE, "subscribe", "qrscene_42")
    assert sorted(w["kind"] for w in await windows(client, SAFE)) == ["follow", "scan"]
    assert await sends_allowed(client, oa) == 6


async def test_the_window_expiring_soonest_is_used_first(
    client: httpx.AsyncClient, receiver: Receiver, oa: str
) -> None:
    await push_text(client, receiver, SAFE)
    await push_event(client, receiver, SAFE, "CLICK", "k")
    assert await errcode(client, CUSTOM, oa, text_body()) == 0
    by_kind = {w["kind"]: w["used"] for w in await windows(client, SAFE)}
    assert by_kind == {"menu": 1, "message": 0}
    assert await sends_allowed(client, oa) == 7  # 2 left of the menu's, then 5


async def test_unfollowing_closes_everything(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver, oa: str
) -> None:
    await push_text(client, receiver, SAFE)
    await push_event(client, receiver, SAFE, "unsubscribe")
    assert sim.users(SAFE)[0]["follows"] is False
    assert await errcode(client, CUSTOM, oa, text_body()) == 45015
    # Following again opens only the follow window, not the old message window.
    await push_event(client, receiver, SAFE, "subscribe")
    assert await sends_allowed(client, oa) == 3


async def test_a_follower_without_interaction_has_no_window(
    client: httpx.AsyncClient, sim: WeChatSimulator, oa: str
) -> None:
    sim.set_user(SAFE, OPENID)
    assert await errcode(client, CUSTOM, oa, text_body()) == 45015
    assert await errcode(client, CUSTOM, oa, text_body("oUser_nobody")) == 40003
    assert await errcode(client, CUSTOM, oa, text_body("")) == 40003


async def test_a_registered_non_follower_is_refused_even_with_a_window(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver, oa: str
) -> None:
    await push_text(client, receiver, SAFE)
    sim.set_user(SAFE, OPENID, follows=False)
    assert await errcode(client, CUSTOM, oa, text_body()) == 45015


async def test_unacknowledged_pushes_open_nothing(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver, oa: str
) -> None:
    receiver.answer = lambda _: (500, b"oops")
    await sim.push_text(SAFE, receiver.base_url, "hi", openid=OPENID)
    assert sim.users(SAFE) == []
    assert await errcode(client, CUSTOM, oa, text_body()) == 40003


async def test_mini_program_sessions(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver
) -> None:
    token = await token_for(client, DOC_MP)
    await push_event(client, receiver, DOC_MP, "user_enter_tempsession")
    # Mini program users do not "follow"; only the window counts.
    assert sim.users(DOC_MP)[0]["follows"] is False
    assert await sends_allowed(client, token) == 2
    await push_text(client, receiver, DOC_MP)
    assert await sends_allowed(client, token) == 5


@pytest.mark.parametrize(
    ("app_id", "msgtype", "payload"),
    [
        (SAFE, "image", {"media_id": "MEDIA_ID"}),
        (SAFE, "voice", {"media_id": "MEDIA_ID"}),
        (SAFE, "video", {"media_id": "M", "thumb_media_id": "T", "title": "", "description": ""}),
        (SAFE, "music", {"title": "t", "musicurl": "", "hqmusicurl": "", "thumb_media_id": "T"}),
        (SAFE, "news", {"articles": [{"title": "t", "url": "https://example.com/"}]}),
        (SAFE, "mpnews", {"media_id": "MEDIA_ID"}),
        (SAFE, "mpnewsarticle", {"article_id": "ARTICLE"}),
        (SAFE, "msgmenu", {"head_content": "?", "list": [{"id": "101", "content": "满意"}]}),
        (SAFE, "wxcard", {"card_id": "CARD"}),
        (
            SAFE,
            "miniprogrampage",
            {"title": "t", "appid": "wxmini", "pagepath": "index", "thumb_media_id": "T"},
        ),
        (DOC_MP, "link", {"title": "t", "url": "https://example.com/", "thumb_url": ""}),
        (DOC_MP, "miniprogrampage", {"title": "t", "pagepath": "index", "thumb_media_id": "T"}),
    ],
)
async def test_every_message_type(
    client: httpx.AsyncClient,
    receiver: Receiver,
    app_id: str,
    msgtype: str,
    payload: dict[str, Any],
) -> None:
    await push_text(client, receiver, app_id)
    token = await token_for(client, app_id)
    body = {"touser": OPENID, "msgtype": msgtype, msgtype: payload}
    assert await errcode(client, CUSTOM, token, body) == 0
    [sent] = (await client.get("/_sim/sent", params={"app_id": app_id})).json()
    assert (sent["endpoint"], sent["payload"], sent["msgid"]) == (CUSTOM, body, None)


def _body(msgtype: str, payload: Any, **extra: Any) -> dict[str, Any]:
    return {"touser": OPENID, "msgtype": msgtype, msgtype: payload, **extra}


@pytest.mark.parametrize(
    ("app_id", "body", "expected"),
    [
        (SAFE, _body("file", {"media_id": "M"}), 40008),
        (SAFE, _body("link", {"title": "t", "url": "https://x/"}), 40008),
        (DOC_MP, _body("voice", {"media_id": "M"}), 40008),
        (SAFE, {"touser": OPENID, "msgtype": "text"}, 44002),
        (SAFE, _body("text", {}), 44004),
        (SAFE, _body("text", {"content": ""}), 44004),
        (SAFE, _body("text", "hello"), 47001),
        (SAFE, _body("text", {"content": 5}), 47001),
        (SAFE, _body("image", {"media_id": ""}), 40007),
        (SAFE, _body("video", {"media_id": "M"}), 40007),
        (SAFE, _body("news", {"articles": []}), 44003),
        (SAFE, _body("news", {"articles": [{"description": "d"}]}), 44003),
        (SAFE, _body("news", {"articles": [{"title": "a"}, {"title": "b"}]}), 45008),
        (SAFE, _body("mpnewsarticle", {}), 44002),
        (SAFE, _body("msgmenu", {"list": []}), 44002),
        (SAFE, _body("msgmenu", {"list": [{"id": "1"}]}), 44002),
        (SAFE, _body("wxcard", {"card_id": ""}), 44002),
        (
            SAFE,
            _body("miniprogrampage", {"title": "t", "pagepath": "p", "thumb_media_id": "T"}),
            44002,
        ),
        (DOC_MP, _body("miniprogrampage", {"title": "t", "pagepath": "p"}), 40007),
        (DOC_MP, _body("link", {"title": "t"}), 44002),
        (SAFE, {**text_body(), "customservice": {"kf_account": "agent"}}, 40097),
        (SAFE, {**text_body(), "customservice": "agent@kf"}, 47001),
    ],
)
async def test_payload_errors(
    client: httpx.AsyncClient,
    receiver: Receiver,
    app_id: str,
    body: dict[str, Any],
    expected: int,
) -> None:
    await push_text(client, receiver, app_id)
    token = await token_for(client, app_id)
    assert await errcode(client, CUSTOM, token, body) == expected
    assert (await windows(client, app_id))[0]["used"] == 0  # a refused send uses no quota


async def test_sending_as_a_named_agent(
    client: httpx.AsyncClient, receiver: Receiver, oa: str
) -> None:
    await push_text(client, receiver, SAFE)
    body = {**text_body(), "customservice": {"kf_account": "test1@kftest"}}
    assert await errcode(client, CUSTOM, oa, body) == 0


async def test_official_account_pushes_make_the_sender_a_follower(
    sim: WeChatSimulator, receiver: Receiver
) -> None:
    fields = event_message(original_id(PLAIN), OPENID, "unsubscribe")
    await sim.push(PLAIN, receiver.base_url, fields)
    assert sim.users(PLAIN)[0]["follows"] is False
    await sim.push_text(PLAIN, receiver.base_url, "back", openid=OPENID)
    assert sim.users(PLAIN)[0]["follows"] is True
