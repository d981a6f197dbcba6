"""Result events pushed back after sends: TEMPLATESENDJOBFINISH, subscribe_msg_sent_event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from wxplatform.clock import ManualClock
from wxplatform.config import AppConfig
from wxplatform.sim import WeChatSimulator, original_id
from wxplatform.sim.messages import message_crypto
from wxplatform.wechat.payload import parse_json, parse_xml
from wxplatform.wechat.signature import sign

from .send_support import (
    BIZSEND,
    OPENID,
    SUB_ID,
    SUB_KEYS,
    SUBSCRIBE,
    TEMPLATE,
    TEMPLATE_ID,
    call,
    errcode,
    subscribe_body,
    template_body,
    token_for,
)
from .sim_support import DOC_MP, PLAIN, SAFE, Received, Receiver


def opened(app: AppConfig, got: Received) -> dict[str, Any]:
    """The fields of a push as a correct edge reads them: signatures checked, decrypted."""
    q, token = got.query, app.token.reveal()
    parse = parse_json if app.data_format == "json" else parse_xml
    assert q["signature"] == sign(token, q["timestamp"], q["nonce"])
    body = parse(got.body)
    if app.encryption == "plaintext":
        return body
    assert q["encrypt_type"] == "aes"
    assert q["msg_signature"] == sign(token, q["timestamp"], q["nonce"], body["Encrypt"])
    plaintext, _ = message_crypto(app).decrypt(body["Encrypt"])
    return parse(plaintext.encode())


async def ready(sim: WeChatSimulator, client: httpx.AsyncClient, app_id: str) -> str:
    """Register OPENID and both templates with `app_id`; a token for it."""
    sim.set_user(app_id, OPENID)
    sim.add_template(app_id, TEMPLATE_ID, "template", ["keyword1", "keyword2"])
    sim.add_template(app_id, SUB_ID, "subscribe", SUB_KEYS)
    return await token_for(client, app_id)


@pytest.mark.parametrize("app_id", [SAFE, PLAIN])
async def test_templatesendjobfinish_arrives_signed_and_decryptable(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver, app_id: str
) -> None:
    token = await ready(sim, client, app_id)
    sim.set_callback_url(app_id, receiver.base_url)
    msgid = (await call(client, TEMPLATE, token, template_body()))["msgid"]
    [record] = await sim.drain_callbacks()
    assert record.delivered
    assert (record.app_id, record.openid, record.event, record.msgid) == (
        app_id,
        OPENID,
        "TEMPLATESENDJOBFINISH",
        msgid,
    )
    [got] = receiver.received
    assert got.app_id == app_id
    assert got.query["openid"] == OPENID
    assert got.query["timestamp"] == str(int(sim.clock.now()))
    assert opened(sim.apps[app_id], got) == {
        "ToUserName": original_id(app_id),
        "FromUserName": OPENID,
        "CreateTime": str(int(sim.clock.now())),
        "MsgType": "event",
        "Event": "TEMPLATESENDJOBFINISH",
        "MsgID": str(msgid),
        "Status": "success",
    }


async def test_a_user_who_blocked_templates_gets_failed_user_block(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver
) -> None:
    token = await ready(sim, client, SAFE)
    sim.set_user(SAFE, OPENID, template_blocked=True)
    sim.set_callback_url(SAFE, receiver.base_url)
    # The API still says ok: WeChat reports the refusal only in the event.
    assert await errcode(client, TEMPLATE, token, template_body()) == 0
    [record] = await sim.drain_callbacks()
    assert record.fields is not None
    assert record.fields["Status"] == "failed:user block"
    assert opened(sim.apps[SAFE], receiver.received[0])["Status"] == "failed:user block"
    assert sim.sent(SAFE)[0]["job_status"] == "failed:user block"


async def test_forcing_results_through_the_control_api(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver
) -> None:
    token = await ready(sim, client, PLAIN)
    settings = await client.post(
        "/_sim/callbacks", json={"app_id": PLAIN, "edge_url": receiver.base_url, "delay": 60}
    )
    assert settings.json() == {"urls": {PLAIN: receiver.base_url}, "delay": 60}
    # For the next send to OPENID …
    forced = {"app_id": PLAIN, "openid": OPENID, "status": "failed: system failed"}
    assert (await client.post("/_sim/template_result", json=forced)).status_code == 201
    assert (await client.get("/_sim/template_result")).json() == [
        {"app_id": PLAIN, "status": "failed: system failed", "openid": OPENID}
    ]
    first = (await call(client, TEMPLATE, token, template_body()))["msgid"]
    # … and for a send whose event is still pending (the delay is long).
    second = (await call(client, TEMPLATE, token, template_body()))["msgid"]
    by_msgid = {"app_id": PLAIN, "msgid": second, "status": "failed:user block"}
    assert (await client.post("/_sim/template_result", json=by_msgid)).status_code == 201
    third = (await call(client, TEMPLATE, token, template_body()))["msgid"]
    # Draining pushes pending events at once instead of waiting out the delay.
    drained = (await client.post("/_sim/callbacks/drain")).json()
    status = {r["msgid"]: r["fields"]["Status"] for r in drained}
    assert status == {
        first: "failed: system failed",
        second: "failed:user block",
        third: "success",
    }
    assert all(r["delivered"] and r["result"]["status"] == 200 for r in drained)
    assert (await client.get("/_sim/callbacks/results")).json() == drained
    # Too late now: the event is out.
    late = await client.post("/_sim/template_result", json=by_msgid)
    assert late.status_code == 409
    unknown = await client.post("/_sim/template_result", json={**by_msgid, "msgid": 1})
    assert unknown.status_code == 404


async def test_bizsend_reports_subscribe_msg_sent_event(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver
) -> None:
    token = await ready(sim, client, SAFE)
    sim.grant_consent(SAFE, OPENID, SUB_ID)
    sim.set_callback_url(SAFE, receiver.base_url)
    msgid = (await call(client, BIZSEND, token, subscribe_body()))["msgid"]
    [record] = await sim.drain_callbacks()
    assert record.delivered
    fields = opened(sim.apps[SAFE], receiver.received[0])
    assert fields["Event"] == "subscribe_msg_sent_event"
    # The parser hands List over as a list, however many templates it holds.
    assert fields["SubscribeMsgSentEvent"] == {
        "List": [
            {
                "TemplateId": SUB_ID,
                "MsgID": str(msgid),
                "ErrorCode": "0",
                "ErrorStatus": "success",
            }
        ]
    }


async def test_a_mini_programs_subscribe_send_pushes_its_result(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver
) -> None:
    """In the mini program's format (JSON here), `List` a bare object for one template."""
    sim.set_callback_url(DOC_MP, receiver.base_url)
    sim.set_user(DOC_MP, OPENID)
    sim.add_template(DOC_MP, SUB_ID, "subscribe", SUB_KEYS)
    sim.grant_consent(DOC_MP, OPENID, SUB_ID)
    assert await errcode(client, SUBSCRIBE, await token_for(client, DOC_MP), subscribe_body()) == 0
    [record] = await sim.drain_callbacks()
    assert record.delivered
    fields = opened(sim.apps[DOC_MP], receiver.received[0])
    assert (fields["MsgType"], fields["Event"]) == ("event", "subscribe_msg_sent_event")
    entry = fields["SubscribeMsgSentEvent"]["List"]
    assert isinstance(entry, dict)
    assert (entry["TemplateId"], entry["ErrorCode"]) == (SUB_ID, 0)
    assert entry["MsgID"] == sim.sent(DOC_MP)[0]["msgid"]


