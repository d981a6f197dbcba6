"""Parsed push fields → the typed `InboundMessage` (docs/wechat.md §3).

Every documented message and event type gets its typed body; anything else becomes
`unknown`. `raw` always keeps every field as received, so nothing is lost. Typed
numeric body fields that do not parse are left at zero (the raw value survives);
malformed envelope fields reject the push.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import struct_pb2

from acme.wxplatform.v1 import inbound_message_pb2 as pb
from wxplatform.wechat.payload import MalformedPayload, Payload

__all__ = ["normalize"]

_UNIX_TIME = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() accepts "²"
# Keyed without spaces and case: the documented spellings ("failed:user block",
# "failed: system failed") differ in their spacing, and a variant must not be lost.
_TEMPLATE_STATUS = {
    "success": pb.TEMPLATE_SEND_STATUS_SUCCESS,
    "failed:userblock": pb.TEMPLATE_SEND_STATUS_USER_BLOCKED,
    "failed:systemfailed": pb.TEMPLATE_SEND_STATUS_SYSTEM_FAILED,
}
_PICTURE_SOURCE = {
    "pic_sysphoto": pb.PICTURE_SOURCE_SYSTEM_CAMERA,
    "pic_photo_or_album": pb.PICTURE_SOURCE_CAMERA_OR_ALBUM,
    "pic_weixin": pb.PICTURE_SOURCE_WECHAT_ALBUM,
}


def _text(fields: Mapping[str, Any], name: str) -> str:
    """A scalar field as text; "" when absent or not a string or number.

    JSON's null and booleans are not values WeChat sends: as text they would become
    "None" or "True", a MsgId shared by unrelated pushes (and so a dedup collision).
    """
    value = fields.get(name, "")
    if value is None or isinstance(value, (bool, dict, list)):
        return ""
    return str(value)


_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)


def _int(fields: Mapping[str, Any], name: str, valid: range = _INT32) -> int:
    """The field as an integer of the proto field's range; 0 if it is not one."""
    try:
        value = int(_text(fields, name).strip() or 0)
    except ValueError:
        return 0
    return value if value in valid else 0


def _int64(fields: Mapping[str, Any], name: str) -> int:
    return _int(fields, name, _INT64)


def _float(fields: Mapping[str, Any], name: str) -> float:
    try:
        value = float(_text(fields, name).strip() or 0)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0


