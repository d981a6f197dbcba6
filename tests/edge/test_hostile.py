"""Hostile input over real HTTP, against a real edge delivering to a real core and Redis.

The callback URL is public: anyone on the internet can send it anything. Each case here
is one thing an attacker (or a broken proxy) can send, and checks the same four facts:
the exact 4xx status, a body that says nothing beyond the status line (no stack trace,
no hint of which check failed), nothing appended to any app's event stream, and the
`wxp_edge_rejected_total` counter moving for the expected reason, so the refusal is
visible to operators. The last cases check what must *not* be refused: unknown message
and event types, and WeChat's own retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import logging
import random
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import redis.asyncio as redis
from google.protobuf import json_format
from tornado.httpclient import HTTPResponse

from acme.wxplatform.v1.inbound_message_pb2 import InboundMessage
from tests.edge.signing import fetch, push_request, text_fields
from tests.support import Stack, app_table, make_settings, new_app_id, running_stack, sample
from tests.support import app_by_prefix as app
from wxplatform.config import AppConfig
from wxplatform.core.adapters.redis_keys import app_key
from wxplatform.wechat.crypto import BadCiphertext, MessageCrypto
from wxplatform.wechat.payload import parse_xml, render_xml
from wxplatform.wechat.signature import sign

ECHO = "echo-must-not-leak"


@pytest.fixture
async def stack(redis_client: redis.Redis) -> AsyncIterator[Stack]:
    settings = make_settings(
        app_table(new_app_id("wxplain")),
        app_table(new_app_id("wxsafe"), encryption="safe"),
        app_table(new_app_id("wxquiet"), auto_reply=[], default_reply=None),
        app_table(new_app_id("wxhush"), encryption="safe", auto_reply=[], default_reply=None),
        app_table(
            new_app_id("wxjson"),
            kind="mini_program",
            data_format="json",
            encryption="safe",
            auto_reply=[],
            default_reply=None,
        ),
    )
    async with running_stack(settings, redis_client, with_edge=True) as running:
        yield running


# --- requests -----------------------------------------------------------------------


def new_nonce() -> str:
    return str(secrets.randbelow(10**9))


def new_msg_id() -> str:
    return str(secrets.randbelow(10**18))


def plain_query(app: AppConfig, *, timestamp: str | None = None) -> list[tuple[str, str]]:
    """`signature`, `timestamp`, `nonce`, correctly signed for `timestamp` (default now)."""
    ts = str(int(time.time())) if timestamp is None else timestamp
    nonce = new_nonce()
    return [("signature", sign(app.token.reveal(), ts, nonce)), ("timestamp", ts), ("nonce", nonce)]


def url_for(stack: Stack, app: AppConfig, query: list[tuple[str, str]]) -> str:
    return f"{stack.edge_url}/wx/{app.app_id}?{urllib.parse.urlencode(query)}"


def text_xml(content: str = "hello", *, raw_content: str | None = None) -> str:
    """A text push's XML; `raw_content` goes into `<Content>` verbatim, unescaped."""
    placeholder = "@@CONTENT@@"
    xml = render_xml(text_fields(placeholder, msg_id=new_msg_id())).decode()
    verbatim = raw_content if raw_content is not None else f"<![CDATA[{content}]]>"
    return xml.replace(f"<![CDATA[{placeholder}]]>", verbatim)


def callback(
    stack: Stack, method: str, query: list[tuple[str, str]] | None = None
) -> tuple[str, bytes | None]:
    """URL and body of a GET verification or a plaintext POST push to the plain app."""
    plain = app(stack, "wxplain")
    query = plain_query(plain) if query is None else query
    if method == "GET":
        return url_for(stack, plain, [*query, ("echostr", ECHO)]), None
    return url_for(stack, plain, query), text_xml().encode()


def seal(app: AppConfig, plaintext: str, *, receiver: str | None = None) -> str:
    """The `Encrypt` value of `plaintext` with the app's key, addressed to `receiver`."""
    assert app.encoding_aes_key is not None
    return MessageCrypto(receiver or app.app_id, app.encoding_aes_key.reveal()).encrypt(plaintext)


def encrypted_url(stack: Stack, app: AppConfig, encrypt: str) -> str:
    """A safe-mode push URL whose `msg_signature` covers `encrypt`."""
    query = plain_query(app)
    ts, nonce = query[1][1], query[2][1]
    signature = sign(app.token.reveal(), ts, nonce, encrypt)
    return url_for(stack, app, [*query, ("encrypt_type", "aes"), ("msg_signature", signature)])


def xml_envelope(encrypt: str) -> bytes:
    return render_xml({"ToUserName": "gh_edgetest", "Encrypt": encrypt})


def json_envelope(encrypt: str) -> bytes:
    return json.dumps({"ToUserName": "gh_minitest", "Encrypt": encrypt}).encode()


def json_text(**overrides: Any) -> str:
    """A mini program's JSON text push (docs/wechat.md §3.3)."""
    fields: dict[str, Any] = {
        "ToUserName": "gh_minitest",
        "FromUserName": "oMiniUser1",
        "CreateTime": int(time.time()),
        "MsgType": "text",
        "Content": "hello",
        "MsgId": int(new_msg_id()),
    }
    return json.dumps(fields | overrides)


# --- what a refusal must look like --------------------------------------------------


def status_line(status: int) -> bytes:
    """The only body a refusal may carry: the status line, as `write_error` renders it."""
    return f"{status} {http.client.responses[status]}\n".encode()


def rejected(reason: str) -> float:
    return sample("wxp_edge_rejected_total", reason=reason)


def counted(app_label: str, method: str, status: int) -> float:
    return sample("wxp_edge_callbacks_total", app_id=app_label, method=method, status=str(status))


async def delivered(stack: Stack, redis_client: redis.Redis) -> int:
    """Events appended to any of the stack's apps' streams."""
    return sum([await redis_client.xlen(app_key(a, "events")) for a in stack.settings.apps])


async def refused(
    stack: Stack,
    redis_client: redis.Redis,
    url: str,
    body: bytes | None,
    *,
    status: int,
    reason: str,
) -> None:
    """Send the request; it must be refused with `status`, counted under `reason`."""
    before = rejected(reason)
    response = await fetch(url, body)
    assert response.code == status
    assert response.body == status_line(status)
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert rejected(reason) == before + 1
    assert await delivered(stack, redis_client) == 0


