"""`/cgi-bin/message/template/send` over real HTTP: every errcode path and the dedup rule."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from wxplatform.sim import WeChatSimulator

from .send_support import (
    OPENID,
    OTHER,
    SUB_ID,
    SUB_KEYS,
    TEMPLATE,
    TEMPLATE_ID,
    call,
    errcode,
    template_body,
    token_for,
)
from .sim_support import COMPAT, DOC_MP, PLAIN, RID, advance


@pytest.fixture
async def token(client: httpx.AsyncClient, sim: WeChatSimulator) -> str:
    """A token of the plaintext official account, which knows OPENID and TEMPLATE_ID."""
    sim.set_user(PLAIN, OPENID)
    sim.add_template(PLAIN, TEMPLATE_ID, "template", ["keyword1", "keyword2"])
    return await token_for(client, PLAIN)


async def test_template_send_answers_with_a_large_increasing_msgid(
    client: httpx.AsyncClient, sim: WeChatSimulator, token: str
) -> None:
    first = await call(client, TEMPLATE, token, template_body())
    assert set(first) == {"errcode", "errmsg", "msgid"}
    assert (first["errcode"], first["errmsg"]) == (0, "ok")
    assert isinstance(first["msgid"], int)
    assert first["msgid"] > 2**31  # a client storing msgids in an int32 breaks here
    second = await call(client, TEMPLATE, token, template_body())
    assert second["msgid"] > first["msgid"]
    [one, two] = sim.sent(PLAIN)
    assert (one["endpoint"], one["openid"], one["msgid"]) == (TEMPLATE, OPENID, first["msgid"])
    assert one["payload"] == template_body()
    assert one["time"] == sim.clock.now()
    assert one["job_status"] == "success"
    assert two["msgid"] == second["msgid"]


async def test_mini_program_tokens_are_unauthorized(
    client: httpx.AsyncClient, sim: WeChatSimulator
) -> None:
    token = await token_for(client, DOC_MP)
    assert await errcode(client, TEMPLATE, token, template_body()) == 48001


async def test_the_access_token_is_checked_first(client: httpx.AsyncClient) -> None:
    assert await errcode(client, TEMPLATE, None, template_body()) == 41001
    assert await errcode(client, TEMPLATE, "not-a-token", template_body()) == 40014


async def test_bodies_that_are_not_json_objects(client: httpx.AsyncClient, token: str) -> None:
    assert await errcode(client, TEMPLATE, token, raw=b"") == 44002
    assert await errcode(client, TEMPLATE, token, raw=b"touser=x") == 47001
    assert await errcode(client, TEMPLATE, token, raw=b"[1, 2]") == 47001
    assert await errcode(client, TEMPLATE, token, raw=b'{"touser": "\xff"}') == 47001


async def test_unicode_escapes_are_accepted(client: httpx.AsyncClient, token: str) -> None:
    # WeChat once refused \\uXXXX with 40033; the simulator does not hold clients to it.
    raw = (
        b'{"touser":"' + OPENID.encode() + b'","template_id":"' + TEMPLATE_ID.encode() + b'",'
        b'"data":{"keyword1":{"value":"\\u5de7\\u514b\\u529b"},"keyword2":{"value":"1"}}}'
    )
    assert await errcode(client, TEMPLATE, token, raw=raw) == 0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"touser": ""}, 40003),
        ({"touser": "oUser_never_seen_by_this_app"}, 40003),
        ({"touser": 42}, 47001),
        ({"template_id": ""}, 40037),
        ({"template_id": "tmpl_unknown"}, 40037),
        ({"template_id": SUB_ID}, 40037),  # a subscribe template is no template message
        ({"url": "ftp://example.com/x"}, 40066),
        ({"url": "javascript:alert(1)"}, 40066),
        ({"url": "https://"}, 40066),
        ({"miniprogram": "wx123"}, 47001),
        ({"client_msg_id": "x" * 65}, 45067),
        ({"client_msg_id": "单" * 22}, 45067),  # 66 bytes in UTF-8
    ],
)
async def test_request_errors(
    client: httpx.AsyncClient,
    sim: WeChatSimulator,
    token: str,
    overrides: dict[str, Any],
    expected: int,
) -> None:
    sim.add_template(PLAIN, SUB_ID, "subscribe", SUB_KEYS)
    assert await errcode(client, TEMPLATE, token, template_body(**overrides)) == expected
    assert sim.sent() == []


async def test_optional_fields_may_be_empty(client: httpx.AsyncClient, token: str) -> None:
    body = template_body(
        url="",
        client_msg_id="m" * 64,
        miniprogram={"appid": "wxmini00000000001", "pagepath": ""},
    )
    assert await errcode(client, TEMPLATE, token, body) == 0


async def test_a_template_of_another_app_is_invalid(
    client: httpx.AsyncClient, sim: WeChatSimulator
) -> None:
    sim.set_user(COMPAT, OPENID)
    token = await token_for(client, COMPAT)
    sim.add_template(PLAIN, TEMPLATE_ID, "template", ["keyword1", "keyword2"])
    assert await errcode(client, TEMPLATE, token, template_body()) == 40037


async def test_users_must_follow_and_not_be_blacklisted(
    client: httpx.AsyncClient, sim: WeChatSimulator, token: str
) -> None:
    sim.set_user(PLAIN, OPENID, follows=False)
    assert await errcode(client, TEMPLATE, token, template_body()) == 43004
    sim.set_user(PLAIN, OPENID, follows=True, blocked=True)
    assert await errcode(client, TEMPLATE, token, template_body()) == 43019
    sim.set_user(PLAIN, OPENID, blocked=False)
    assert await errcode(client, TEMPLATE, token, template_body()) == 0


def _data(**items: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"keyword1": {"value": "a"}, "keyword2": {"value": "b"}}
    data.update(items)
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.parametrize(
    ("data", "bad"),
    [
        (_data(keyword2=None), "data.keyword2.value"),
        (_data(keyword3={"value": "x"}), "data.keyword3.value"),
        (_data(keyword1={"value": ""}), "data.keyword1.value"),
        (_data(keyword1={"value": "长" * 201}), "data.keyword1.value"),
        (_data(keyword1={"value": 39.8}), "data.keyword1.value"),
        (_data(keyword1="巧克力"), "data.keyword1.value"),
        (_data(keyword2={"value": "b", "color": "red"}), "data.keyword2.color"),
        (_data(keyword2={"value": "b", "color": "#17317"}), "data.keyword2.color"),
        ({}, "data"),
        ("keyword1", "data"),
    ],
)
async def test_invalid_data_is_47003_naming_the_key(
    client: httpx.AsyncClient, token: str, data: Any, bad: str
) -> None:
    answer = await call(client, TEMPLATE, token, template_body(data=data))
    assert answer["errcode"] == 47003
    assert answer["errmsg"].startswith("argument invalid! ")
    assert bad in answer["errmsg"]
    assert re.search(RID, answer["errmsg"])


async def test_the_longest_value_and_dropped_keys_are_fine(
    client: httpx.AsyncClient, token: str
) -> None:
    # `first` and `remark` are silently dropped since the 2023 reform, not refused.
    data = _data(
        keyword1={"value": "长" * 200, "color": "#ABCDEF"},
        first={"value": "hello"},
        remark={"value": "bye"},
    )
    assert await errcode(client, TEMPLATE, token, template_body(data=data)) == 0


async def test_client_msg_id_is_refused_again_for_ten_minutes(
    client: httpx.AsyncClient, sim: WeChatSimulator, token: str
) -> None:
    sim.set_user(PLAIN, OTHER)
    body = template_body(client_msg_id="order-1-shipped")
    assert await errcode(client, TEMPLATE, token, body) == 0
    answer = await call(client, TEMPLATE, token, body)
    assert answer["errcode"] == 45065
    assert answer["errmsg"].startswith("clientmsgid exist")
    # Another user, or another id, is a different message.
    assert (
        await errcode(
            client, TEMPLATE, token, template_body(OTHER, client_msg_id="order-1-shipped")
        )
        == 0
    )
    assert await errcode(client, TEMPLATE, token, template_body(client_msg_id="order-2")) == 0
    await advance(client, 599)
    assert await errcode(client, TEMPLATE, token, body) == 45065
    await advance(client, 1)
    assert await errcode(client, TEMPLATE, token, body) == 0
    assert len(sim.sent(PLAIN)) == 4


async def test_a_refused_send_does_not_claim_its_client_msg_id(
    client: httpx.AsyncClient, sim: WeChatSimulator, token: str
) -> None:
    sim.set_user(PLAIN, OPENID, follows=False)
    body = template_body(client_msg_id="retry-me")
    assert await errcode(client, TEMPLATE, token, body) == 43004
    sim.set_user(PLAIN, OPENID, follows=True)
    assert await errcode(client, TEMPLATE, token, body) == 0


async def test_faults_and_the_request_log_apply(
    client: httpx.AsyncClient, sim: WeChatSimulator, token: str
) -> None:
    sim.add_fault(TEMPLATE, errcode=-1, times=1)
    assert await errcode(client, TEMPLATE, token, template_body()) == -1
    assert sim.sent() == []  # a faulted request never reaches the endpoint
    assert await errcode(client, TEMPLATE, token, template_body()) == 0
    logged = sim.requests(TEMPLATE)
    assert len(logged) == 2
    assert logged[0]["json"] == template_body()
    assert logged[0]["query"] == {"access_token": token}
