"""Building callback pushes the way WeChat sends them (docs/wechat.md §1, §2, §3).

`build_push` is pure: given an app, the inbound fields, a timestamp and a nonce it
returns the exact URL, headers and body WeChat would send. `push.py` does the sending;
tests can use this module directly to craft requests by hand.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from wxplatform.config import AppConfig
from wxplatform.wechat.crypto import MessageCrypto
from wxplatform.wechat.payload import render_xml
from wxplatform.wechat.signature import sign

__all__ = [
    "PushRequest",
    "build_push",
    "event_message",
    "message_crypto",
    "new_nonce",
    "original_id",
    "render_body",
    "text_message",
]


def original_id(app_id: str) -> str:
    """A stable stand-in for an app's original id (`gh_` + 12 hex), used as ToUserName."""
    return "gh_" + hashlib.sha1(app_id.encode(), usedforsecurity=False).hexdigest()[:12]


def new_nonce() -> str:
    """A nonce like WeChat's: a decimal number of 9 or 10 digits."""
    return str(100_000_000 + secrets.randbelow(4_000_000_000))


def _new_msg_id() -> int:
    # Real MsgIds are 64-bit integers, usually 19 digits; stay below 2**63.
    return 10**18 + secrets.randbelow(8 * 10**18)


def text_message(
    app_to: str,
    openid: str,
    content: str,
    msg_id: int | None = None,
    create_time: int | None = None,
) -> dict[str, Any]:
    """Fields of a user's text message to the account `app_to` (a `gh_…` id)."""
    return {
        "ToUserName": app_to,
        "FromUserName": openid,
        "CreateTime": int(time.time()) if create_time is None else create_time,
        "MsgType": "text",
        "Content": content,
        "MsgId": _new_msg_id() if msg_id is None else msg_id,
    }


def event_message(
    app_to: str,
    openid: str,
    event: str,
    event_key: str | None = None,
    *,
    create_time: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fields of an event push (`subscribe`, `CLICK`, …); `extra` adds event fields."""
    fields: dict[str, Any] = {
        "ToUserName": app_to,
        "FromUserName": openid,
        "CreateTime": int(time.time()) if create_time is None else create_time,
        "MsgType": "event",
        "Event": event,
    }
    if event_key is not None:
        fields["EventKey"] = event_key
    fields.update(extra or {})
    return fields


def render_body(app: AppConfig, fields: Mapping[str, Any]) -> bytes:
    """Fields as the app's data format: XML (CDATA text, bare ints) or compact UTF-8 JSON."""
    if app.data_format == "json":
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    return render_xml(fields)


def message_crypto(app: AppConfig) -> MessageCrypto:
    """The app's MessageCrypto (current and previous key); the app must have a key."""
    if app.encoding_aes_key is None:
        raise ValueError(f"app {app.app_id} has no EncodingAESKey")
    previous = app.previous_encoding_aes_key
    return MessageCrypto(
        app.app_id,
        app.encoding_aes_key.reveal(),
        previous.reveal() if previous is not None else None,
    )


@dataclass(frozen=True)
class PushRequest:
    """One push exactly as it goes on the wire; retries re-send it unchanged."""

    url: str
    body: bytes
    headers: dict[str, str]
    timestamp: str
    nonce: str
    query: dict[str, str] = field(default_factory=dict)


def build_push(
    app: AppConfig,
    edge_base_url: str,
    fields: Mapping[str, Any],
    *,
    timestamp: int,
    nonce: str,
    key_index: int = 0,
    random_prefix: bytes | None = None,
) -> PushRequest:
    """The POST WeChat sends to `{edge_base_url}/wx/{app_id}` for these fields.

    `key_index=1` encrypts with the previous EncodingAESKey (a push sent just before
    the account's key was changed).
    """
    token = app.token.reveal()
    ts = str(timestamp)
    # The URL `signature` covers only token/timestamp/nonce, in every mode (§1).
    query = {"signature": sign(token, ts, nonce), "timestamp": ts, "nonce": nonce}
    openid = fields.get("FromUserName")
    if isinstance(openid, str) and openid:
        query["openid"] = openid
    plain = render_body(app, fields)
    if app.encryption == "plaintext":
        body = plain
    else:
        encrypt = message_crypto(app).encrypt(
            plain.decode(), key_index=key_index, random_prefix=random_prefix
        )
        query["encrypt_type"] = "aes"
        query["msg_signature"] = sign(token, ts, nonce, encrypt)
        if app.encryption == "safe":
            # Safe mode sends only the account id and the ciphertext (§2.4).
            envelope: dict[str, Any] = {
                "ToUserName": fields.get("ToUserName", ""),
                "Encrypt": encrypt,
            }
        else:
            # Compatible mode repeats the plaintext fields next to Encrypt.
            envelope = {**fields, "Encrypt": encrypt}
        body = render_body(app, envelope)
    content_type = "application/json" if app.data_format == "json" else "text/xml"
    # WeChat's push client identifies itself as an ancient browser.
    headers = {"Content-Type": content_type, "User-Agent": "Mozilla/4.0", "Accept": "*/*"}
    url = f"{edge_base_url.rstrip('/')}/wx/{quote(app.app_id, safe='')}?{urlencode(query)}"
    return PushRequest(url, body, headers, ts, nonce, query)