async def test_apps_without_a_url_push_nothing(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver
) -> None:
    token = await ready(sim, client, PLAIN)
    assert await errcode(client, TEMPLATE, token, template_body()) == 0
    assert await sim.drain_callbacks() == []
    assert receiver.received == []


async def test_a_rejecting_edge_is_recorded(
    client: httpx.AsyncClient, sim: WeChatSimulator, receiver: Receiver
) -> None:
    receiver.answer = lambda _: (500, b"oops")
    token = await ready(sim, client, PLAIN)
    sim.set_callback_url(PLAIN, receiver.base_url)
    await call(client, TEMPLATE, token, template_body())
    [record] = await sim.drain_callbacks()
    assert not record.delivered
    assert record.error == "HTTP status 500"


@pytest.fixture
async def slow_sim(
    apps: dict[str, AppConfig], clock: ManualClock, receiver: Receiver
) -> AsyncIterator[WeChatSimulator]:
    """A simulator whose callback URLs come from the constructor, with a long delay."""
    simulator = WeChatSimulator(
        apps, clock, callback_urls={PLAIN: receiver.base_url}, callback_delay=60
    )
    await simulator.start()
    yield simulator
    await simulator.stop()


async def test_stopping_cancels_pending_events(
    slow_sim: WeChatSimulator, receiver: Receiver
) -> None:
    async with httpx.AsyncClient(base_url=slow_sim.base_url, trust_env=False) as client:
        token = await ready(slow_sim, client, PLAIN)
        assert await errcode(client, TEMPLATE, token, template_body()) == 0
    assert slow_sim.callback_results() == []
    await slow_sim.stop()
    [record] = slow_sim.callback_results()
    assert record.error is not None
    assert record.error.startswith("cancelled")
    assert receiver.received == []