async def test_refusal_carries_the_request_id_and_nosniff(stack: Stack) -> None:
    """Refusals keep the headers `EdgeHandler.prepare` sets on every response.

    The request id is what ties a refused request to its "rejected" log line; the
    handler sets it (and `nosniff`) before any check runs.
    """
    url, body = callback(
        stack, "POST", [("signature", "0" * 40), *plain_query(app(stack, "wxplain"))[1:]]
    )
    response = await fetch(url, body)
    assert response.code == 403
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert response.headers.get("X-Request-Id")


# --- raw sockets, for what an HTTP client library will not send ---------------------


@dataclass
class RawResponse:
    status: int
    body: bytes
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)


async def raw_exchange(port: int, data: bytes, *, timeout: float = 10.0) -> RawResponse:
    """Send `data` in one write, read one response (framed by Content-Length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    received = b""
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                head, sep, body = received.partition(b"\r\n\r\n")
                if sep:
                    headers = dict(
                        line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if line
                    )
                    if len(body) >= int(headers.get("Content-Length", "0")):
                        break
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    seconds = time.perf_counter() - started
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if line)
    return RawResponse(status, body, seconds, headers)


def raw_post(app: AppConfig, port: int, headers: dict[str, str]) -> bytes:
    """The head of a correctly signed POST to `app`, with the given headers."""
    path = f"/wx/{app.app_id}?{urllib.parse.urlencode(plain_query(app))}"
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- signature and parameters -------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_missing_signature_is_forbidden(
    stack: Stack, redis_client: redis.Redis, method: str
) -> None:
    """An unsigned callback is refused like a wrong signature, not as a bad request."""
    query = [p for p in plain_query(app(stack, "wxplain")) if p[0] != "signature"]
    url, body = callback(stack, method, query)
    await refused(stack, redis_client, url, body, status=403, reason="missing_signature")


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("forgery", ["empty", "zeros", "other token", "uppercase"])
async def test_bad_signature_is_forbidden(
    stack: Stack, redis_client: redis.Redis, method: str, forgery: str
) -> None:
    """Only the exact lowercase SHA-1 over the app's own token verifies (docs/wechat.md §1)."""
    plain = app(stack, "wxplain")
    query = plain_query(plain)
    ts, nonce = query[1][1], query[2][1]
    signature = {
        "empty": "",
        "zeros": "0" * 40,
        "other token": sign("not-the-token", ts, nonce),
        "uppercase": sign(plain.token.reveal(), ts, nonce).upper(),
    }[forgery]
    url, body = callback(stack, method, [("signature", signature), *query[1:]])
    await refused(stack, redis_client, url, body, status=403, reason="bad_signature")


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("name", ["signature", "timestamp", "nonce"])
async def test_repeated_signature_parameter_is_refused(
    stack: Stack, redis_client: redis.Redis, method: str, name: str
) -> None:
    """A parameter given twice is refused even with the same value both times.

    Two readers of one query string may take the first or the last value; refusing
    repeats outright leaves no room for them to disagree about what was signed.
    """
    query = plain_query(app(stack, "wxplain"))
    repeat = next(p for p in query if p[0] == name)
    url, body = callback(stack, method, [*query, repeat])
    await refused(stack, redis_client, url, body, status=400, reason="duplicate_param")


async def test_repeated_msg_signature_is_refused(stack: Stack, redis_client: redis.Redis) -> None:
    """The same holds for `msg_signature`, which is what authenticates a safe-mode body."""
    safe = app(stack, "wxsafe")
    sealed = seal(safe, text_xml())
    url = encrypted_url(stack, safe, sealed)
    repeat = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["msg_signature"][0]
    url += "&" + urllib.parse.urlencode({"msg_signature": repeat})
    await refused(
        stack, redis_client, url, xml_envelope(sealed), status=400, reason="duplicate_param"
    )


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "timestamp",
    [
        "",
        "abc",
        "1.7e9",
        "-5",
        " 1700000000",
        "1700000000 ",
        "0x6553f100",
        "１７００",
        "²",
        "9" * 13,
    ],
)
async def test_non_numeric_timestamp_is_refused(
    stack: Stack, redis_client: redis.Redis, method: str, timestamp: str
) -> None:
    """Only ASCII digits: `str.isdigit` alone would let "²" and fullwidth digits through.

    The signature is computed over the odd timestamp, so only the format check can refuse.
    """
    query = plain_query(app(stack, "wxplain"), timestamp=timestamp)
    url, body = callback(stack, method, query)
    await refused(stack, redis_client, url, body, status=400, reason="bad_timestamp")


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("age", ["older", "newer", "epoch"])
async def test_stale_timestamp_is_forbidden(
    stack: Stack, redis_client: redis.Redis, method: str, age: str
) -> None:
    """A correctly signed URL outside the window (±300 s) is a captured one being replayed."""
    assert stack.edge is not None
    window = stack.edge.deps.timestamp_window_seconds
    now = int(time.time())
    # 30 s past the window: far from the edge even on a slow machine.
    timestamp = {"older": now - window - 30, "newer": now + window + 30, "epoch": 0}[age]
    query = plain_query(app(stack, "wxplain"), timestamp=str(timestamp))
    url, body = callback(stack, method, query)
    await refused(stack, redis_client, url, body, status=403, reason="stale_timestamp")


# --- encryption ---------------------------------------------------------------------


@pytest.mark.parametrize("encrypt_type", [None, "raw", "AES", ""])
async def test_plaintext_downgrade_on_a_safe_app_is_forbidden(
    stack: Stack, redis_client: redis.Redis, encrypt_type: str | None
) -> None:
    """The plain `signature` does not cover the body: a safe app must not accept it.

    Otherwise anyone holding one captured URL could push any plaintext body with it.
    """
    safe = app(stack, "wxsafe")
    query = plain_query(safe)
    if encrypt_type is not None:
        query.append(("encrypt_type", encrypt_type))
    url = url_for(stack, safe, query)
    body = text_xml().encode()
    await refused(stack, redis_client, url, body, status=403, reason="plaintext_on_safe_app")


async def test_encrypted_push_without_msg_signature_is_forbidden(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """Without `msg_signature` nothing covers the ciphertext (the URL signature does not)."""
    safe = app(stack, "wxsafe")
    url, body = push_request(stack.edge_url, safe, text_fields("hello"), encrypt=True)
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "msg_signature"]
    url = parts._replace(query=urllib.parse.urlencode(query)).geturl()
    await refused(stack, redis_client, url, body, status=403, reason="missing_msg_signature")


