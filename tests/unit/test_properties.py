"""Property tests: parsing, normalizing and decrypting never fail in an unplanned way.

The edge turns `MalformedPayload` and `CryptoError` into a clean 400 with a reason label.
Any other exception still becomes a 400, but as `payload_unparseable` with an ERROR log
and a stack trace per push, which is what an attacker can then produce at will. So the
contract checked here is narrow: for *any* input, these functions return or raise their
own error type, and what they return keeps the input's content.
"""

from __future__ import annotations

import base64
import math
import string
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from acme.wxplatform.v1.inbound_message_pb2 import InboundMessage, InboundTransport
from edge.normalize import normalize
from wxplatform.wechat.crypto import CryptoError, MessageCrypto
from wxplatform.wechat.payload import (
    REPEATABLE,
    MalformedPayload,
    Payload,
    parse_json,
    parse_xml,
    render_xml,
)

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OLD_KEY = "A" * 43  # the official example key: 32 zero bytes (docs/wechat.md §2.2)
APP_ID = "wx1234567890abcdef"

# Fast, and stable on a noisy box: no per-example deadline, a modest number of examples.
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- (a) parsers: any bytes ----------------------------------------------------------

XML_TOKENS = [
    "<xml>", "</xml>", "<A>", "</A>", "<item>", "</item>", "<List>", "</List>", "<MsgId>",
    "</MsgId>", "<![CDATA[", "]]>", "<!DOCTYPE xml>", '<!DOCTYPE xml [<!ENTITY a "b">]>',
    "&a;", "&amp;", "&#0;", "&#x110000;", "&", "<", ">", "<?xml version=\"1.0\"?>",
    '<?xml version="1.0" encoding="utf-8"?>', '<?xml version="1.0" encoding="latin1"?>',
    '<?xml version="1.0" encoding="utf-16"?>', '<?xml version="1.0" encoding="nonsense"?>',
    "<!-- utf-8 -->", "\ufeff", "<x:y xmlns:x='u'>", "</x:y>", "<a b='1' b='2'/>", "<?pi x?>",
]  # fmt: skip
JSON_TOKENS = [
    "{", "}", "[", "]", ":", ",", '"a"', '"MsgId"', "1", "-0", "1e999", "9" * 5000, "NaN",
    "Infinity", "true", "null", '"\\ud800"', '"\\u0000"', '"\\x"', " ", "\ufeff",
]  # fmt: skip


def _token_soup(tokens: list[str]) -> st.SearchStrategy[bytes]:
    piece = st.one_of(st.sampled_from(tokens), st.text(max_size=4))
    return st.lists(piece, max_size=30).map(lambda parts: "".join(parts).encode())


def _check_parse_xml(body: bytes) -> None:
    try:
        fields = parse_xml(body)
    except MalformedPayload:
        return
    assert isinstance(fields, dict)


@PROPERTY
@given(st.one_of(st.binary(max_size=512), _token_soup(XML_TOKENS)))
@example(b'<?xml version="1.0" encoding="utf-8x"?><xml><A>1</A></xml>')
def test_parse_xml_returns_fields_or_raises_malformed_payload(body: bytes) -> None:
    """Any bytes: a dict, or `MalformedPayload`; never a parser's own exception."""
    _check_parse_xml(body)


@PROPERTY
@given(
    st.one_of(st.binary(max_size=512), _token_soup(XML_TOKENS)).filter(
        lambda body: b"encoding" not in body.lower()
    )
)
@example(b"<xml>" + b"<a>" * 5000 + b"</a>" * 5000 + b"</xml>")
@example(b'<!DOCTYPE xml [<!ENTITY a "b">]><xml><A>&a;</A></xml>')
def test_parse_xml_returns_fields_or_raises_malformed_payload_without_declared_encoding(
    body: bytes,
) -> None:
    """The same property minus encoding declarations, so it still guards everything else
    while the bug above stands.
    """
    _check_parse_xml(body)