def _table(fields: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = fields.get(name)
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    """WeChat's JSON pushes send a one-element list as a bare object."""
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


def _subscribe_items(
    fields: Mapping[str, Any], wrappers: tuple[str, ...]
) -> list[pb.SubscribeMessageItem]:
    # XML wraps `List` in an event-named element (the official change-event sample
    # wrongly uses the popup wrapper, so accept any of them); JSON pushes put `List` at
    # the top level.
    container: Mapping[str, Any] = fields
    for wrapper in wrappers:
        if isinstance(fields.get(wrapper), dict):
            container = fields[wrapper]
            break
    return [
        pb.SubscribeMessageItem(
            template_id=_text(item, "TemplateId"),
            subscribe_status=_text(item, "SubscribeStatusString"),
            popup_scene=_int(item, "PopupScene"),
            msg_id=_text(item, "MsgID"),
            error_code=_int(item, "ErrorCode"),
            error_status=_text(item, "ErrorStatus"),
        )
        for item in _list(container.get("List"))
        if isinstance(item, dict)
    ]


_SUBSCRIBE_WRAPPERS = ("SubscribeMsgPopupEvent", "SubscribeMsgChangeEvent", "SubscribeMsgSentEvent")


def _pic_md5s(fields: Mapping[str, Any]) -> list[str]:
    items = _list(_table(_table(fields, "SendPicsInfo"), "PicList").get("item"))
    return [_text(i, "PicMd5Sum") for i in items if isinstance(i, dict)]


def _subscribe(f: Mapping[str, Any], m: pb.InboundMessage) -> None:
    key = _text(f, "EventKey")
    m.subscribe.SetInParent()
    m.subscribe.qr_scene = key.removeprefix("qrscene_") if key.startswith("qrscene_") else ""
    m.subscribe.ticket = _text(f, "Ticket")


def _scan_code(f: Mapping[str, Any], m: pb.InboundMessage) -> None:
    info = _table(f, "ScanCodeInfo")
    m.scan_code.CopyFrom(
        pb.ScanCodeEvent(
            key=_text(f, "EventKey"),
            wait_message=m.event == "scancode_waitmsg",
            scan_type=_text(info, "ScanType"),
            scan_result=_text(info, "ScanResult"),
        )
    )


def _pictures(f: Mapping[str, Any], m: pb.InboundMessage) -> None:
    m.pictures.CopyFrom(
        pb.PicturesEvent(
            key=_text(f, "EventKey"),
            source=_PICTURE_SOURCE[m.event],
            count=_int(_table(f, "SendPicsInfo"), "Count"),
            pic_md5_sums=_pic_md5s(f),
        )
    )


def _location_select(f: Mapping[str, Any], m: pb.InboundMessage) -> None:
    info = _table(f, "SendLocationInfo")
    m.location_select.CopyFrom(
        pb.LocationSelectEvent(
            key=_text(f, "EventKey"),
            latitude=_float(info, "Location_X"),
            longitude=_float(info, "Location_Y"),
            scale=_int(info, "Scale"),
            label=_text(info, "Label"),
            poi_name=_text(info, "Poiname"),
        )
    )


def _template_finish(f: Mapping[str, Any], m: pb.InboundMessage) -> None:
    status = _text(f, "Status")
    m.template_send_job_finish.CopyFrom(
        pb.TemplateSendJobFinishEvent(
            msg_id=_text(f, "MsgID"),
            status=_TEMPLATE_STATUS.get(
                "".join(status.split()).lower(), pb.TEMPLATE_SEND_STATUS_UNSPECIFIED
            ),
            status_text=status,
        )
    )


Builder = Callable[[Mapping[str, Any], pb.InboundMessage], None]

_MESSAGES: dict[str, Builder] = {
    "text": lambda f, m: m.text.CopyFrom(
        pb.TextMessage(
            content=_text(f, "Content"),
            msg_data_id=_text(f, "MsgDataId"),
            idx=_int(f, "Idx"),
            biz_msg_menu_id=_text(f, "bizmsgmenuid"),
        )
    ),
    "image": lambda f, m: m.image.CopyFrom(
        pb.ImageMessage(
            pic_url=_text(f, "PicUrl"),
            media_id=_text(f, "MediaId"),
            msg_data_id=_text(f, "MsgDataId"),
            idx=_int(f, "Idx"),
        )
    ),
    "voice": lambda f, m: m.voice.CopyFrom(
        pb.VoiceMessage(
            media_id=_text(f, "MediaId"),
            format=_text(f, "Format"),
            recognition=_text(f, "Recognition"),
            media_id_16k=_text(f, "MediaId16K"),
            msg_data_id=_text(f, "MsgDataId"),
            idx=_int(f, "Idx"),
        )
    ),
    "video": lambda f, m: m.video.CopyFrom(_video(f)),
    "shortvideo": lambda f, m: m.short_video.CopyFrom(_video(f)),
    "location": lambda f, m: m.location.CopyFrom(
        pb.LocationMessage(
            latitude=_float(f, "Location_X"),
            longitude=_float(f, "Location_Y"),
            scale=_int(f, "Scale"),
            label=_text(f, "Label"),
        )
    ),
    "link": lambda f, m: m.link.CopyFrom(
        pb.LinkMessage(
            title=_text(f, "Title"), description=_text(f, "Description"), url=_text(f, "Url")
        )
    ),
    "miniprogrampage": lambda f, m: m.mini_program_page.CopyFrom(
        pb.MiniProgramPageMessage(
            title=_text(f, "Title"),
            mini_program_app_id=_text(f, "AppId"),
            page_path=_text(f, "PagePath"),
            thumb_url=_text(f, "ThumbUrl"),
            thumb_media_id=_text(f, "ThumbMediaId"),
        )
    ),
}


def _video(f: Mapping[str, Any]) -> pb.VideoMessage:
    return pb.VideoMessage(
        media_id=_text(f, "MediaId"),
        thumb_media_id=_text(f, "ThumbMediaId"),
        msg_data_id=_text(f, "MsgDataId"),
        idx=_int(f, "Idx"),
    )


_EVENTS: dict[str, Builder] = {
    "subscribe": _subscribe,
    "unsubscribe": lambda f, m: m.unsubscribe.SetInParent(),
    "SCAN": lambda f, m: m.scan.CopyFrom(
        pb.ScanEvent(qr_scene=_text(f, "EventKey"), ticket=_text(f, "Ticket"))
    ),
    "LOCATION": lambda f, m: m.location_report.CopyFrom(
        pb.LocationReportEvent(
            latitude=_float(f, "Latitude"),
            longitude=_float(f, "Longitude"),
            precision=_float(f, "Precision"),
        )
    ),
    "CLICK": lambda f, m: m.menu_click.CopyFrom(pb.MenuClickEvent(key=_text(f, "EventKey"))),
    "VIEW": lambda f, m: m.menu_view.CopyFrom(
        pb.MenuViewEvent(url=_text(f, "EventKey"), menu_id=_text(f, "MenuId") or _text(f, "MenuID"))
    ),
    "view_miniprogram": lambda f, m: m.menu_view_mini_program.CopyFrom(
        pb.MenuViewMiniProgramEvent(
            page_path=_text(f, "EventKey"), menu_id=_text(f, "MenuId") or _text(f, "MenuID")
        )
    ),
    "scancode_push": _scan_code,
    "scancode_waitmsg": _scan_code,
    "pic_sysphoto": _pictures,
    "pic_photo_or_album": _pictures,
    "pic_weixin": _pictures,
    "location_select": _location_select,
    "TEMPLATESENDJOBFINISH": _template_finish,
    "MASSSENDJOBFINISH": lambda f, m: m.mass_send_job_finish.CopyFrom(
        pb.MassSendJobFinishEvent(
            msg_id=_text(f, "MsgID"),
            status=_text(f, "Status"),
            total_count=_int64(f, "TotalCount"),
            filter_count=_int64(f, "FilterCount"),
            sent_count=_int64(f, "SentCount"),
            error_count=_int64(f, "ErrorCount"),
        )
    ),
    "subscribe_msg_popup_event": lambda f, m: m.subscribe_message_popup.CopyFrom(
        pb.SubscribeMessagePopupEvent(items=_subscribe_items(f, _SUBSCRIBE_WRAPPERS))
    ),
    "subscribe_msg_change_event": lambda f, m: m.subscribe_message_change.CopyFrom(
        pb.SubscribeMessageChangeEvent(items=_subscribe_items(f, _SUBSCRIBE_WRAPPERS[::-1]))
    ),
    "subscribe_msg_sent_event": lambda f, m: m.subscribe_message_sent.CopyFrom(
        pb.SubscribeMessageSentEvent(
            items=_subscribe_items(f, ("SubscribeMsgSentEvent", *_SUBSCRIBE_WRAPPERS[:2]))
        )
    ),
    "user_enter_tempsession": lambda f, m: m.user_enter_temp_session.CopyFrom(
        pb.UserEnterTempSessionEvent(session_from=_text(f, "SessionFrom"))
    ),
}


def _raw_value(value: Any) -> Any:
    """Leaves become strings so 64-bit numbers from JSON pushes stay exact."""
    if isinstance(value, dict):
        return {str(k): _raw_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_raw_value(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _fill_raw(raw: struct_pb2.Struct, fields: Payload) -> None:
    """`raw` = every field as received: strings set directly (nearly all of a push;
    `Struct.update` is pure Python and several times slower), the rest converted."""
    slots = raw.fields
    nested: dict[str, Any] = {}
    for name, value in fields.items():
        if type(value) is str:
            slots[name].string_value = value
        else:
            nested[str(name)] = _raw_value(value)
    if nested:
        raw.update(nested)


def normalize(
    app_id: str, fields: Payload, transport: pb.InboundTransport, received_at: float
) -> pb.InboundMessage:
    """The typed message for one parsed push; raises `MalformedPayload` on a bad envelope."""
    for name in ("ToUserName", "FromUserName", "MsgType"):
        if not _text(fields, name):
            raise MalformedPayload("shape", f"{name} is missing")
    created = _text(fields, "CreateTime").strip()
    if not _UNIX_TIME.fullmatch(created):
        raise MalformedPayload("shape", "CreateTime is not a Unix time")
    msg_type = _text(fields, "MsgType")
    is_event = msg_type == "event"
    message = pb.InboundMessage(
        app_id=app_id,
        to_user_name=_text(fields, "ToUserName"),
        from_user_name=_text(fields, "FromUserName"),
        create_time=int(created),
        msg_type=msg_type,
        event=_text(fields, "Event") if is_event else "",
        # Events have no id of their own: the `MsgID` of a job event names the job.
        msg_id="" if is_event else _text(fields, "MsgId") or _text(fields, "MsgID"),
    )
    message.transport.CopyFrom(transport)
    message.received_time.seconds = int(received_at)
    message.received_time.nanos = int(received_at % 1 * 1e9)
    _fill_raw(message.raw, fields)
    builder = _EVENTS.get(message.event) if is_event else _MESSAGES.get(msg_type)
    if builder is None:
        message.unknown.SetInParent()
    else:
        builder(fields, message)
    return message
