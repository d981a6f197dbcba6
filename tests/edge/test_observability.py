"""JSON logs: one request id from edge to core, and no secret in any log line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import redis.asyncio as redis
from tornado.httpclient import AsyncHTTPClient

from tests.edge.signing import push_request, text_fields
from tests.support import (
    AES_KEY,
    EDGE_CREDENTIAL,
    app_table,
    make_settings,
    new_app_id,
    running_stack,
)
from wxplatform.logs import JsonFormatter


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_request_id_travels_and_secrets_stay_out(
    redis_client: redis.Redis, json_logs: io.StringIO
) -> None:
    settings = make_settings(app_table(new_app_id(), encryption="safe"))
    (app,) = settings.apps.values()
    async with running_stack(settings, redis_client, with_edge=True) as stack:
        url, body = push_request(stack.edge_url, app, text_fields("hello"), encrypt=True)
        response = await AsyncHTTPClient().fetch(url, method="POST", body=body, raise_error=False)
        assert response.code == 200
        # A rejected push is logged too, without the reason leaking anything secret.
        forged = url.replace("msg_signature=", "msg_signature=0")
        await AsyncHTTPClient().fetch(forged, method="POST", body=body, raise_error=False)
    request_id = response.headers["X-Request-Id"]
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    edge_line = next(e for e in lines if e["msg"] == "http" and e["request_id"] == request_id)
    # The push travelled on the edge's delivery stream: core logs it with its request id.
    core_line = next(e for e in lines if e["msg"] == "delivered" and e["request_id"] == request_id)
    assert edge_line["status"] == 200
    assert core_line["caller"] == "edge"
    assert core_line["app_id"] == app.app_id
    stream_line = next(e for e in lines if e["msg"] == "rpc")
    assert stream_line["method"].endswith("IngressService/DeliverStream")
    assert any(e["msg"] == "rejected" and e["reason"] == "bad_msg_signature" for e in lines)
    text = json_logs.getvalue()
    for secret in (app.app_secret.reveal(), app.token.reveal(), AES_KEY, EDGE_CREDENTIAL):
        assert secret not in text