@pytest.mark.parametrize("forgery", ["zeros", "url signature", "other ciphertext"])
async def test_encrypted_push_with_a_bad_msg_signature_is_forbidden(
    stack: Stack, redis_client: redis.Redis, forgery: str
) -> None:
    """`msg_signature` must cover this very ciphertext.

    "url signature" is the common integration mistake docs/wechat.md §2.1 warns about;
    "other ciphertext" is a body swapped under a signature taken from another push.
    """
    safe = app(stack, "wxsafe")
    sealed = seal(safe, text_xml())
    query = plain_query(safe)
    ts, nonce = query[1][1], query[2][1]
    signature = {
        "zeros": "0" * 40,
        "url signature": query[0][1],
        "other ciphertext": sign(safe.token.reveal(), ts, nonce, seal(safe, text_xml())),
    }[forgery]
    url = url_for(stack, safe, [*query, ("encrypt_type", "aes"), ("msg_signature", signature)])
    await refused(
        stack, redis_client, url, xml_envelope(sealed), status=403, reason="bad_msg_signature"
    )


async def test_encrypted_push_to_a_plaintext_app_is_refused(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """`encrypt_type=aes` for an app without a key: nothing could open it, so refuse it."""
    plain = app(stack, "wxplain")
    sealed = seal(app(stack, "wxsafe"), text_xml())
    url = encrypted_url(stack, plain, sealed)
    await refused(
        stack, redis_client, url, xml_envelope(sealed), status=400, reason="unexpected_encryption"
    )


async def test_ciphertext_for_another_app_is_refused(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """A message sealed for another appid (sharing the key, signed with our token) is refused.

    The trailing appid is the only thing binding a ciphertext to its account (§2.2).
    """
    safe = app(stack, "wxsafe")
    sealed = seal(safe, text_xml(), receiver="wxsomeoneelse")
    url = encrypted_url(stack, safe, sealed)
    await refused(
        stack, redis_client, url, xml_envelope(sealed), status=400, reason="decrypt_40005"
    )


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda s: "@@@@" + s, id="foreign characters"),
        pytest.param(lambda s: s + "A", id="length not a multiple of 4"),
        pytest.param(lambda s: s.replace("+", "-").replace("/", "_") + "-_-_", id="url-safe"),
        pytest.param(lambda s: s[:40] + "\n" + s[40:], id="embedded newline"),
        pytest.param(lambda s: "====", id="only padding"),
    ],
)
async def test_ciphertext_that_is_not_base64_is_refused(
    stack: Stack, redis_client: redis.Redis, mangle: Callable[[str], str]
) -> None:
    """Strict base64: lenient decoders silently skip junk, so two readers could disagree."""
    safe = app(stack, "wxsafe")
    sealed = mangle(seal(safe, text_xml()))
    url = encrypted_url(stack, safe, sealed)
    await refused(
        stack, redis_client, url, xml_envelope(sealed), status=400, reason="decrypt_40008"
    )


@pytest.mark.parametrize("size", [1, 15, 17, 31, 33])
async def test_ciphertext_not_a_whole_number_of_blocks_is_refused(
    stack: Stack, redis_client: redis.Redis, size: int
) -> None:
    """Valid base64 of a length AES-CBC cannot have produced is refused before decrypting."""
    safe = app(stack, "wxsafe")
    sealed = base64.b64encode(base64.b64decode(seal(safe, text_xml()))[:size]).decode()
    url = encrypted_url(stack, safe, sealed)
    await refused(
        stack, redis_client, url, xml_envelope(sealed), status=400, reason="decrypt_40008"
    )


def _pad_byte_out_of_range(ciphertext: bytearray) -> None:
    # In CBC the last plaintext byte is D(C_n)[-1] XOR C_{n-1}[-1]: flipping the top bit
    # of the previous block's last byte turns any pad length 1..32 into 129..160.
    ciphertext[-17] ^= 0x80


def _last_block_garbled(ciphertext: bytearray) -> None:
    # Rewriting the last block garbles its whole plaintext, padding included.
    ciphertext[-16:] = bytes(16)


@pytest.mark.parametrize("tamper", [_pad_byte_out_of_range, _last_block_garbled])
async def test_ciphertext_with_bad_padding_is_refused(
    stack: Stack, redis_client: redis.Redis, tamper: Callable[[bytearray], None]
) -> None:
    """A tampered, re-signed ciphertext: the signature verifies, decryption must not.

    The token may leak while the key does not; the padding check is then what stands
    between a forger and a message that decrypts to garbage.
    """
    safe = app(stack, "wxsafe")
    assert safe.encoding_aes_key is not None
    crypto = MessageCrypto(safe.app_id, safe.encoding_aes_key.reveal())
    # Fixed plaintext and random prefix make the tampered ciphertext deterministic.
    plain = render_xml(text_fields("hello", msg_id="42") | {"CreateTime": 1700000000}).decode()
    raw = bytearray(base64.b64decode(crypto.encrypt(plain, random_prefix=b"0123456789abcdef")))
    tamper(raw)
    sealed = base64.b64encode(raw).decode()
    with pytest.raises(BadCiphertext, match="padding"):
        crypto.decrypt(sealed)  # the premise: this really is a padding failure
    url = encrypted_url(stack, safe, sealed)
    await refused(
        stack, redis_client, url, xml_envelope(sealed), status=400, reason="decrypt_40008"
    )


@pytest.mark.parametrize(
    "envelope",
    [
        b"<xml><ToUserName>gh_edgetest</ToUserName><Encrypt></Encrypt></xml>",
        b"<xml><ToUserName>gh_edgetest</ToUserName><Encrypt><![CDATA[]]></Encrypt></xml>",
        b"<xml><ToUserName>gh_edgetest</ToUserName></xml>",
        b"<xml><ToUserName>gh_edgetest</ToUserName><Encrypt><A>x</A></Encrypt></xml>",
    ],
    ids=["empty", "empty cdata", "absent", "nested element"],
)
async def test_empty_encrypt_is_refused(
    stack: Stack, redis_client: redis.Redis, envelope: bytes
) -> None:
    """No ciphertext, no message: a signature over "" must not open an empty push."""
    safe = app(stack, "wxsafe")
    url = encrypted_url(stack, safe, "")
    await refused(stack, redis_client, url, envelope, status=400, reason="payload_no_encrypt")


