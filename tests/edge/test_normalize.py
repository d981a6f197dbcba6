"""Every inbound sample of the official vectors normalizes to its fields and dedup key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format

from acme.wxplatform.v1 import inbound_message_pb2 as pb
from edge.normalize import normalize
from wxplatform.core.services.ingress import dedup_key
from wxplatform.wechat.payload import parse_json, parse_xml

# The typed body each documented (MsgType, Event) must land in.
EXPECTED_BODY = {
    ("text", None): "text",
    ("image", None): "image",
    ("voice", None): "voice",
    ("video", None): "video",
    ("shortvideo", None): "short_video",
    ("location", None): "location",
    ("link", None): "link",
    ("miniprogrampage", None): "mini_program_page",
    ("event", "subscribe"): "subscribe",
    ("event", "unsubscribe"): "unsubscribe",
    ("event", "SCAN"): "scan",
    ("event", "LOCATION"): "location_report",
    ("event", "CLICK"): "menu_click",
    ("event", "VIEW"): "menu_view",
    ("event", "view_miniprogram"): "menu_view_mini_program",
    ("event", "scancode_push"): "scan_code",
    ("event", "pic_sysphoto"): "pictures",
    ("event", "location_select"): "location_select",
    ("event", "TEMPLATESENDJOBFINISH"): "template_send_job_finish",
    ("event", "MASSSENDJOBFINISH"): "mass_send_job_finish",
    ("event", "subscribe_msg_popup_event"): "subscribe_message_popup",
    ("event", "subscribe_msg_change_event"): "subscribe_message_change",
    ("event", "subscribe_msg_sent_event"): "subscribe_message_sent",
    ("event", "user_enter_tempsession"): "user_enter_temp_session",
}


def same(expected: Any, got: Any) -> bool:
    """Raw fields equal the expected ones; XML's repeatable elements come as lists."""
    if isinstance(got, list) and not isinstance(expected, list):
        return len(got) == 1 and same(expected, got[0])
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and expected.keys() == got.keys()
            and all(same(v, got[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(same, expected, got))
    return bool(str(expected) == got)


def message_of(vector: dict[str, Any]) -> pb.InboundMessage:
    fields = (
        parse_xml(vector["xml"].encode())
        if "xml" in vector
        else parse_json(json.dumps(vector["body"]).encode())
    )
    return normalize("wxapp", fields, pb.InboundTransport(), 1_700_000_001.5)


def xml_vectors(vectors: dict[str, Any]) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = vectors["inbound_xml"]
    return data


def test_every_xml_sample(vectors: dict[str, Any]) -> None:
    samples = xml_vectors(vectors)
    assert len(samples) == 26
    for vector in samples:
        message = message_of(vector)
        dispatch = vector["dispatch"]
        assert message.msg_type == dispatch["MsgType"], vector["id"]
        assert message.event == (dispatch["Event"] or ""), vector["id"]
        assert message.WhichOneof("body") == EXPECTED_BODY[(dispatch["MsgType"], dispatch["Event"])]
        raw = json.loads(json.dumps(dict(message.raw.items()), default=_struct_value))
        assert same(vector["expected_fields"], raw), vector["id"]
        assert message.create_time == int(vector["expected_fields"]["CreateTime"])
        key = dedup_key(message)
        if vector["dedup"]["strategy"] == "MsgId":
            assert key == f"msg:{vector['dedup']['key']}", vector["id"]
        else:
            # WeChat's FromUserName+CreateTime, refined by a digest of every field.
            assert key.startswith(f"evt:{vector['dedup']['key']}:"), vector["id"]


def _struct_value(value: Any) -> Any:
    from google.protobuf import json_format

    return json.loads(json_format.MessageToJson(value))


def by_id(vectors: dict[str, Any], vector_id: str) -> pb.InboundMessage:
    vector = next(
        v for v in vectors["inbound_xml"] + vectors["inbound_json"] if v["id"] == vector_id
    )
    return message_of(vector)


def test_typed_fields_of_selected_samples(vectors: dict[str, Any]) -> None:
    assert by_id(vectors, "in-event-subscribe-qrscene").subscribe.qr_scene == "123123"
    assert by_id(vectors, "in-event-subscribe").subscribe.qr_scene == ""
    voice = by_id(vectors, "in-voice-recognition").voice
    assert voice.recognition
    assert voice.format
    popup = by_id(vectors, "in-event-subscribe-msg-popup").subscribe_message_popup
    assert [(i.template_id, i.subscribe_status, i.popup_scene) for i in popup.items] == [
        ("TPL_A", "accept", 2),
        ("TPL_B", "reject", 2),
    ]
    pictures = by_id(vectors, "in-event-pic-sysphoto").pictures
    assert pictures.source == pb.PICTURE_SOURCE_SYSTEM_CAMERA
    assert (pictures.count, list(pictures.pic_md5_sums)) == (
        1,
        ["1b5f7c23b5bf75682a53e7b6d163e185"],
    )
    finish = by_id(vectors, "in-event-templatesendjobfinish").template_send_job_finish
    assert finish.status != pb.TEMPLATE_SEND_STATUS_UNSPECIFIED
    assert finish.msg_id
    assert by_id(vectors, "in-event-templatesendjobfinish").msg_id == ""  # MsgID names the job
    location = by_id(vectors, "in-location").location
    assert location.latitude
    assert location.longitude
    assert location.label


@pytest.mark.parametrize(
    "vector_id", ["json-subscribe-msg-popup-single", "json-subscribe-msg-change-multi"]
)
def test_json_list_as_object_or_array(vectors: dict[str, Any], vector_id: str) -> None:
    vector = next(v for v in vectors["inbound_json"] if v["id"] == vector_id)
    message = message_of(vector)
    body = message.WhichOneof("body")
    assert body in {"subscribe_message_popup", "subscribe_message_change"}
    assert len(getattr(message, body).items) == vector["expected_list_len"]
    assert message.create_time == int(vector["body"]["CreateTime"])  # string or number


def test_json_message_id_keeps_every_digit(vectors: dict[str, Any]) -> None:
    message = by_id(vectors, "json-wxa-kf-text")
    assert message.msg_id == "1234567890123456"
    assert message.text.content == "this is a test"
    big = normalize(
        "wxapp",
        parse_json(
            b'{"ToUserName":"gh","FromUserName":"o","CreateTime":1,"MsgType":"text","MsgId":9223372036854775807}'
        ),
        pb.InboundTransport(),
        0,
    )
    assert big.msg_id == "9223372036854775807"
    assert big.raw["MsgId"] == "9223372036854775807"


@pytest.mark.parametrize("value", ["null", "true", "[]", "{}"])
def test_a_msgid_that_is_not_a_string_or_number_is_no_msgid(value: str) -> None:
    """As text, null would be "None": one dedup key for unrelated pushes of every user."""

    def text(user: str) -> pb.InboundMessage:
        body = f'{{"ToUserName":"gh","FromUserName":"{user}","CreateTime":1700000000,'
        body += f'"MsgType":"text","Content":"hi","MsgId":{value}}}'
        return normalize("wxapp", parse_json(body.encode()), pb.InboundTransport(), 0)

    assert text("oA").msg_id == ""
    assert dedup_key(text("oA")) != dedup_key(text("oB"))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("success", pb.TEMPLATE_SEND_STATUS_SUCCESS),
        ("failed:user block", pb.TEMPLATE_SEND_STATUS_USER_BLOCKED),
        ("failed: user block", pb.TEMPLATE_SEND_STATUS_USER_BLOCKED),
        ("failed: system failed", pb.TEMPLATE_SEND_STATUS_SYSTEM_FAILED),
        ("failed:system failed", pb.TEMPLATE_SEND_STATUS_SYSTEM_FAILED),
        ("Failed: System Failed", pb.TEMPLATE_SEND_STATUS_SYSTEM_FAILED),
        ("failed: something new", pb.TEMPLATE_SEND_STATUS_UNSPECIFIED),
    ],
)
def test_template_results_are_read_whatever_their_spacing(status: str, expected: int) -> None:
    fields = {"ToUserName": "gh", "FromUserName": "o1", "CreateTime": "1700000000",
              "MsgType": "event", "Event": "TEMPLATESENDJOBFINISH", "MsgID": "200163836",
              "Status": status}  # fmt: skip
    finish = normalize("wxapp", fields, pb.InboundTransport(), 0).template_send_job_finish
    assert finish.status == expected
    assert finish.status_text == status


def test_two_events_in_one_second_get_different_keys() -> None:
    def click(key: str) -> pb.InboundMessage:
        fields = {"ToUserName": "gh", "FromUserName": "o1", "CreateTime": "1700000000",
                  "MsgType": "event", "Event": "CLICK", "EventKey": key}  # fmt: skip
        return normalize("wxapp", fields, pb.InboundTransport(), 0)

    assert dedup_key(click("A")) != dedup_key(click("B"))
    assert dedup_key(click("A")) == dedup_key(click("A"))


def test_unknown_types_keep_every_field() -> None:
    fields = {"ToUserName": "gh", "FromUserName": "o1", "CreateTime": "1700000000",
              "MsgType": "event", "Event": "kf_create_session", "KfAccount": "a@b",
              "Nested": {"Deep": {"Value": "x"}}}  # fmt: skip
    message = normalize("wxapp", fields, pb.InboundTransport(), 0)
    assert message.WhichOneof("body") == "unknown"
    assert message.raw["KfAccount"] == "a@b"
    raw = json_format.MessageToDict(message.raw)
    assert raw["Nested"] == {"Deep": {"Value": "x"}}
