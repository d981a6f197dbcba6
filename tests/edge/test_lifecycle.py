"""Edge lifecycle and key rotation: drain finishes in-flight pushes; old AES keys still open."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis
from tornado.httpclient import AsyncHTTPClient

from tests.edge.signing import push_request, text_fields
from tests.support import AES_KEY, app_table, make_settings, new_app_id, running_stack
from wxplatform.wechat.crypto import MessageCrypto
from wxplatform.wechat.payload import parse_xml, render_xml
from wxplatform.wechat.signature import sign

OLD_KEY = "B" * 43


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
        for _ in range(500):
            if stack.edge.deps.in_flight.count:
                break
            await asyncio.sleep(0.01)
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