# --- XML parser attacks -------------------------------------------------------------

BILLION_LAUGHS = (
    '<!DOCTYPE xml [<!ENTITY l0 "lol">'
    + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    + "]>"
)
QUADRATIC_BLOWUP = f'<!DOCTYPE xml [<!ENTITY a "{"a" * 20000}">]>'
PLACES = ["plaintext body", "encrypted envelope", "inside the ciphertext"]


def hostile_push(stack: Stack, place: str, prologue: str, reference: str) -> tuple[str, bytes]:
    """A correctly signed push whose XML starts with `prologue` and uses `reference`.

    The envelope is parsed before `msg_signature` is checked, so it is reachable without
    the token; the plaintext inside the ciphertext is parsed by the same parser again.
    """
    if place == "plaintext body":
        plain = app(stack, "wxplain")
        return url_for(stack, plain, plain_query(plain)), (
            prologue + text_xml(raw_content=reference)
        ).encode()
    safe = app(stack, "wxsafe")
    if place == "encrypted envelope":
        sealed = seal(safe, text_xml())
        envelope = (
            xml_envelope(sealed)
            .decode()
            .replace("<![CDATA[gh_edgetest]]>", "gh_edgetest" + reference)  # outside CDATA
        )
        return encrypted_url(stack, safe, sealed), (prologue + envelope).encode()
    sealed = seal(safe, prologue + text_xml(raw_content=reference))
    return encrypted_url(stack, safe, sealed), xml_envelope(sealed)


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize(
    ("prologue", "reference"),
    [
        (BILLION_LAUGHS, "&l9;"),
        (QUADRATIC_BLOWUP, "&a;" * 1000),
        ('<!DOCTYPE xml [<!ENTITY a "b">]>', "&a;"),
    ],
    ids=["billion laughs", "quadratic blowup", "one harmless entity"],
)
async def test_entity_expansion_is_refused(
    stack: Stack, redis_client: redis.Redis, place: str, prologue: str, reference: str
) -> None:
    """Internal entities are refused outright, before any expansion, however harmless.

    The billion laughs expand to 3 GB from under 1 kB; the quadratic blowup evades
    expansion-depth limits. Refusing every DTD is simpler than judging each one.
    """
    url, body = hostile_push(stack, place, prologue, reference)
    await refused(stack, redis_client, url, body, status=400, reason="payload_dtd")


@dataclass
class Listener:
    """A TCP listener that records every connection made to it."""

    port: int
    connections: list[str] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    recorded = Listener(0)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        recorded.connections.append(str(writer.get_extra_info("peername")))
        recorded.connected.set()
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    recorded.port = server.sockets[0].getsockname()[1]
    async with server:
        # Prove the listener records connections, so that seeing none later means something.
        _, writer = await asyncio.open_connection("127.0.0.1", recorded.port)
        writer.close()
        await asyncio.wait_for(recorded.connected.wait(), 5)
        recorded.connections.clear()
        yield recorded


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize(
    "hostile",
    [
        ('<!DOCTYPE xml [<!ENTITY ext SYSTEM "http://127.0.0.1:{port}/x">]>', "&ext;"),
        ('<!DOCTYPE xml SYSTEM "http://127.0.0.1:{port}/x.dtd">', ""),
        ('<!DOCTYPE xml [<!ENTITY % p SYSTEM "http://127.0.0.1:{port}/p"> %p;]>', ""),
        ('<!DOCTYPE xml PUBLIC "-//X//Y//EN" "http://127.0.0.1:{port}/pub.dtd">', ""),
    ],
    ids=["external entity", "external dtd", "parameter entity", "public dtd"],
)
async def test_external_entity_and_dtd_are_refused_and_never_fetched(
    stack: Stack,
    redis_client: redis.Redis,
    listener: Listener,
    place: str,
    hostile: tuple[str, str],
) -> None:
    """XXE: a parser that fetches external resources lets a push probe the internal network.

    The resources point at a local listener; not a single connection may reach it.
    """
    prologue, reference = hostile
    url, body = hostile_push(stack, place, prologue.format(port=listener.port), reference)
    await refused(stack, redis_client, url, body, status=400, reason="payload_dtd")
    await asyncio.sleep(0.2)  # a fetch would have happened before the answer; be sure
    assert listener.connections == []


@pytest.mark.parametrize(
    "body",
    [
        "<xml>" + "<A>" * 9 + "x" + "</A>" * 9 + "</xml>",
        "<xml>" + "<A>" * 8000 + "</A>" * 8000 + "</xml>",
        "<xml>" + "<item>" * 9 + "x" + "</item>" * 9 + "</xml>",
    ],
    ids=["just over the cap", "8000 levels", "repeatable items"],
)
async def test_deeply_nested_xml_is_refused(
    stack: Stack, redis_client: redis.Redis, body: str
) -> None:
    """Nesting is capped (8): recursion over attacker-chosen depth must stay bounded."""
    plain = app(stack, "wxplain")
    url = url_for(stack, plain, plain_query(plain))
    await refused(stack, redis_client, url, body.encode(), status=400, reason="payload_depth")


@pytest.mark.parametrize(
    "body",
    [
        text_xml("你好").replace("<?xml", "").encode("gbk"),
        text_xml("café").encode("latin-1"),
        text_xml("hello").encode("utf-16"),
        text_xml("hello").encode().replace(b"hello", b"\xed\xa0\x80"),  # UTF-8 of a surrogate
        text_xml("hello").encode().replace(b"hello", b"\xc0\xaf"),  # overlong "/"
    ],
    ids=["gbk", "latin-1", "utf-16", "surrogate", "overlong"],
)
async def test_non_utf8_body_is_refused(
    stack: Stack, redis_client: redis.Redis, body: bytes
) -> None:
    """WeChat sends UTF-8 only; any other bytes would be read differently by each reader."""
    plain = app(stack, "wxplain")
    url = url_for(stack, plain, plain_query(plain))
    await refused(stack, redis_client, url, body, status=400, reason="payload_encoding")


