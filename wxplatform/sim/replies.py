"""Judging an edge's answer to a push the way WeChat does (docs/wechat.md §2.5, §4).

`success` or an empty body means "no reply". Anything else must parse in the app's
data format; safe-mode apps must answer with the encrypted envelope (Encrypt,
MsgSignature, TimeStamp, Nonce), compatible-mode apps may answer either way. An
official account's reply must also be a well-formed passive reply addressed back to
the sender. Problems come back as short reason strings, never with key material.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wxplatform.config import AppConfig
from wxplatform.sim.messages import message_crypto
from wxplatform.wechat.crypto import AppIdMismatch, CryptoError
from wxplatform.wechat.payload import MalformedPayload, Payload, parse_json, parse_xml
from wxplatform.wechat.signature import sign, signature_matches

__all__ = ["ReplyVerdict", "check_reply"]

REPLY_TYPES = frozenset(
    {"text", "image", "voice", "video", "music", "news", "transfer_customer_service"}
)
_ENVELOPE = ("Encrypt", "MsgSignature", "TimeStamp", "Nonce")


@dataclass(frozen=True)
class ReplyVerdict:
    """What WeChat makes of a reply: the plaintext fields (if any) and why it rejects it."""

    reply: dict[str, Any] | None
    error: str | None


class _Rejected(Exception):
    def __init__(self, reason: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


def check_reply(app: AppConfig, status: int, body: bytes, sent: Mapping[str, Any]) -> ReplyVerdict:
    """Judge the edge's answer (`status`, `body`) to a push of the fields `sent`."""
    if status != 200:
        return ReplyVerdict(None, f"HTTP status {status}")
    # Only these two exact bodies mean "no reply"; they need no encryption (§4.2).
    if body in (b"", b"success"):
        return ReplyVerdict(None, None)
    try:
        fields = _parse(app, body)
        if "Encrypt" in fields:
            if app.encryption == "plaintext":
                raise _Rejected("encrypted reply from a plaintext-mode app")
            fields = _open_envelope(app, fields)
        elif app.encryption == "safe":
            raise _Rejected("safe-mode reply is not encrypted")
        if app.kind == "official_account":
            _check_passive_reply(fields, sent)
    except _Rejected as exc:
        return ReplyVerdict(exc.reply, exc.reason)
    return ReplyVerdict(fields, None)


def _parse(app: AppConfig, body: bytes) -> Payload:
    parser = parse_json if app.data_format == "json" else parse_xml
    try:
        return parser(body)
    except MalformedPayload as exc:
        raise _Rejected(f"unparseable reply ({exc.kind})") from None


def _open_envelope(app: AppConfig, fields: Payload) -> Payload:
    values: dict[str, str] = {}
    for name in _ENVELOPE:
        value = fields.get(name)
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            raise _Rejected(f"encrypted reply has no valid {name}")
        values[name] = str(value)
    expected = sign(app.token.reveal(), values["TimeStamp"], values["Nonce"], values["Encrypt"])
    if not signature_matches(expected, values["MsgSignature"]):
        raise _Rejected("bad MsgSignature on encrypted reply")
    try:
        plaintext, _ = message_crypto(app).decrypt(values["Encrypt"])
    except AppIdMismatch:
        raise _Rejected("encrypted reply is for another appid") from None
    except CryptoError as exc:
        raise _Rejected(f"encrypted reply does not decrypt ({exc.code})") from None
    try:
        return _parse(app, plaintext.encode())
    except _Rejected as exc:
        raise _Rejected(f"decrypted {exc.reason}") from None


def _check_passive_reply(fields: Payload, sent: Mapping[str, Any]) -> None:
    msg_type = fields.get("MsgType")
    if not isinstance(msg_type, str) or msg_type not in REPLY_TYPES:
        raise _Rejected("reply has no valid MsgType", fields)
    # A reply swaps the addresses: to the user's openid, from the account's gh_ id.
    if "FromUserName" in sent and fields.get("ToUserName") != sent["FromUserName"]:
        raise _Rejected("reply ToUserName is not the sender's openid", fields)
    if "ToUserName" in sent and fields.get("FromUserName") != sent["ToUserName"]:
        raise _Rejected("reply FromUserName is not the account's id", fields)
    create_time = fields.get("CreateTime")
    if not (isinstance(create_time, int) and not isinstance(create_time, bool)) and not (
        isinstance(create_time, str) and create_time.isdigit()
    ):
        raise _Rejected("reply CreateTime is not an integer", fields)
    if msg_type == "text" and not isinstance(fields.get("Content"), str):
        raise _Rejected("text reply has no Content", fields)
