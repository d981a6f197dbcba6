"""Opening a push and sealing its reply, without an HTTP server (edge/push.py)."""

from __future__ import annotations

import base64

import pytest

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import passive_reply_pb2 as pr
from edge.errors import BadParameters, BadPayload, SignatureMismatch, StaleTimestamp
from edge.push import open_push, seal_reply, verify_url
from tests.support import AES_KEY, app_table, make_settings
from wxplatform.config import AppConfig
from wxplatform.wechat.crypto import MessageCrypto
from wxplatform.wechat.payload import parse_xml, render_xml
from wxplatform.wechat.signature import sign

NOW = 1_767_000_000.0
WINDOW = 300


def app(encryption: str = "plaintext") -> AppConfig:
    table = app_table("wxpush1", encryption=encryption, encoding_aes_key=AES_KEY)
    return make_settings(table).apps["wxpush1"]


def text_xml(content: str = "hi") -> bytes:
    return render_xml(
        {
            "ToUserName": "gh_push",
            "FromUserName": "oUser1",
            "CreateTime": int(NOW),
            "MsgType": "text",
            "Content": content,
            "MsgId": "7001",
        }
    )


def args(**values: str) -> dict[str, list[bytes]]:
    return {name: [value.encode()] for name, value in values.items()}


def plaintext_push(target: AppConfig, timestamp: float = NOW) -> dict[str, list[bytes]]:
    ts = str(int(timestamp))
    return args(signature=sign(target.token.reveal(), ts, "n1"), timestamp=ts, nonce="n1")


def encrypted_push(target: AppConfig, ciphertext: str) -> tuple[dict[str, list[bytes]], bytes]:
    """The query and body of a safe-mode push of `ciphertext`, signed."""
    ts = str(int(NOW))
    query = args(
        timestamp=ts,
        nonce="n9",
        encrypt_type="aes",
        msg_signature=sign(target.token.reveal(), ts, "n9", ciphertext),
    )
    return query, render_xml({"ToUserName": "gh_push", "Encrypt": ciphertext})


def test_a_signed_plaintext_push_opens_into_a_message() -> None:
    target = app()
    opened = open_push(target, None, plaintext_push(target), text_xml(), now=NOW, window=WINDOW)
    assert opened.message is not None
    assert opened.message.text.content == "hi"
    assert opened.message.transport.encryption == inbound.ENCRYPTION_MODE_PLAINTEXT
    assert (opened.message.transport.signature_timestamp, opened.nonce) == (int(NOW), "n1")
    assert opened.key_index is None


def test_a_stale_timestamp_is_its_own_refusal_not_a_bad_signature() -> None:
    target = app()
    old = plaintext_push(target, timestamp=NOW - WINDOW - 1)
    with pytest.raises(StaleTimestamp):
        open_push(target, None, old, text_xml(), now=NOW, window=WINDOW)
    forged = plaintext_push(target)
    forged["signature"] = [b"0" * 40]
    with pytest.raises(SignatureMismatch) as caught:
        open_push(target, None, forged, text_xml(), now=NOW, window=WINDOW)
    assert caught.value.reason == "bad_signature"


def test_repeated_parameters_are_refused() -> None:
    target = app()
    query = plaintext_push(target)
    query["nonce"] = [b"n1", b"n2"]
    with pytest.raises(BadParameters) as caught:
        open_push(target, None, query, text_xml(), now=NOW, window=WINDOW)
    assert caught.value.reason == "duplicate_param"


def test_url_verification_answers_the_echostr_only_when_signed() -> None:
    target = app("safe")  # the handshake is plaintext-signed in every mode
    query = plaintext_push(target) | args(echostr="e-123")
    assert verify_url(target, query, now=NOW, window=WINDOW) == "e-123"
    query["echostr"] = [b"other"]  # the echostr is not signed; the rest still holds
    assert verify_url(target, query, now=NOW, window=WINDOW) == "other"
    query["nonce"] = [b"n2"]
    with pytest.raises(SignatureMismatch):
        verify_url(target, query, now=NOW, window=WINDOW)


def test_a_safe_mode_push_opens_and_its_reply_is_sealed_with_the_same_key() -> None:
    target = app("safe")
    crypto = MessageCrypto(target.app_id, AES_KEY)
    ciphertext = crypto.encrypt(text_xml().decode())
    query, body = encrypted_push(target, ciphertext)
    opened = open_push(target, crypto, query, body, now=NOW, window=WINDOW)
    assert opened.message is not None
    assert opened.key_index == 0
    assert opened.message.transport.encryption == inbound.ENCRYPTION_MODE_SAFE

    sealed = seal_reply(
        target, crypto, opened, pr.PassiveReply(text=pr.TextReply(content="pong")), now=NOW + 1
    )
    assert sealed is not None
    envelope = parse_xml(sealed)
    expected = sign(target.token.reveal(), str(int(NOW + 1)), "n9", str(envelope["Encrypt"]))
    assert (envelope["MsgSignature"], envelope["Nonce"]) == (expected, "n9")
    plaintext, key_index = crypto.decrypt(str(envelope["Encrypt"]))
    assert key_index == 0
    assert parse_xml(plaintext.encode())["Content"] == "pong"


def test_a_tampered_ciphertext_is_refused_after_the_signature() -> None:
    target = app("safe")
    crypto = MessageCrypto(target.app_id, AES_KEY)
    ciphertext = crypto.encrypt(text_xml().decode())
    # Cut short: no longer whole AES blocks, whatever the random prefix was.
    tampered = base64.b64encode(base64.b64decode(ciphertext)[:-3]).decode()
    query, body = encrypted_push(target, tampered)
    with pytest.raises(BadPayload) as caught:
        open_push(target, crypto, query, body, now=NOW, window=WINDOW)
    assert caught.value.reason.startswith("decrypt_")


def test_no_reply_seals_to_nothing() -> None:
    target = app()
    opened = open_push(target, None, plaintext_push(target), text_xml(), now=NOW, window=WINDOW)
    assert seal_reply(target, None, opened, pr.PassiveReply(), now=NOW) is None