@pytest.mark.parametrize(
    "declaration",
    [
        '<?xml version="1.0" encoding="GBK"?>',
        '<?xml version="1.0" encoding="ISO-8859-1"?>',
        "<?xml version='1.0' encoding='windows-1252'?>",
        '<?xml version="1.0" encoding="UTF-16"?>',
        '  \n<?XML VERSION="1.0" ENCODING="latin1"?>',
        pytest.param(
            '<?xml version="1.0" encoding="ISO-8859-1"?><!-- utf-8 -->',
            id="latin-1 with utf-8 in a comment",
        ),
        pytest.param(
            '\ufeff<?xml version="1.0" encoding="ISO-8859-1"?>',
            id="latin-1 after a utf-8 bom",
        ),
        pytest.param(
            '<?xml version="1.0" encoding="utf-8x"?>',
            id="unknown codec named like utf-8",
        ),
    ],
)
async def test_xml_declaring_another_encoding_is_refused(
    stack: Stack, redis_client: redis.Redis, declaration: str
) -> None:
    """A body that is valid UTF-8 but declares another encoding is refused.

    The parser honours the declaration, so "é" sent as UTF-8 under a Latin-1 declaration
    would reach teams as "Ã©": the edge and anyone reading the raw body would disagree.
    """
    plain = app(stack, "wxplain")
    url = url_for(stack, plain, plain_query(plain))
    body = (declaration + text_xml("café")).encode()
    await refused(stack, redis_client, url, body, status=400, reason="payload_encoding")


@pytest.mark.parametrize("name", ["MsgId", "MsgType", "FromUserName", "Content", "CreateTime"])
async def test_duplicated_xml_field_is_refused(
    stack: Stack, redis_client: redis.Redis, name: str
) -> None:
    """A repeated field is refused, whichever: first-wins and last-wins readers disagree.

    With two `<MsgId>`s, dedup in one component and a consumer in another could each see
    a different message identity.
    """
    plain = app(stack, "wxplain")
    xml = text_xml()
    start, end = xml.index(f"<{name}>"), xml.index(f"</{name}>") + len(f"</{name}>")
    body = (xml[:end] + xml[start:end].replace(">", ">9", 1) + xml[end:]).encode()
    url = url_for(stack, plain, plain_query(plain))
    await refused(stack, redis_client, url, body, status=400, reason="payload_duplicate")


async def test_a_refusal_logs_a_bounded_line(
    stack: Stack, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The detail may quote the request: a 10,000-character tag name is not logged whole."""
    plain = app(stack, "wxplain")
    tag = "X" * 10_000
    body = text_xml().replace("</xml>", f"<{tag}>1</{tag}><{tag}>2</{tag}></xml>").encode()
    url = url_for(stack, plain, plain_query(plain))
    with caplog.at_level(logging.WARNING, logger="wxplatform.edge"):
        await refused(stack, redis_client, url, body, status=400, reason="payload_duplicate")
    (line,) = [r for r in caplog.records if getattr(r, "reason", "") == "payload_duplicate"]
    assert 0 < len(line.detail) <= 200  # type: ignore[attr-defined]


@pytest.mark.parametrize("place", ["encrypted envelope", "inside the ciphertext"])
async def test_duplicated_field_in_an_encrypted_push_is_refused(
    stack: Stack, redis_client: redis.Redis, place: str
) -> None:
    """Two `<Encrypt>`s: the signature covers one, a lenient parser might open the other."""
    safe = app(stack, "wxsafe")
    if place == "encrypted envelope":
        sealed, other = seal(safe, text_xml()), seal(safe, text_xml())
        body = xml_envelope(sealed).replace(b"</xml>", f"<Encrypt>{other}</Encrypt></xml>".encode())
    else:
        xml = text_xml()
        sealed = seal(safe, xml.replace("</xml>", "<MsgId>1</MsgId></xml>"))
        body = xml_envelope(sealed)
    url = encrypted_url(stack, safe, sealed)
    await refused(stack, redis_client, url, body, status=400, reason="payload_duplicate")


# --- JSON (mini program) attacks ----------------------------------------------------


def json_push(stack: Stack, plaintext: str) -> tuple[str, bytes]:
    mini = app(stack, "wxjson")
    sealed = seal(mini, plaintext)
    return encrypted_url(stack, mini, sealed), json_envelope(sealed)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"FromUserName": None}, "payload_shape"),
        ({"ToUserName": True}, "payload_shape"),
        ({"Content": float("nan")}, "payload_syntax"),
        ({"CreateTime": float("inf")}, "payload_syntax"),
    ],
    ids=["null sender", "boolean recipient", "NaN", "Infinity"],
)
async def test_json_values_wechat_never_sends_are_refused(
    stack: Stack, redis_client: redis.Redis, overrides: dict[str, Any], reason: str
) -> None:
    """null is no sender (not the openid "None"); NaN and Infinity are not JSON."""
    url, body = json_push(stack, json_text(**overrides))
    await refused(stack, redis_client, url, body, status=400, reason=reason)


@pytest.mark.parametrize("place", ["envelope", "message", "nested object"])
async def test_json_duplicate_keys_are_refused(
    stack: Stack, redis_client: redis.Redis, place: str
) -> None:
    """`json.loads` keeps the last of two equal keys silently; the edge must refuse them."""
    mini = app(stack, "wxjson")
    if place == "envelope":
        sealed, other = seal(mini, json_text()), seal(mini, json_text())
        envelope = f'{{"ToUserName": "gh_minitest", "Encrypt": "{sealed}", "Encrypt": "{other}"}}'
        url = encrypted_url(stack, mini, sealed)
        await refused(
            stack, redis_client, url, envelope.encode(), status=400, reason="payload_duplicate"
        )
        return
    message = json_text()
    if place == "message":
        message = message[:-1] + ', "MsgId": 1}'
    else:
        message = message[:-1] + ', "Info": {"A": 1, "A": 2}}'
    url, body = json_push(stack, message)
    await refused(stack, redis_client, url, body, status=400, reason="payload_duplicate")


@pytest.mark.parametrize("name", ["MsgId", "CreateTime", "Content"])
async def test_huge_json_integer_is_refused(
    stack: Stack, redis_client: redis.Redis, name: str
) -> None:
    """A 5000-digit number: int parsing is quadratic, so Python caps it (4300 digits)."""
    message = json_text(**{name: 0}).replace(f'"{name}": 0', f'"{name}": {"9" * 5000}')
    url, body = json_push(stack, message)
    await refused(stack, redis_client, url, body, status=400, reason="payload_syntax")


@pytest.mark.parametrize(
    ("depth", "reason"),
    [
        (9, "payload_depth"),
        pytest.param(
            600,
            "payload_depth",
        ),
        (10000, "payload_syntax"),
    ],
    ids=["just over the cap", "600 levels", "10000 levels"],
)
async def test_deeply_nested_json_is_refused(
    stack: Stack, redis_client: redis.Redis, depth: int, reason: str
) -> None:
    """Deep JSON is capped too; past the interpreter's recursion limit it must not crash."""
    message = json_text()[:-1] + ', "Deep": ' + "[" * depth + "]" * depth + "}"
    url, body = json_push(stack, message)
    await refused(stack, redis_client, url, body, status=400, reason=reason)


# --- garbage ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "body", "reason"),
    [
        ("wxplain", random.Random(7).randbytes(512), "payload_encoding"),
        ("wxplain", bytes(range(256)), "payload_encoding"),
        ("wxplain", b"", "payload_syntax"),
        ("wxplain", b"\x00" * 64, "payload_syntax"),
        ("wxplain", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "payload_syntax"),
        ("wxplain", b"<xml><ToUserName>gh_", "payload_syntax"),
        ("wxplain", b'{"ToUserName": "gh_x"}', "payload_syntax"),
        ("wxplain", b"<html><body>hi</body></html>", "payload_shape"),
        ("wxplain", b"<xml>just text</xml>", "payload_shape"),
        ("wxplain", b"<xml><MsgType>text</MsgType></xml>", "payload_shape"),
        ("wxjson", b"<xml><Encrypt>x</Encrypt></xml>", "payload_syntax"),
        ("wxjson", b"[]", "payload_shape"),
        ("wxjson", b'"Encrypt"', "payload_shape"),
        ("wxjson", b"NaN", "payload_syntax"),
    ],
    ids=[
        "random bytes",
        "every byte",
        "empty",
        "nul bytes",
        "http request",
        "truncated",
        "json to an xml app",
        "html",
        "text root",
        "no envelope fields",
        "xml to a json app",
        "json array",
        "json string",
        "json nan",
    ],
)
async def test_garbage_body_is_refused(
    stack: Stack, redis_client: redis.Redis, prefix: str, body: bytes, reason: str
) -> None:
    """Whatever the bytes, the answer is a plain 400: no 500, no parser message echoed."""
    target = app(stack, prefix)
    if target.encryption == "safe":
        url = encrypted_url(stack, target, "x")
    else:
        url = url_for(stack, target, plain_query(target))
    await refused(stack, redis_client, url, body, status=400, reason=reason)


