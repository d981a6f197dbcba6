"""Edge lifecycle and key rotation: drain finishes in-flight pushes; old AES keys still open."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis
from tornado.httpclient import AsyncHTTPClient

from tests.edge.signing import push_request, text_fields
from tests.support import AES_KEY, Stack, app_table, make_settings, new_app_id, running_stack
from wxplatform.wechat.crypto import MessageCrypto
from wxplatform.wechat.payload import parse_xml, render_xml
from wxplatform.wechat.signature import sign

OLD_KEY = "B" * 43


async def until_in_flight(stack: Stack) -> None:
    """Wait (a few seconds at most) until the edge counts a push in flight."""
    assert stack.edge is not None
    for _ in range(500):
        if stack.edge.deps.in_flight.count:
            return
        await asyncio.sleep(0.01)


async def test_stop_lets_an_in_flight_push_finish(redis_client: redis.Redis) -> None:
    settings = make_settings(app_table(new_app_id()))
    (app,) = settings.apps.values()
    async with running_stack(settings, redis_client, with_edge=True) as stack:
        assert stack.edge is not None
        url, body = push_request(stack.edge_url, app, text_fields("hello"))
        # Hold core's Redis writes so the push is still being processed when stop begins.
        await redis_client.execute_command("CLIENT", "PAUSE", "1000", "WRITE")  # type: ignore[no-untyped-call]
        pushing = asyncio.ensure_future(
            AsyncHTTPClient().fetch(url, method="POST", body=body, raise_error=False)
        )
        await until_in_flight(stack)
        assert stack.edge.deps.in_flight.count == 1
        await stack.edge.stop(grace_seconds=10)
        response = await pushing
        assert response.code == 200
        assert parse_xml(response.body)["Content"] == "hi there"


async def test_previous_aes_key_still_opens_and_the_reply_uses_it(
    redis_client: redis.Redis,
) -> None:
    app_id = new_app_id()
    settings = make_settings(
        app_table(app_id, encryption="safe", previous_encoding_aes_key=OLD_KEY)
    )
    (app,) = settings.apps.values()
    async with running_stack(settings, redis_client, with_edge=True) as stack:
        # WeChat still encrypts with the old key for a while after a rotation.
        old = MessageCrypto(app_id, OLD_KEY)
        fields = text_fields("hello")
        url, _ = push_request(stack.edge_url, app, fields, nonce="5150")
        sealed = old.encrypt(render_xml(fields).decode())
        timestamp = url.split("timestamp=")[1].split("&")[0]
        signature = sign(app.token.reveal(), timestamp, "5150", sealed)
        url += f"&encrypt_type=aes&msg_signature={signature}"
        body = render_xml({"ToUserName": fields["ToUserName"], "Encrypt": sealed})
        response = await AsyncHTTPClient().fetch(url, method="POST", body=body, raise_error=False)
        assert response.code == 200
        envelope = parse_xml(response.body)
        plaintext, _ = old.decrypt(envelope["Encrypt"])  # the reply is sealed with the old key
        assert parse_xml(plaintext.encode())["Content"] == "hi there"
        assert (
            MessageCrypto(app_id, AES_KEY, previous_key=OLD_KEY).decrypt(envelope["Encrypt"])[1]
            == 1
        )


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, dict[str, str], bytes]:
    """One request on a kept-alive connection: status, headers, body."""
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers.get("Content-Length", "0")))
    return int(lines[0].split(" ")[1]), headers, body


def _raw_push(url: str, body: bytes) -> bytes:
    target = url.split("//", 1)[1].split("/", 1)[1]
    return (
        f"POST /{target} HTTP/1.1\r\nHost: edge\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_during_a_drain_answers_close_their_keep_alive_connections(
    redis_client: redis.Redis,
) -> None:
    """A kept-alive client may still send a push while the edge drains: it is answered,
    and its connection closed, so it reconnects elsewhere rather than keep the draining
    edge busy."""
    settings = make_settings(app_table(new_app_id()))
    (app,) = settings.apps.values()
    async with running_stack(settings, redis_client, with_edge=True) as stack:
        assert stack.edge is not None
        port = stack.edge.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Another client's push is still arriving when the drain begins: it holds the drain.
        slow = _raw_push(*push_request(stack.edge_url, app, text_fields("held")))
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            status, headers, _ = await _exchange(
                reader, writer, _raw_push(*push_request(stack.edge_url, app, text_fields("one")))
            )
            assert (status, headers.get("Connection")) == (200, None)  # kept alive
            slow_writer.write(slow[:-10])
            await slow_writer.drain()
            await until_in_flight(stack)
            stopping = asyncio.ensure_future(stack.edge.stop(grace_seconds=10))
            await asyncio.sleep(0.05)
            status, headers, reply = await _exchange(
                reader, writer, _raw_push(*push_request(stack.edge_url, app, text_fields("two")))
            )
            assert status == 200
            assert b"default answer" in reply
            assert headers.get("Connection") == "close"
            # Closed by the edge at once, while the drain still waits for the slow push.
            assert await asyncio.wait_for(reader.read(), 1) == b""
            assert not stopping.done()
            status, _, _ = await _exchange(slow_reader, slow_writer, slow[-10:])
            assert status == 200
            await stopping
        finally:
            writer.close()
            slow_writer.close()


async def test_a_push_still_arriving_when_the_drain_begins_is_answered(
    redis_client: redis.Redis,
) -> None:
    settings = make_settings(app_table(new_app_id()))
    (app,) = settings.apps.values()
    async with running_stack(settings, redis_client, with_edge=True) as stack:
        assert stack.edge is not None
        request = _raw_push(*push_request(stack.edge_url, app, text_fields("slowly")))
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.edge.port)
        try:
            writer.write(request[:-20])  # the headers and most of the body
            await writer.drain()
            await until_in_flight(stack)
            stopping = asyncio.ensure_future(stack.edge.stop(grace_seconds=10))
            await asyncio.sleep(0.2)
            status, _, reply = await _exchange(reader, writer, request[-20:])
            assert status == 200
            assert b"default answer" in reply
            await stopping
        finally:
            writer.close()