@PROPERTY
@given(st.one_of(st.binary(max_size=512), _token_soup(JSON_TOKENS)))
@example(b'{"n": ' + b"9" * 5000 + b"}")
@example(b"[" * 5000 + b"]" * 5000)
def test_parse_json_returns_fields_or_raises_malformed_payload(body: bytes) -> None:
    """Any bytes: a dict, or `MalformedPayload`; never a `ValueError` or `RecursionError`."""
    try:
        fields = parse_json(body)
    except MalformedPayload:
        return
    assert isinstance(fields, dict)


def test_json_nested_deeper_than_half_the_recursion_limit_raises_malformed_payload() -> None:
    """Pinned at one depth: random token soups (above) almost never nest this deep.

    600 levels: json.loads copes (under 1000 frames), the depth check needs 1200.
    """
    with pytest.raises(MalformedPayload):
        parse_json(b'{"a": ' + b"[" * 600 + b"]" * 600 + b"}")


# --- (b) normalize: any parsed fields ------------------------------------------------

MSG_TYPES = [
    "text", "image", "voice", "video", "shortvideo", "location", "link", "miniprogrampage",
    "event", "file", "",
]  # fmt: skip
EVENTS = [
    "subscribe", "unsubscribe", "SCAN", "LOCATION", "CLICK", "VIEW", "view_miniprogram",
    "scancode_push", "scancode_waitmsg", "pic_sysphoto", "pic_photo_or_album", "pic_weixin",
    "location_select", "TEMPLATESENDJOBFINISH", "MASSSENDJOBFINISH",
    "subscribe_msg_popup_event", "subscribe_msg_change_event", "subscribe_msg_sent_event",
    "user_enter_tempsession", "kf_create_session", "",
]  # fmt: skip
FIELD_NAMES = [
    "Content", "MsgId", "MsgID", "MsgDataId", "Idx", "bizmsgmenuid", "PicUrl", "MediaId",
    "Format", "Recognition", "MediaId16K", "ThumbMediaId", "Location_X", "Location_Y",
    "Scale", "Label", "Title", "Description", "Url", "AppId", "PagePath", "ThumbUrl",
    "EventKey", "Ticket", "Latitude", "Longitude", "Precision", "MenuId", "MenuID",
    "ScanCodeInfo", "ScanType", "ScanResult", "SendPicsInfo", "Count", "PicList", "item",
    "PicMd5Sum", "SendLocationInfo", "Poiname", "Status", "TotalCount", "FilterCount",
    "SentCount", "ErrorCount", "SubscribeMsgPopupEvent", "SubscribeMsgChangeEvent",
    "SubscribeMsgSentEvent", "List", "TemplateId", "SubscribeStatusString", "PopupScene",
    "ErrorCode", "ErrorStatus", "SessionFrom",
]  # fmt: skip
INT32 = (-(2**31), 2**31 - 1)


def _numeric_text(numbers: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    """Numbers as WeChat's XML carries them, and as an attacker might pad them."""
    return st.one_of(
        numbers.map(str),
        numbers.map(lambda n: f" {n} "),
        st.floats().map(str),
        st.sampled_from(["nan", "-inf", "1e999", "0x10", "1_000", "٣", "²", "9" * 5000]),
    )


def _fits_int32(text: str) -> bool:
    """False for a leaf that `int()` reads as a number outside int32."""
    try:
        value = int(text.strip() or 0)
    except ValueError:
        return True
    return INT32[0] <= value <= INT32[1]


def _fields(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Payload]:
    """Pushes: mostly a valid envelope, documented and random field names, nested values."""
    name = st.one_of(st.sampled_from(FIELD_NAMES), st.text(min_size=1, max_size=8))
    value = st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.dictionaries(name, inner, max_size=4), st.lists(inner, max_size=3)
        ),
        max_leaves=8,
    )
    envelope = st.fixed_dictionaries(
        {
            "ToUserName": st.one_of(st.just("gh_test"), leaf),
            "FromUserName": st.one_of(st.just("oUser1"), leaf),
            "CreateTime": st.one_of(st.integers(0, 10**12).map(str), leaf),
            "MsgType": st.one_of(st.sampled_from(MSG_TYPES), leaf),
            "Event": st.one_of(st.sampled_from(EVENTS), leaf),
        }
    )
    dropped = st.sets(st.sampled_from(["ToUserName", "FromUserName", "CreateTime", "Event"]))
    body = st.dictionaries(name, value, max_size=8)
    return st.builds(
        lambda env, gone, rest: {k: v for k, v in (env | rest).items() if k not in gone},
        envelope,
        dropped,
        body,
    )