# --- HTTP framing -------------------------------------------------------------------


async def test_body_over_the_cap_is_refused(stack: Stack, redis_client: redis.Redis) -> None:
    """One byte over `max_body_bytes` is refused; exactly at the cap is accepted."""
    assert stack.edge is not None
    cap = stack.edge.deps.max_body_bytes
    quiet = app(stack, "wxquiet")
    xml = text_xml().encode()
    at_cap = xml + b" " * (cap - len(xml))  # trailing whitespace after the root is legal XML
    response = await fetch(url_for(stack, quiet, plain_query(quiet)), at_cap)
    assert (response.code, response.body) == (200, b"success")
    before = await delivered(stack, redis_client)
    url = url_for(stack, quiet, plain_query(quiet))
    rejections = rejected("body_too_large")
    response = await fetch(url, at_cap + b" ")
    assert (response.code, response.body) == (413, status_line(413))
    assert rejected("body_too_large") == rejections + 1
    assert await delivered(stack, redis_client) == before


@pytest.mark.parametrize("excess", [1, 10 * 2**20, 2**40], ids=["one byte", "10 MiB", "1 TiB"])
async def test_oversized_content_length_is_refused_without_reading_the_body(
    stack: Stack, redis_client: redis.Redis, excess: int
) -> None:
    """A declared length over the cap is answered 413 at once, before the body arrives.

    Waiting for 10 MB (or 1 TB) that may never come would tie up a connection per
    attacker; buffering it would exhaust memory. Only a few bytes are ever sent here.
    """
    assert stack.edge is not None
    length = stack.edge.deps.max_body_bytes + excess
    head = raw_post(
        app(stack, "wxplain"),
        stack.edge.port,
        {"Content-Length": str(length), "Content-Type": "text/xml"},
    )
    before = rejected("body_too_large")
    response = await raw_exchange(stack.edge.port, head + b"<xml><ToUserName>")
    assert response.status == 413
    assert response.body == status_line(413)
    # Far less than the body timeout (the budget, 4 s): the server did not wait for it.
    assert response.seconds < stack.edge.deps.budget_seconds / 2
    assert rejected("body_too_large") == before + 1
    assert await delivered(stack, redis_client) == 0


