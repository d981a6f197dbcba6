"""The edge over real HTTP, delivering to a real core on real Redis."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from tests.edge.signing import fetch, push_request, text_fields, verify_url
from tests.support import Stack, app_table, make_settings, new_app_id, running_stack
from tests.support import app_by_prefix as app
from wxplatform.clock import ManualClock
from wxplatform.wechat.crypto import MessageCrypto
from wxplatform.wechat.payload import parse_xml
from wxplatform.wechat.signature import sign


@pytest.fixture
async def stack(redis_client: redis.Redis) -> AsyncIterator[Stack]:
    settings = make_settings(
        app_table(new_app_id("wxplain")),
        app_table(new_app_id("wxsafe"), encryption="safe"),
        app_table(new_app_id("wxquiet"), auto_reply=[], default_reply=None),
    )
    async with running_stack(settings, redis_client, with_edge=True) as running:
        yield running


async def test_verification_echoes_when_signed(stack: Stack) -> None:
    response = await fetch(verify_url(stack.edge_url, app(stack, "wxplain"), "4375120948345356249"))
    assert response.code == 200
    assert response.body == b"4375120948345356249"
    assert response.headers["X-Request-Id"]


@pytest.mark.parametrize("signature", ["", "0" * 40, "F464B24FC39322E44B38AA78F5EDD27BD1441696"])
async def test_verification_with_a_bad_signature_is_forbidden(stack: Stack, signature: str) -> None:
    response = await fetch(
        verify_url(stack.edge_url, app(stack, "wxplain"), "secretecho", signature=signature)
    )
    assert response.code == 403
    assert b"secretecho" not in response.body


async def test_verification_without_a_signature_is_forbidden(stack: Stack) -> None:
    parts = urllib.parse.urlsplit(verify_url(stack.edge_url, app(stack, "wxplain"), "secretecho"))
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "signature"]
    response = await fetch(parts._replace(query=urllib.parse.urlencode(query)).geturl())
    assert response.code == 403
    assert b"secretecho" not in response.body


async def test_safe_mode_apps_verify_with_the_plain_signature(stack: Stack) -> None:
    response = await fetch(verify_url(stack.edge_url, app(stack, "wxsafe"), "hello-safe"))
    assert (response.code, response.body) == (200, b"hello-safe")


async def test_text_push_gets_the_rule_reply(stack: Stack) -> None:
    plain = app(stack, "wxplain")
    before = int(time.time())
    url, body = push_request(stack.edge_url, plain, text_fields("hello"))
    response = await fetch(url, body)
    assert response.code == 200
    reply = parse_xml(response.body)
    assert reply["ToUserName"] == "oUserEdge1"
    assert reply["FromUserName"] == "gh_edgetest"
    assert reply["MsgType"] == "text"
    assert reply["Content"] == "hi there"
    assert before <= int(reply["CreateTime"]) <= int(time.time())
    assert b"<CreateTime>" + reply["CreateTime"].encode() + b"</CreateTime>" in response.body


async def test_push_without_a_reply_answers_success(stack: Stack) -> None:
    url, body = push_request(stack.edge_url, app(stack, "wxquiet"), text_fields("hello"))
    response = await fetch(url, body)
    assert (response.code, response.body) == (200, b"success")


async def test_push_with_a_bad_signature_is_forbidden_and_not_delivered(stack: Stack) -> None:
    plain = app(stack, "wxplain")
    url, body = push_request(stack.edge_url, plain, text_fields("hello", msg_id="9191"))
    response = await fetch(url.replace("signature=", "signature=0"), body)
    assert response.code == 403
    # The message was not delivered: a correctly signed copy is new, not a duplicate.
    url, body = push_request(stack.edge_url, plain, text_fields("hello", msg_id="9191"))
    assert parse_xml((await fetch(url, body)).body)["Content"] == "hi there"


async def test_safe_mode_push_gets_an_encrypted_signed_reply(stack: Stack) -> None:
    safe = app(stack, "wxsafe")
    url, body = push_request(stack.edge_url, safe, text_fields("hello"), encrypt=True, nonce="777")
    response = await fetch(url, body)
    assert response.code == 200
    envelope = parse_xml(response.body)
    assert envelope["Nonce"] == "777"
    expected = sign(
        safe.token.reveal(), envelope["TimeStamp"], envelope["Nonce"], envelope["Encrypt"]
    )
    assert envelope["MsgSignature"] == expected
    assert safe.encoding_aes_key is not None
    plaintext, _ = MessageCrypto(safe.app_id, safe.encoding_aes_key.reveal()).decrypt(
        envelope["Encrypt"]
    )
    assert parse_xml(plaintext.encode())["Content"] == "hi there"


async def test_plaintext_push_to_a_safe_app_is_refused(stack: Stack) -> None:
    url, body = push_request(stack.edge_url, app(stack, "wxsafe"), text_fields("hello"))
    assert (await fetch(url, body)).code == 403


async def test_unknown_app_and_malformed_bodies(stack: Stack) -> None:
    plain = app(stack, "wxplain")
    url, _ = push_request(stack.edge_url, plain, text_fields("hello"))
    assert (await fetch(url.replace(plain.app_id, "wxnobody"), b"<xml/>")).code == 404
    for bad in (
        b"not xml",
        b"<!DOCTYPE x [<!ENTITY a 'b'>]><xml>&a;</xml>",
        b"<xml><MsgType>text</MsgType></xml>",
    ):
        response = await fetch(url, bad)
        assert response.code == 400
        assert b"Traceback" not in response.body


async def test_health_and_metrics(stack: Stack) -> None:
    assert (await fetch(f"{stack.edge_url}/healthz")).code == 200
    url, body = push_request(stack.edge_url, app(stack, "wxplain"), text_fields("hello"))
    await fetch(url, body)
    metrics = await fetch(f"{stack.edge_url}/metrics")
    assert metrics.code == 200
    assert b"wxp_edge_callbacks_total" in metrics.body
    assert (await fetch(f"{stack.edge_url}/nothing-here")).code == 404


@pytest.mark.parametrize(
    ("vector_id", "app_fields"),
    [
        ("dec-sample-python-compat-xml", {"encryption": "compatible"}),
        (
            "dec-doc-safe-json",
            {"encryption": "safe", "kind": "mini_program", "data_format": "json"},
        ),
    ],
)
async def test_official_encrypted_pushes_are_accepted(
    redis_client: redis.Redis, vectors: dict[str, Any], vector_id: str, app_fields: dict[str, Any]
) -> None:
    """The official requests as they are: verified by `msg_signature` alone.

    The compatible-mode sample carries no URL `signature` (WeChat's guide: never verify
    an encrypted push with it), and it must not be required.
    """
    vector = next(v for v in vectors["decrypt"] if v["id"] == vector_id)
    table = app_table(
        vector["appid"],
        token=vector["token"],
        encoding_aes_key=vector["encoding_aes_key"],
        auto_reply=[],
        default_reply=None,
        **app_fields,
    )
    clock = ManualClock(int(vector["query"]["timestamp"]))
    settings = make_settings(table)
    async with running_stack(settings, redis_client, with_edge=True, clock=clock) as stack:
        query = urllib.parse.urlencode(vector["query"])
        url = f"{stack.edge_url}/wx/{vector['appid']}?{query}"
        response = await fetch(url, vector["body"].encode())
        assert (response.code, response.body) == (200, b"success")
        if "signature" not in vector["query"]:
            # A URL `signature` covers no body: its presence adds nothing, nor its value.
            forged = f"{url}&signature={'0' * 40}"
            assert (await fetch(forged, vector["body"].encode())).code == 200
