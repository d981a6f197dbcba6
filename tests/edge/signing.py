"""Builds callbacks the way WeChat signs them, for edge tests."""

from __future__ import annotations

import secrets
import time
import urllib.parse
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from wxplatform.config import AppConfig
from wxplatform.wechat.crypto import MessageCrypto
from wxplatform.wechat.payload import render_xml
from wxplatform.wechat.signature import sign


def text_fields(content: str, msg_id: str = "5001", openid: str = "oUserEdge1") -> dict[str, Any]:
    """The XML fields of a text push."""
    return {
        "ToUserName": "gh_edgetest",
        "FromUserName": openid,
        "CreateTime": int(time.time()),
        "MsgType": "text",
        "Content": content,
        "MsgId": msg_id,
    }


def verify_url(
    base: str, app: AppConfig, echostr: str = "echo123", *, signature: str | None = None
) -> str:
    """A GET verification URL, correctly signed unless `signature` is given."""
    ts, nonce = str(int(time.time())), "98765"
    sig = signature if signature is not None else sign(app.token.reveal(), ts, nonce)
    query = urllib.parse.urlencode(
        {"signature": sig, "timestamp": ts, "nonce": nonce, "echostr": echostr}
    )
    return f"{base}/wx/{app.app_id}?{query}"


def push_request(
    base: str,
    app: AppConfig,
    fields: dict[str, Any],
    *,
    encrypt: bool = False,
    nonce: str | None = None,
    timestamp: int | None = None,
) -> tuple[str, bytes]:
    """URL and body of a push, plaintext or encrypted (safe mode), correctly signed.

    Each push gets a fresh random nonce, as WeChat's do, unless one is given.
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or str(secrets.randbelow(10**9))
    query = {"signature": sign(app.token.reveal(), ts, nonce), "timestamp": ts, "nonce": nonce,
             "openid": fields["FromUserName"]}  # fmt: skip
    body = render_xml(fields)
    if encrypt:
        assert app.encoding_aes_key is not None
        crypto = MessageCrypto(app.app_id, app.encoding_aes_key.reveal())
        sealed = crypto.encrypt(body.decode())
        body = render_xml({"ToUserName": fields["ToUserName"], "Encrypt": sealed})
        query |= {
            "encrypt_type": "aes",
            "msg_signature": sign(app.token.reveal(), ts, nonce, sealed),
        }
    return f"{base}/wx/{app.app_id}?{urllib.parse.urlencode(query)}", body


async def fetch(url: str, body: bytes | None = None) -> HTTPResponse:
    """GET (no body) or POST `url` without raising for HTTP errors."""
    method = "GET" if body is None else "POST"
    return await AsyncHTTPClient().fetch(
        url, method=method, body=body, raise_error=False, request_timeout=10
    )
