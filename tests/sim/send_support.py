"""Helpers for the simulator's send-endpoint tests: tokens, calls, common bodies."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from .sim_support import RID, get_token

OPENID = "oUser_send_0000000000000001"
OTHER = "oUser_send_0000000000000002"
TEMPLATE_ID = "tmplShipped_0000000000000000000000000001"
SUB_ID = "subPaid_00000000000000000000000000000001"

TEMPLATE = "/cgi-bin/message/template/send"
CUSTOM = "/cgi-bin/message/custom/send"
BIZSEND = "/cgi-bin/message/subscribe/bizsend"
SUBSCRIBE = "/cgi-bin/message/subscribe/send"

SUB_KEYS = {"thing1": "thing", "amount2": "amount", "time3": "time"}
SUB_DATA = {
    "thing1": {"value": "订单支付成功"},
    "amount2": {"value": "¥99.00"},
    "time3": {"value": "2024年4月26日 12:00"},
}


async def token_for(client: httpx.AsyncClient, app_id: str) -> str:
    """A fresh access token for `app_id`."""
    body = await get_token(client, app_id)
    return str(body["access_token"])


async def call(
    client: httpx.AsyncClient, path: str, token: str | None, body: Any = None, *, raw: bytes = b""
) -> dict[str, Any]:
    """POST `body` as JSON (or `raw` bytes) with `?access_token=` and decode the answer."""
    params = {} if token is None else {"access_token": token}
    content = raw if body is None else json.dumps(body, ensure_ascii=False).encode()
    response = await client.post(path, params=params, content=content)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json; encoding=utf-8"
    answer: dict[str, Any] = response.json()
    return answer


async def errcode(
    client: httpx.AsyncClient, path: str, token: str | None, body: Any = None, *, raw: bytes = b""
) -> int:
    """The errcode of a call; errors must carry WeChat's `rid` suffix."""
    answer = await call(client, path, token, body, raw=raw)
    code = int(answer["errcode"])
    if code:
        assert re.search(RID, answer["errmsg"]), answer
        assert "msgid" not in answer
    else:
        assert answer["errmsg"] == "ok"
    return code


def template_body(openid: str = OPENID, **overrides: Any) -> dict[str, Any]:
    """A valid template message for TEMPLATE_ID (keys keyword1, keyword2)."""
    body: dict[str, Any] = {
        "touser": openid,
        "template_id": TEMPLATE_ID,
        "url": "https://example.com/orders/1",
        "data": {
            "keyword1": {"value": "巧克力", "color": "#173177"},
            "keyword2": {"value": "39.8元"},
        },
    }
    body.update(overrides)
    return body


def subscribe_body(openid: str = OPENID, **overrides: Any) -> dict[str, Any]:
    """A valid subscribe message for SUB_ID."""
    body: dict[str, Any] = {"touser": openid, "template_id": SUB_ID, "data": dict(SUB_DATA)}
    body.update(overrides)
    return body


def text_body(openid: str = OPENID, content: str = "您好") -> dict[str, Any]:
    """A customer-service text message."""
    return {"touser": openid, "msgtype": "text", "text": {"content": content}}