def _expected_raw(value: Any) -> Any:
    """What `raw` must hold for a leaf: the text itself; JSON scalars in their JSON spelling."""
    if isinstance(value, dict):
        return {str(k): _expected_raw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expected_raw(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float):
        return value  # compared by value below: "1e+16" and "1e16" are the same number
    return str(value)


def _same_raw(raw: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return (
            isinstance(raw, dict)
            and raw.keys() == expected.keys()
            and all(_same_raw(raw[k], expected[k]) for k in expected)
        )
    if isinstance(expected, list):
        return (
            isinstance(raw, list)
            and len(raw) == len(expected)
            and all(_same_raw(r, e) for r, e in zip(raw, expected, strict=True))
        )
    if isinstance(expected, float):
        if not isinstance(raw, str):
            return False
        parsed = float(raw)
        return parsed == expected or (math.isnan(parsed) and math.isnan(expected))
    return isinstance(raw, str) and raw == expected


def _check_normalize(fields: Payload) -> None:
    """Returns an `InboundMessage` keeping every leaf, or raises `MalformedPayload`."""
    try:
        message = normalize(APP_ID, fields, InboundTransport(), 0.0)
    except MalformedPayload:
        return
    assert isinstance(message, InboundMessage)
    assert message.WhichOneof("body") is not None
    raw = json_format.MessageToDict(message.raw)
    assert _same_raw(raw, _expected_raw(fields)), (raw, fields)


TEXT_LEAF = st.one_of(st.text(max_size=12), _numeric_text(st.integers()))


@PROPERTY
@given(_fields(TEXT_LEAF))
@example({"ToUserName": "gh", "FromUserName": "o", "CreateTime": "1", "MsgType": "text",
          "Idx": "2147483648"})  # fmt: skip
def test_normalize_returns_a_message_or_raises_malformed_payload(fields: Payload) -> None:
    """Any string fields, any MsgType/Event: a message keeping every leaf, or a clean refusal."""
    _check_normalize(fields)


@PROPERTY
@given(
    _fields(st.one_of(st.text(max_size=12), _numeric_text(st.integers(*INT32))).filter(_fits_int32))
)
def test_normalize_returns_a_message_or_raises_malformed_payload_within_int32(
    fields: Payload,
) -> None:
    """The same property with numbers inside int32, so it still guards everything else
    while the out-of-range bug above stands.
    """
    _check_normalize(fields)


JSON_LEAF = st.one_of(
    st.text(max_size=12),
    st.integers(*INT32),
    st.floats(),
    st.booleans(),
    st.none(),
)


@PROPERTY
@given(_fields(JSON_LEAF))
def test_normalize_keeps_json_scalars_as_strings(fields: Payload) -> None:
    """JSON pushes (mini programs) carry numbers, booleans and nulls; `raw` keeps them all."""
    _check_normalize(fields)


@PROPERTY
@given(st.integers(min_value=0, max_value=2**64 - 1))
@example(2**53 + 1)  # the first integer a double cannot hold
def test_64_bit_msg_ids_from_json_stay_exact(msg_id: int) -> None:
    """A JSON `MsgId` is a 64-bit number; as a double it would lose its low digits."""
    fields = parse_json(
        b'{"ToUserName": "gh", "FromUserName": "o", "CreateTime": 1, "MsgType": "text", '
        b'"MsgId": ' + str(msg_id).encode() + b"}"
    )
    message = normalize(APP_ID, fields, InboundTransport(), 0.0)
    assert message.msg_id == str(msg_id)
    assert json_format.MessageToDict(message.raw)["MsgId"] == str(msg_id)


# --- (c) render_xml → parse_xml -------------------------------------------------------


# XML 1.0 `Char`s, minus CR: parsers turn CR and CRLF into LF, even inside CDATA, so no
# XML round trip keeps a CR (the edge's replies included). C0 controls other than tab and
# LF are not XML characters at all; C1 controls (U+007F-U+009F) are.
XML_CHAR = st.characters(
    exclude_categories=["Cs", "Cc"],
    include_characters="\t\n" + "".join(map(chr, range(0x7F, 0xA0))),
    exclude_characters="\ufffe\uffff",
)


XML_TEXT = st.lists(
    st.one_of(
        st.text(XML_CHAR, max_size=10),
        st.sampled_from(["]]>", "]]", "]", ">", "<![CDATA[", "&amp;", "&", "<", "</xml>"]),
    ),
    max_size=6,
).map("".join)
# Names as WeChat uses them; `item` and `List` repeat, so they parse back as lists.
XML_NAME = st.builds(
    str.__add__,
    st.sampled_from(string.ascii_letters + "_"),
    st.text(alphabet=string.ascii_letters + string.digits + "_", max_size=15),
).filter(lambda n: n not in REPEATABLE)


@PROPERTY
@given(st.dictionaries(XML_NAME, XML_TEXT, min_size=1, max_size=8))
@example({"Content": "a]]>b]]>]]>"})
@example({"Content": "]]>"})
@example({"Content": ""})
def test_render_then_parse_round_trips(fields: dict[str, str]) -> None:
    """What the edge renders (replies, envelopes) reads back exactly, "]]>" included."""
    assert parse_xml(render_xml(fields)) == fields


# --- (d) decrypt: any input ----------------------------------------------------------

CRYPTOS = [MessageCrypto(APP_ID, KEY), MessageCrypto(APP_ID, KEY, OLD_KEY)]
B64_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "+/=", max_size=120)


def _check_decrypt(encrypted: str) -> None:
    for crypto in CRYPTOS:
        try:
            plaintext, key_index = crypto.decrypt(encrypted)
        except CryptoError:
            continue
        assert isinstance(plaintext, str)
        assert key_index in (0, 1)


@PROPERTY
@given(st.one_of(st.text(max_size=200), B64_TEXT))
@example("")
@example("====")
@example("é" * 44)
def test_decrypt_any_string_returns_or_raises_crypto_error(encrypted: str) -> None:
    """Whatever `<Encrypt>` holds: a plaintext, or `CryptoError`."""
    _check_decrypt(encrypted)


@PROPERTY
@given(st.binary(max_size=256))
@example(bytes(16))
@example(bytes(32))
@example(bytes([32]) * 64)
def test_decrypt_any_base64_bytes_returns_or_raises_crypto_error(data: bytes) -> None:
    """Valid base64 of any bytes reaches AES and the padding and length checks."""
    _check_decrypt(base64.b64encode(data).decode())


@PROPERTY
@given(st.text(max_size=100), st.data())
def test_decrypt_with_one_byte_flipped_returns_or_raises_crypto_error(
    message: str, data: st.DataObject
) -> None:
    """A tampered ciphertext (CBC is malleable) still only returns or raises `CryptoError`."""
    raw = bytearray(base64.b64decode(CRYPTOS[0].encrypt(message)))
    position = data.draw(st.integers(0, len(raw) - 1), label="position")
    raw[position] ^= data.draw(st.integers(1, 255), label="xor")
    _check_decrypt(base64.b64encode(raw).decode())


# --- (e) encrypt → decrypt ----------------------------------------------------------

AES_KEYS = st.text(alphabet=string.ascii_letters + string.digits, min_size=43, max_size=43)


@PROPERTY
@given(st.text(), st.text(min_size=1, max_size=32), AES_KEYS, AES_KEYS, st.booleans())
@example("我是中文abcd123", APP_ID, KEY, OLD_KEY, False)
@example("", APP_ID, KEY, OLD_KEY, True)
def test_encrypt_then_decrypt_round_trips(
    message: str, app_id: str, key: str, previous: str, with_previous: bool
) -> None:
    """Any text, any appid, either key of a rotation: decrypt gives back the text and the key."""
    crypto = MessageCrypto(app_id, key, previous)
    key_index = int(with_previous and key != previous)
    assert crypto.decrypt(crypto.encrypt(message, key_index=key_index)) == (message, key_index)