async def test_a_content_length_of_thousands_of_digits_is_refused(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """Python's int() refuses 4,300 digits or more: that must be a 413, not a 500."""
    assert stack.edge is not None
    head = raw_post(app(stack, "wxplain"), stack.edge.port, {"Content-Length": "9" * 5000})
    before = rejected("body_too_large")
    response = await raw_exchange(stack.edge.port, head + b"<xml>")
    assert response.status == 413
    assert rejected("body_too_large") == before + 1
    assert await delivered(stack, redis_client) == 0


@pytest.mark.parametrize(
    ("request_line", "status"),
    [("FOO /wx/{app}", 405), ("GET /wx/%ff", 400), ("POST /wx/%ff", 400)],
    ids=["unknown method", "path not utf-8", "post to a path not utf-8"],
)
async def test_requests_tornado_refuses_early_are_counted_without_errors(
    stack: Stack, caplog: pytest.LogCaptureFixture, request_line: str, status: int
) -> None:
    """Refused before `prepare`: a clean 4xx, counted, and no stack trace in the log."""
    assert stack.edge is not None
    line = request_line.format(app=app(stack, "wxplain").app_id)
    method = line.split(" ", 1)[0]
    before = counted("unknown", method, status) + counted(
        app(stack, "wxplain").app_id, method, status
    )
    response = await raw_exchange(
        stack.edge.port, f"{line} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert response.status == status
    after = counted("unknown", method, status) + counted(
        app(stack, "wxplain").app_id, method, status
    )
    assert after == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_push_without_content_length_is_refused(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """Chunked bodies have no length to check up front, so the cap could not hold: 411.

    WeChat always sends Content-Length, so nothing legitimate is lost.
    """
    assert stack.edge is not None
    xml = text_xml().encode()
    head = raw_post(app(stack, "wxplain"), stack.edge.port, {"Transfer-Encoding": "chunked"})
    chunked = f"{len(xml):x}\r\n".encode() + xml + b"\r\n0\r\n\r\n"
    before = rejected("length_required")
    response = await raw_exchange(stack.edge.port, head + chunked)
    assert response.status == 411
    assert response.body == status_line(411)
    assert rejected("length_required") == before + 1
    assert await delivered(stack, redis_client) == 0


async def test_content_length_and_chunked_together_are_refused(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """Both framings at once is the request-smuggling shape (RFC 7230 §3.3.3): refused."""
    assert stack.edge is not None
    xml = text_xml().encode()
    chunked = f"{len(xml):x}\r\n".encode() + xml + b"\r\n0\r\n\r\n"
    head = raw_post(
        app(stack, "wxplain"),
        stack.edge.port,
        {"Content-Length": str(len(chunked)), "Transfer-Encoding": "chunked"},
    )
    response = await raw_exchange(stack.edge.port, head + chunked)
    assert response.status == 400
    assert response.body == b""  # Tornado's bare status line
    assert await delivered(stack, redis_client) == 0


@pytest.fixture
async def quick_stack(redis_client: redis.Redis) -> AsyncIterator[Stack]:
    """A stack whose budget (and so body timeout) is one second."""
    settings = make_settings(app_table(new_app_id("wxplain")))
    async with running_stack(settings, redis_client, with_edge=True, budget_seconds=1.0) as running:
        yield running


async def test_slow_body_is_cut_off(quick_stack: Stack, redis_client: redis.Redis) -> None:
    """A body trickling in slower than the budget cannot be answered in time: drop it.

    Slowloris: without a body timeout, a few hundred such connections would hold the
    edge's sockets forever. Bounds are generous: the box running this is noisy.
    """
    stack = quick_stack
    assert stack.edge is not None
    head = raw_post(app(stack, "wxplain"), stack.edge.port, {"Content-Length": "1000"})
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.edge.port)
    started = time.perf_counter()
    sent = 0

    async def trickle() -> None:
        nonlocal sent
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            while sent < 1000:
                writer.write(b" ")
                await writer.drain()
                sent += 1
                await asyncio.sleep(0.05)

    trickler = asyncio.create_task(trickle())
    received = b""
    try:
        async with asyncio.timeout(15):
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    received += chunk
        closed_after = time.perf_counter() - started
    finally:
        trickler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trickler
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert closed_after < stack.edge.deps.budget_seconds + 6.0
    assert sent < 1000  # the server hung up; the client had not finished
    # Tornado drops the connection without an answer; a 408 would be fine too.
    assert received == b"" or received.startswith(b"HTTP/1.1 408 ")
    assert await delivered(stack, redis_client) == 0


@pytest.mark.parametrize(
    ("request_line", "headers", "status", "reason"),
    [
        ("PUT /wx/{app}", {"Content-Length": "100"}, 405, "method_not_allowed"),
        ("GET /wx/{app}", {"Content-Length": "100"}, 413, "body_too_large"),
        ("POST /healthz", {"Content-Length": "100"}, 405, "method_not_allowed"),
        ("POST /metrics", {"Content-Length": "100"}, 405, "method_not_allowed"),
        ("POST /nowhere", {"Content-Length": "1000000000"}, 404, "no_route"),
        ("POST /pay/1230000109/notify", {"Content-Length": "500"}, 404, "no_route"),
        ("POST /healthz", {"Transfer-Encoding": "chunked"}, 405, "method_not_allowed"),
        ("GET /healthz", {"Transfer-Encoding": "chunked"}, 411, "length_required"),
        # "²".isdigit() is True
        ("GET /healthz", {"Content-Length": "\u00b2"}, 400, "bad_content_length"),
        ("POST /wx/{app}", {"Content-Length": "1\u00b9"}, 400, "bad_content_length"),
    ],
)
async def test_no_handler_buffers_or_waits_for_a_body_it_does_not_take(
    stack: Stack, request_line: str, headers: dict[str, str], status: int, reason: str
) -> None:
    """Only pushes carry bodies: anywhere else a body is refused before it is read, so
    neither a large one (memory) nor a slow one (slowloris) can be sent to the edge.

    The body cap belongs to the routes that read bodies: a path no route serves is a
    404 and a method its route does not take a 405, whatever the body. Each is counted.
    """
    assert stack.edge is not None
    line = request_line.format(app=app(stack, "wxplain").app_id)
    head = "\r\n".join(
        [
            f"{line} HTTP/1.1",
            "Host: 127.0.0.1",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
    )
    before = rejected(reason)
    # Only the head is sent: the answer must not wait for a body that never comes.
    # Latin-1, as Tornado decodes header bytes: "\u00b2" travels as the one byte 0xB2.
    response = await raw_exchange(stack.edge.port, (head + "\r\n\r\n").encode("latin-1"))
    assert response.status == status
    assert response.body == status_line(status)
    assert rejected(reason) == before + 1
    if status == 405:
        assert response.headers["Allow"] == ("GET, POST" if "/wx/" in line else "GET")


# --- accepted: unknown types, retries; refused: replays -----------------------------


async def only_event(stack: Stack, redis_client: redis.Redis, app_id: str) -> InboundMessage:
    assert await delivered(stack, redis_client) == 1
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]],
        await redis_client.xrange(app_key(app_id, "events")),
    )
    ((_, entry),) = entries
    return InboundMessage.FromString(entry[b"m"])


@pytest.mark.parametrize("encrypt", [False, True], ids=["plaintext", "safe"])
async def test_unknown_msg_type_is_delivered_as_unknown(
    stack: Stack, redis_client: redis.Redis, encrypt: bool
) -> None:
    """WeChat adds types without notice (§3.1): ack them, and lose none of their fields."""
    target = app(stack, "wxhush" if encrypt else "wxquiet")
    fields = text_fields("ignored") | {
        "MsgType": "file",
        "Title": "report.pdf",
        "FileInfo": {"Size": "12345", "Md5": "abc"},
    }
    del fields["Content"]
    url, body = push_request(stack.edge_url, target, fields, encrypt=encrypt)
    response = await fetch(url, body)
    assert (response.code, response.body) == (200, b"success")
    message = await only_event(stack, redis_client, target.app_id)
    assert message.WhichOneof("body") == "unknown"
    assert message.msg_type == "file"
    assert message.msg_id == fields["MsgId"]
    assert json_format.MessageToDict(message.raw) == {
        **{k: str(v) for k, v in fields.items() if k != "FileInfo"},
        "FileInfo": {"Size": "12345", "Md5": "abc"},
    }


@pytest.mark.parametrize("encrypt", [False, True], ids=["plaintext", "safe"])
async def test_unknown_event_is_delivered_as_unknown(
    stack: Stack, redis_client: redis.Redis, encrypt: bool
) -> None:
    """Unknown events (kf sessions, cards, …) are acked with `success` and kept whole."""
    target = app(stack, "wxhush" if encrypt else "wxquiet")
    fields: dict[str, Any] = {
        "ToUserName": "gh_edgetest",
        "FromUserName": "oUserEdge1",
        "CreateTime": int(time.time()),
        "MsgType": "event",
        "Event": "kf_create_session",
        "KfAccount": "test1@test",
    }
    url, body = push_request(stack.edge_url, target, fields, encrypt=encrypt)
    response = await fetch(url, body)
    assert (response.code, response.body) == (200, b"success")
    message = await only_event(stack, redis_client, target.app_id)
    assert message.WhichOneof("body") == "unknown"
    assert (message.msg_type, message.event, message.msg_id) == ("event", "kf_create_session", "")
    assert json_format.MessageToDict(message.raw) == {k: str(v) for k, v in fields.items()}


@pytest.mark.parametrize("idx", ["2147483648", "-99999999999"])
async def test_out_of_range_number_in_a_typed_field_is_kept_raw(
    stack: Stack, redis_client: redis.Redis, idx: str
) -> None:
    """A number too big for its typed field is a bad value, not a bad push: the typed
    field stays zero and `raw` keeps the text (normalize's module docstring).
    """
    quiet = app(stack, "wxquiet")
    fields = text_fields("hello", msg_id=new_msg_id()) | {"Idx": idx}
    url, body = push_request(stack.edge_url, quiet, fields)
    response = await fetch(url, body)
    assert (response.code, response.body) == (200, b"success")
    message = await only_event(stack, redis_client, quiet.app_id)
    assert message.text.idx == 0
    assert json_format.MessageToDict(message.raw)["Idx"] == idx


@pytest.mark.parametrize("change", ["another message", "same MsgId, other content"])
async def test_replayed_timestamp_and_nonce_with_another_body_is_forbidden(
    stack: Stack, redis_client: redis.Redis, change: str
) -> None:
    """In plaintext mode the signature does not cover the body, so a captured URL could
    carry any body within the timestamp window. Core remembers the body first seen with
    each (timestamp, nonce) and refuses a different one.
    """
    plain = app(stack, "wxplain")
    timestamp, nonce = int(time.time()), new_nonce()
    first = text_fields("hello", msg_id=new_msg_id())
    second = (
        text_fields("hello", msg_id=new_msg_id())
        if change == "another message"
        else first | {"Content": "give me a refund"}
    )
    url, body = push_request(stack.edge_url, plain, first, nonce=nonce, timestamp=timestamp)
    response = await fetch(url, body)
    assert response.code == 200
    url, body = push_request(stack.edge_url, plain, second, nonce=nonce, timestamp=timestamp)
    before = rejected("replayed_request")
    response = await fetch(url, body)
    assert (response.code, response.body) == (403, status_line(403))
    assert rejected("replayed_request") == before + 1
    message = await only_event(stack, redis_client, plain.app_id)
    assert message.msg_id == first["MsgId"]
    assert message.text.content == "hello"


async def test_an_encrypted_retry_is_judged_by_its_message_not_its_ciphertext(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """Were WeChat to encrypt a retry afresh (a new random prefix), it is still a retry;
    another message under the same (timestamp, nonce) is still refused."""
    safe = app(stack, "wxsafe")
    timestamp, nonce = int(time.time()), new_nonce()
    fields = text_fields("hello", msg_id=new_msg_id())
    once = push_request(
        stack.edge_url, safe, fields, encrypt=True, nonce=nonce, timestamp=timestamp
    )
    again = push_request(
        stack.edge_url, safe, fields, encrypt=True, nonce=nonce, timestamp=timestamp
    )
    assert once[1] != again[1]  # other ciphertext, same message
    assert (await fetch(*once)).code == 200
    assert (await fetch(*again)).code == 200
    other = text_fields("give me a refund", msg_id=new_msg_id())
    url, body = push_request(
        stack.edge_url, safe, other, encrypt=True, nonce=nonce, timestamp=timestamp
    )
    assert (await fetch(url, body)).code == 403
    message = await only_event(stack, redis_client, safe.app_id)
    assert message.text.content == "hello"


@pytest.mark.parametrize("prefix", ["wxplain", "wxquiet", "wxsafe"])
async def test_wechat_retry_gets_the_same_answer_once(
    stack: Stack, redis_client: redis.Redis, prefix: str
) -> None:
    """WeChat re-sends the identical request when it got no answer in 5 s (§4.2).

    The retry reuses timestamp, nonce and body, so it is not a replay: it must get the
    same answer and must not be delivered twice.
    """
    target = app(stack, prefix)
    encrypt = target.encryption == "safe"
    url, body = push_request(stack.edge_url, target, text_fields("hello"), encrypt=encrypt)
    first, second = await fetch(url, body), await fetch(url, body)
    assert first.code == second.code == 200

    def answer(response: HTTPResponse) -> dict[str, Any]:
        if response.body == b"success":
            return {}
        fields = parse_xml(response.body)
        if encrypt:
            assert target.encoding_aes_key is not None
            crypto = MessageCrypto(target.app_id, target.encoding_aes_key.reveal())
            fields = parse_xml(crypto.decrypt(fields["Encrypt"])[0].encode())
        del fields["CreateTime"]  # the reply's time is when it is sent
        return fields

    assert answer(first) == answer(second)
    if prefix == "wxquiet":
        assert first.body == second.body == b"success"
    else:
        assert answer(first)["Content"] == "hi there"
    assert await delivered(stack, redis_client) == 1
