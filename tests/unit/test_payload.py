"""Safe parsing: hostile XML and JSON give a typed rejection, never a crash or a fetch."""

from __future__ import annotations

import pytest

from wxplatform.wechat.payload import MalformedPayload, parse_json, parse_xml, render_xml


def kind_of(body: bytes, *, json_format: bool = False) -> str:
    with pytest.raises(MalformedPayload) as caught:
        (parse_json if json_format else parse_xml)(body)
    return caught.value.kind


def test_plain_message_parses() -> None:
    fields = parse_xml(
        b"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><CreateTime>12</CreateTime></xml>"
    )
    assert fields == {"ToUserName": "gh_1", "CreateTime": "12"}


def test_dtd_and_entities_are_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>'
        b"<xml><A>&b;</A></xml>"
    )
    external = b'<!DOCTYPE x [<!ENTITY e SYSTEM "http://127.0.0.1:1/x">]><xml><A>&e;</A></xml>'
    assert kind_of(bomb) == "dtd"
    assert kind_of(external) == "dtd"
    assert kind_of(b"<!DOCTYPE xml><xml><A>1</A></xml>") == "dtd"


def test_duplicate_fields_are_refused_but_items_repeat() -> None:
    assert kind_of(b"<xml><MsgId>1</MsgId><MsgId>2</MsgId></xml>") == "duplicate"
    fields = parse_xml(b"<xml><L><item><M>1</M></item><item><M>2</M></item></L></xml>")
    assert fields["L"]["item"] == [{"M": "1"}, {"M": "2"}]
    assert kind_of(b'{"A": 1, "A": 2}', json_format=True) == "duplicate"


def test_depth_encoding_syntax_and_shape() -> None:
    deep = b"<xml>" + b"<a>" * 20 + b"x" + b"</a>" * 20 + b"</xml>"
    assert kind_of(deep) == "depth"
    assert kind_of("<xml><A>é</A></xml>".encode("latin-1")) == "encoding"
    assert kind_of(b"<xml><A>") == "syntax"
    assert kind_of(b"<root><A>1</A></root>") == "shape"
    assert kind_of(b"[1, 2]", json_format=True) == "shape"
    assert kind_of(b'{"a":' * 50 + b"1" + b"}" * 50, json_format=True) == "depth"
    assert kind_of(b'{"n": ' + b"9" * 5000 + b"}", json_format=True) == "syntax"  # int too long


def test_render_uses_cdata_and_bare_integers() -> None:
    xml = render_xml({"Content": "a]]>b", "CreateTime": 7, "Articles": {"item": [{"Title": "t"}]}})
    assert xml == (
        b"<xml><Content><![CDATA[a]]]]><![CDATA[>b]]></Content><CreateTime>7</CreateTime>"
        b"<Articles><item><Title><![CDATA[t]]></Title></item></Articles></xml>"
    )
    assert parse_xml(xml)["Content"] == "a]]>b"
