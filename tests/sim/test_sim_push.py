"""The push side: callbacks delivered to a tiny Tornado receiver the way WeChat sends them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tornado.netutil import bind_sockets

from wxplatform.clock import ManualClock
from wxplatform.config import AppConfig
from wxplatform.sim import (
    PushResult,
    WeChatSimulator,
    build_push,
    event_message,
    push,
    text_message,
)
from wxplatform.sim.messages import message_crypto, original_id
from wxplatform.wechat.crypto import MessageCrypto
from wxplatform.wechat.payload import parse_json, parse_xml, render_xml
from wxplatform.wechat.signature import sign

from .sim_support import COMPAT, DOC_MP, PLAIN, SAFE, START, Receiver, load_vector, make_app

OPENID = "oUser_4Xq2bKc9mN8pT5rW1yZ3vA"
NONCE = "1514711492"


def as_strings(fields: dict[str, Any]) -> dict[str, str]:
    """What parse_xml gives back for flat fields: every value as text."""
    return {k: str(v) for k, v in fields.items()}


def message(app_id: str, content: str = "你好 <b>&") -> dict[str, Any]:
    return text_message(original_id(app_id), OPENID, content, msg_id=6054768590064713728)


def encrypted_reply(
    app: AppConfig,
    fields: dict[str, Any],
    *,
    key_index: int = 0,
    crypto: MessageCrypto | None = None,
    signature: str | None = None,
) -> bytes:
    """An encrypted passive reply envelope, as a correct edge would build it."""
    plain = render_xml(fields).decode()
    encrypt = (crypto or message_crypto(app)).encrypt(plain, key_index=key_index)
    timestamp, nonce = "1714000123", "987654321"
    msg_signature = signature or sign(app.token.reveal(), timestamp, nonce, encrypt)
    envelope = {
        "Encrypt": encrypt,
        "MsgSignature": msg_signature,
        "TimeStamp": int(timestamp),
        "Nonce": nonce,
    }
    return render_xml(envelope)


def text_reply(sent: dict[str, Any], content: str = "hi") -> dict[str, Any]:
    return {
        "ToUserName": sent["FromUserName"],
        "FromUserName": sent["ToUserName"],
        "CreateTime": 1714000123,
        "MsgType": "text",
        "Content": content,
    }


async def test_plaintext_push_is_signed(apps: dict[str, AppConfig], receiver: Receiver) -> None:
    app = apps[PLAIN]
    fields = message(PLAIN)
    result = await push(app, receiver.base_url, fields, clock=ManualClock(START), nonce=NONCE)
    assert (result.attempts, result.status, result.reply, result.error) == (1, 200, None, None)
    assert result.raw_body == b"success"
    [got] = receiver.received
    assert got.app_id == PLAIN
    timestamp = str(int(START))
    assert got.query == {
        "signature": sign("simtoken", timestamp, NONCE),
        "timestamp": timestamp,
        "nonce": NONCE,
        "openid": OPENID,
    }
    assert got.headers["Content-Type"] == "text/xml"
    assert parse_xml(got.body) == as_strings(fields)


async def test_compatible_push_carries_plaintext_and_encrypt(
    apps: dict[str, AppConfig], receiver: Receiver
) -> None:
    app = apps[COMPAT]
    fields = message(COMPAT)
    result = await push(app, receiver.base_url, fields, nonce=NONCE)
    assert result.ok
    [got] = receiver.received
    q = got.query
    assert q["encrypt_type"] == "aes"
    assert q["signature"] == sign("simtoken", q["timestamp"], NONCE)
    body = parse_xml(got.body)
    assert q["msg_signature"] == sign("simtoken", q["timestamp"], NONCE, body["Encrypt"])
    encrypt = body.pop("Encrypt")
    assert body == as_strings(fields)
    plaintext, key_index = message_crypto(app).decrypt(encrypt)
    assert key_index == 0
    assert parse_xml(plaintext.encode()) == as_strings(fields)


async def test_safe_push_sends_only_the_envelope(
    apps: dict[str, AppConfig], receiver: Receiver
) -> None:
    app = apps[SAFE]
    fields = event_message(original_id(SAFE), OPENID, "subscribe", "qrscene_42")
    result = await push(app, receiver.base_url, fields, nonce=NONCE)
    assert result.ok
    [got] = receiver.received
    body = parse_xml(got.body)
    assert set(body) == {"ToUserName", "Encrypt"}
    assert body["ToUserName"] == original_id(SAFE)
    q = got.query
    assert q["msg_signature"] == sign("simtoken", q["timestamp"], q["nonce"], body["Encrypt"])
    # The receiver holds only the current key: WeChat encrypts with it.
    current_only = MessageCrypto(SAFE, app.encoding_aes_key.reveal())  # type: ignore[union-attr]
    plaintext, _ = current_only.decrypt(body["Encrypt"])
    assert parse_xml(plaintext.encode()) == as_strings(fields)


async def test_safe_push_with_the_previous_key(
    apps: dict[str, AppConfig], receiver: Receiver
) -> None:
    result = await push(apps[SAFE], receiver.base_url, message(SAFE), key_index=1)
    assert result.ok
    encrypt = parse_xml(receiver.received[0].body)["Encrypt"]
    assert message_crypto(apps[SAFE]).decrypt(encrypt)[1] == 1


async def test_json_push_matches_the_official_example() -> None:
    vector = load_vector("dec-doc-safe-json")
    app = make_app(
        vector["appid"],
        kind="mini_program",
        encryption="safe",
        data_format="json",
        token=vector["token"],
        key=vector["encoding_aes_key"],
    )
    query = vector["query"]
    fields = json.loads(vector["expected_plaintext"])
    request = build_push(
        app,
        "https://edge.example",
        fields,
        timestamp=int(query["timestamp"]),
        nonce=query["nonce"],
        random_prefix=bytes.fromhex(vector["expected_random_prefix_hex"]),
    )
    # Byte-exact with the MP push guide: same ciphertext, same signatures.
    assert json.loads(request.body) == {
        "ToUserName": fields["ToUserName"],
        "Encrypt": vector["encrypt"],
    }
    assert request.query == {
        "signature": query["signature"],
        "timestamp": query["timestamp"],
        "nonce": query["nonce"],
        "openid": query["openid"],
        "encrypt_type": "aes",
        "msg_signature": query["msg_signature"],
    }
    assert request.headers["Content-Type"] == "application/json"
    assert request.url.startswith(f"https://edge.example/wx/{vector['appid']}?signature=")


async def test_official_encrypted_json_reply_is_accepted(
    apps: dict[str, AppConfig], receiver: Receiver
) -> None:
    vector = load_vector("enc-doc-json-reply")
    envelope = json.dumps(vector["expected_reply_json"]).encode()
    receiver.answer = lambda _: (200, envelope)
    fields = {"ToUserName": "gh_97417a04a28d", "FromUserName": OPENID, "MsgType": "event"}
    result = await push(apps[DOC_MP], receiver.base_url, fields)
    assert result.error is None
    assert result.reply == json.loads(vector["plaintext"])
    body = parse_json(receiver.received[0].body)
    assert set(body) == {"ToUserName", "Encrypt"}


async def test_stalled_receiver_gets_the_identical_request_again(
    apps: dict[str, AppConfig], receiver: Receiver
) -> None:
    receiver.stall = 100
    result = await push(apps[SAFE], receiver.base_url, message(SAFE), timeout=0.3)
    assert result.attempts == 4  # the first try and 3 retries
    assert len(receiver.received) == 4
    first = receiver.received[0]
    assert all((r.query, r.body) == (first.query, first.body) for r in receiver.received)
    assert result.status is None
    assert result.reply is None
    assert result.error is not None
    assert "0.3 s" in result.error
    assert [a.number for a in result.history] == [1, 2, 3, 4]
    assert all(a.elapsed >= 0.25 for a in result.history)


async def test_answer_on_a_retry_counts(apps: dict[str, AppConfig], receiver: Receiver) -> None:
    receiver.stall = 2
    fields = message(PLAIN)
    receiver.answer = lambda got: (200, render_xml(text_reply(fields)))
    # A generous per-attempt timeout: the answered attempt must fit in it on a busy machine.
    result = await push(apps[PLAIN], receiver.base_url, fields, timeout=1.5, max_retries=3)
    assert result.attempts == 3
    assert result.error is None
    assert result.reply is not None
    assert result.reply["Content"] == "hi"
    assert [a.status for a in result.history] == [None, None, 200]


async def test_no_retries_when_asked(apps: dict[str, AppConfig], receiver: Receiver) -> None:
    receiver.stall = 100
    result = await push(apps[PLAIN], receiver.base_url, message(PLAIN), timeout=0.2, max_retries=0)
    assert result.attempts == 1
    assert len(receiver.received) == 1


async def test_unreachable_edge_is_reported() -> None:
    sockets = bind_sockets(0, address="127.0.0.1")
    port = sockets[0].getsockname()[1]
    sockets[0].close()  # nothing listens there now
    app = make_app(PLAIN)
    result = await push(app, f"http://127.0.0.1:{port}", message(PLAIN), timeout=1)
    assert result.attempts == 4
    assert result.error is not None
    assert "transport error" in result.error


@pytest.mark.parametrize("app_id", [SAFE, COMPAT])
async def test_encrypted_reply_is_verified_and_decrypted(
    apps: dict[str, AppConfig], receiver: Receiver, app_id: str
) -> None:
    app = apps[app_id]
    fields = message(app_id)
    receiver.answer = lambda got: (200, encrypted_reply(app, text_reply(fields, "收到")))
    result = await push(app, receiver.base_url, fields)
    assert result.error is None
    assert result.reply == as_strings(text_reply(fields, "收到"))


async def test_reply_encrypted_with_the_previous_key_is_accepted(
    apps: dict[str, AppConfig], receiver: Receiver
) -> None:
    app = apps[SAFE]
    fields = message(SAFE)
    receiver.answer = lambda got: (200, encrypted_reply(app, text_reply(fields), key_index=1))
    result = await push(app, receiver.base_url, fields)
    assert result.error is None


def _bad_signature(app: AppConfig, sent: dict[str, Any]) -> bytes:
    return encrypted_reply(app, text_reply(sent), signature="0" * 40)


def _other_appid(app: AppConfig, sent: dict[str, Any]) -> bytes:
    crypto = MessageCrypto("wxsomeoneelse0001", app.encoding_aes_key.reveal())  # type: ignore[union-attr]
    return encrypted_reply(app, text_reply(sent), crypto=crypto)


def _plaintext(app: AppConfig, sent: dict[str, Any]) -> bytes:
    return render_xml(text_reply(sent))


def _garbage(app: AppConfig, sent: dict[str, Any]) -> bytes:
    return b"<xml><Encrypt>"


def _no_signature(app: AppConfig, sent: dict[str, Any]) -> bytes:
    fields = parse_xml(encrypted_reply(app, text_reply(sent)))
    del fields["MsgSignature"]
    return render_xml(fields)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (_bad_signature, "bad MsgSignature"),
        (_other_appid, "another appid"),
        (_plaintext, "not encrypted"),
        (_garbage, "unparseable"),
        (_no_signature, "no valid MsgSignature"),
    ],
)
async def test_safe_mode_replies_wechat_would_reject(
    apps: dict[str, AppConfig],
    receiver: Receiver,
    build: Callable[[AppConfig, dict[str, Any]], bytes],
    reason: str,
) -> None:
    app = apps[SAFE]
    fields = message(SAFE)
    receiver.answer = lambda got: (200, build(app, fields))
    result = await push(app, receiver.base_url, fields)
    assert result.attempts == 1
    assert result.status == 200
    assert result.error is not None
    assert reason in result.error
    assert result.reply is None


async def test_compatible_mode_accepts_a_plaintext_reply(
    apps: dict[str, AppConfig], receiver: Receiver
) -> None:
    fields = message(COMPAT)
    receiver.answer = lambda got: (200, render_xml(text_reply(fields)))
    result = await push(apps[COMPAT], receiver.base_url, fields)
    assert result.error is None
    assert result.reply == as_strings(text_reply(fields))


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ((500, b"oops"), "HTTP status 500"),
        ((200, b'{"MsgType": "text"}'), "unparseable"),
        ((200, b"success\n"), "unparseable"),
        ((200, b"<xml><MsgType>text</MsgType></xml>"), "ToUserName"),
        ((200, b"<xml><MsgType>file</MsgType></xml>"), "MsgType"),
    ],
)
async def test_plaintext_replies_wechat_would_reject(
    apps: dict[str, AppConfig], receiver: Receiver, answer: tuple[int, bytes], reason: str
) -> None:
    receiver.answer = lambda got: answer
    result = await push(apps[PLAIN], receiver.base_url, message(PLAIN))
    assert result.attempts == 1
    assert result.error is not None
    assert reason in result.error
    assert result.raw_body == answer[1]


async def test_empty_body_means_no_reply(apps: dict[str, AppConfig], receiver: Receiver) -> None:
    receiver.answer = lambda got: (200, b"")
    result = await push(apps[SAFE], receiver.base_url, message(SAFE))
    assert (result.error, result.reply, result.raw_body) == (None, None, b"")


async def test_push_through_the_control_api(
    sim: WeChatSimulator, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    response = await client.post(
        "/_sim/push",
        json={"app_id": SAFE, "edge_url": receiver.base_url, "text": "hello", "openid": OPENID},
    )
    assert response.status_code == 200
    result = response.json()
    assert result["attempts"] == 1
    assert result["status"] == 200
    assert result["error"] is None
    assert result["raw_body"] == "success"
    [got] = receiver.received
    assert got.query["openid"] == OPENID
    assert got.query["timestamp"] == str(int(sim.clock.now()))
    encrypt = parse_xml(got.body)["Encrypt"]
    plaintext, _ = message_crypto(sim.apps[SAFE]).decrypt(encrypt)
    pushed = parse_xml(plaintext.encode())
    assert (pushed["MsgType"], pushed["Content"]) == ("text", "hello")
    assert pushed["ToUserName"] == original_id(SAFE)


async def test_control_push_with_fields_and_errors(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    fields = message(PLAIN)
    receiver.answer = lambda got: (200, render_xml(text_reply(fields)))
    body = {"app_id": PLAIN, "edge_url": receiver.base_url, "fields": fields}
    result = (await client.post("/_sim/push", json=body)).json()
    assert result["error"] is None
    assert result["reply"]["Content"] == "hi"
    unknown = await client.post("/_sim/push", json={**body, "app_id": "wxnobody"})
    assert unknown.status_code == 404
    empty = await client.post("/_sim/push", json={"app_id": PLAIN, "edge_url": receiver.base_url})
    assert empty.status_code == 400


async def test_push_result_json(apps: dict[str, AppConfig], receiver: Receiver) -> None:
    result: PushResult = await push(apps[PLAIN], receiver.base_url, message(PLAIN))
    view = result.to_json()
    assert view["raw_body"] == "success"
    assert view["request"]["url"].startswith(f"{receiver.base_url}/wx/{PLAIN}?signature=")
    assert json.loads(json.dumps(view)) == view
