"""Subscribe messages over real HTTP: `bizsend` (accounts), `send` (mini programs), consent."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from wxplatform.sim import WeChatSimulator, event_message, original_id

from .send_support import (
    BIZSEND,
    OPENID,
    SUB_DATA,
    SUB_ID,
    SUB_KEYS,
    SUBSCRIBE,
    TEMPLATE_ID,
    call,
    errcode,
    subscribe_body,
    token_for,
)
from .sim_support import DOC_MP, PLAIN, SAFE, Receiver


@pytest.fixture
async def oa(client: httpx.AsyncClient, sim: WeChatSimulator) -> str:
    """A token of the plaintext account, which knows OPENID and the subscribe template."""
    sim.set_user(PLAIN, OPENID)
    sim.add_template(PLAIN, SUB_ID, "subscribe", SUB_KEYS)
    return await token_for(client, PLAIN)


@pytest.fixture
async def mp(client: httpx.AsyncClient, sim: WeChatSimulator) -> str:
    """A token of the mini program, which knows OPENID and the subscribe template."""
    sim.set_user(DOC_MP, OPENID)
    sim.add_template(DOC_MP, SUB_ID, "subscribe", list(SUB_KEYS))
    return await token_for(client, DOC_MP)


async def test_each_consent_allows_one_bizsend(
    client: httpx.AsyncClient, sim: WeChatSimulator, oa: str
) -> None:
    assert sim.grant_consent(PLAIN, OPENID, SUB_ID, 2) == 2
    first = await call(client, BIZSEND, oa, subscribe_body())
    assert (first["errcode"], first["errmsg"]) == (0, "ok")
    assert isinstance(first["msgid"], int)
    assert sim.consent(PLAIN, OPENID) == {SUB_ID: 1}
    assert await errcode(client, BIZSEND, oa, subscribe_body()) == 0
    answer = await call(client, BIZSEND, oa, subscribe_body())
    assert answer["errcode"] == 43101
    assert answer["errmsg"].startswith("user refuse to accept the msg rid: ")
    assert [m["endpoint"] for m in sim.sent(PLAIN)] == [BIZSEND, BIZSEND]
    assert sim.sent(PLAIN)[0]["msgid"] == first["msgid"]


async def test_mini_program_send(client: httpx.AsyncClient, sim: WeChatSimulator, mp: str) -> None:
    sim.grant_consent(DOC_MP, OPENID, SUB_ID)
    body = subscribe_body(page="pages/index/index?foo=bar", miniprogram_state="trial", lang="en_US")
    answer = await call(client, SUBSCRIBE, mp, body)
    assert answer["errcode"] == 0
    assert answer["msgid"] > 2**31
    assert await errcode(client, SUBSCRIBE, mp, subscribe_body()) == 43101


async def test_each_kind_of_app_has_its_own_endpoint(
    client: httpx.AsyncClient, sim: WeChatSimulator, oa: str, mp: str
) -> None:
    sim.grant_consent(PLAIN, OPENID, SUB_ID)
    sim.grant_consent(DOC_MP, OPENID, SUB_ID)
    assert await errcode(client, SUBSCRIBE, oa, subscribe_body()) == 48001
    assert await errcode(client, BIZSEND, mp, subscribe_body()) == 48001
    assert sim.consent(PLAIN, OPENID) == {SUB_ID: 1}  # a refused call uses no consent


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"touser": ""}, 40003),
        ({"touser": "oUser_never_seen_by_this_app"}, 40003),
        ({"template_id": "sub_unknown"}, 40037),
        ({"template_id": TEMPLATE_ID}, 40037),  # a template-message template
        ({"data": {}}, 47003),
        ({"page": ["x"]}, 47001),
        ({"miniprogram_state": "production"}, 40097),
        ({"lang": "fr_FR"}, 40097),
    ],
)
async def test_request_errors(
    client: httpx.AsyncClient,
    sim: WeChatSimulator,
    mp: str,
    overrides: dict[str, Any],
    expected: int,
) -> None:
    sim.grant_consent(DOC_MP, OPENID, SUB_ID)
    assert await errcode(client, SUBSCRIBE, mp, subscribe_body(**overrides)) == expected
    assert sim.consent(DOC_MP, OPENID) == {SUB_ID: 1}


async def test_bizsend_checks_mini_program_fields_too(
    client: httpx.AsyncClient, sim: WeChatSimulator, oa: str
) -> None:
    sim.grant_consent(PLAIN, OPENID, SUB_ID)
    assert await errcode(client, BIZSEND, oa, subscribe_body(lang="xx")) == 40097
    body = subscribe_body(
        page="https://example.com/landing",
        miniprogram={"appid": "wxmini00000000001", "pagepath": "index?foo=bar"},
    )
    assert await errcode(client, BIZSEND, oa, body) == 0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("thing1", "这是一段超过二十个字符的很长很长很长的文字内容"),
        ("thing1", ""),
        ("amount2", "九十九元"),
        ("amount2", "¥12345678901"),
        ("time3", "昨天"),
        ("time3", "25:00"),
    ],
)
async def test_values_must_fit_their_types(
    client: httpx.AsyncClient, sim: WeChatSimulator, oa: str, key: str, value: str
) -> None:
    sim.grant_consent(PLAIN, OPENID, SUB_ID)
    data = {**SUB_DATA, key: {"value": value}}
    answer = await call(client, BIZSEND, oa, subscribe_body(data=data))
    assert answer["errcode"] == 47003
    assert answer["errmsg"].startswith(f"argument invalid! data.{key}.value invalid rid: ")
    assert sim.consent(PLAIN, OPENID) == {SUB_ID: 1}


async def test_missing_and_extra_keys_are_refused(
    client: httpx.AsyncClient, sim: WeChatSimulator, oa: str
) -> None:
    sim.grant_consent(PLAIN, OPENID, SUB_ID)
    missing = {k: v for k, v in SUB_DATA.items() if k != "time3"}
    answer = await call(client, BIZSEND, oa, subscribe_body(data=missing))
    assert "data.time3.value" in answer["errmsg"]
    extra = {**SUB_DATA, "phrase4": {"value": "已完成"}}
    answer = await call(client, BIZSEND, oa, subscribe_body(data=extra))
    assert "data.phrase4.value" in answer["errmsg"]


def _popup(app_id: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return event_message(
        original_id(app_id),
        OPENID,
        "subscribe_msg_popup_event",
        extra={"SubscribeMsgPopupEvent": {"List": entries}},
    )


def _entry(template_id: str, status: str) -> dict[str, Any]:
    return {"TemplateId": template_id, "SubscribeStatusString": status, "PopupScene": 2}


async def test_popup_pushes_grant_consent(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver
) -> None:
    sim.add_template(SAFE, SUB_ID, "subscribe", SUB_KEYS)
    token = await token_for(client, SAFE)
    entries = [_entry(SUB_ID, "accept"), _entry("subOther", "reject")]
    result = await sim.push(SAFE, receiver.base_url, _popup(SAFE, entries))
    assert result.ok
    # Known from the push alone; the popup does not make the user a follower.
    assert sim.users(SAFE) == [
        {"openid": OPENID, "follows": False, "blocked": False, "template_blocked": False}
    ]
    assert sim.consent(SAFE, OPENID) == {SUB_ID: 1}
    assert await errcode(client, BIZSEND, token, subscribe_body()) == 0
    assert await errcode(client, BIZSEND, token, subscribe_body()) == 43101


async def test_mini_program_json_popups_carry_list_at_the_top(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver, mp: str
) -> None:
    # JSON pushes put List at the top level: an object for one template (§3.2).
    fields = event_message(
        original_id(DOC_MP),
        OPENID,
        "subscribe_msg_popup_event",
        extra={"List": _entry(SUB_ID, "accept")},
    )
    response = await client.post(
        "/_sim/push", json={"app_id": DOC_MP, "edge_url": receiver.base_url, "fields": fields}
    )
    assert response.json()["status"] == 200
    assert sim.consent(DOC_MP, OPENID) == {SUB_ID: 1}
    assert await errcode(client, SUBSCRIBE, mp, subscribe_body()) == 0


async def test_unacknowledged_popups_grant_nothing(
    sim: WeChatSimulator, receiver: Receiver
) -> None:
    receiver.answer = lambda _: (503, b"busy")
    await sim.push(PLAIN, receiver.base_url, _popup(PLAIN, [_entry(SUB_ID, "accept")]))
    assert sim.consent(PLAIN, OPENID) == {}
    assert sim.users(PLAIN) == []


async def test_a_change_event_reject_revokes_consent(
    sim: WeChatSimulator, receiver: Receiver
) -> None:
    sim.grant_consent(PLAIN, OPENID, SUB_ID, 3)
    change = event_message(
        original_id(PLAIN),
        OPENID,
        "subscribe_msg_change_event",
        extra={"SubscribeMsgChangeEvent": {"List": [_entry(SUB_ID, "reject")]}},
    )
    assert (await sim.push(PLAIN, receiver.base_url, change)).ok
    assert sim.consent(PLAIN, OPENID) == {}
