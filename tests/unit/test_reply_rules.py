"""Auto-reply rules: exact, contains and regex keywords, a welcome, and a default."""

from __future__ import annotations

from typing import Any

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from tests.support import app_table, make_settings
from wxplatform.core.services.replies import choose_reply


def app(**overrides: Any) -> Any:
    (config,) = make_settings(app_table("wxrules", **overrides)).apps.values()
    return config


RULES = [
    {"match": "exact", "keyword": "price", "reply": {"type": "text", "content": "exact"}},
    {"match": "contains", "keyword": "help", "reply": {"type": "image", "media_id": "HELP"}},
    {
        "match": "regex",
        "keyword": r"^order\s+\d+$",
        "reply": {"type": "voice", "media_id": "ORDER"},
    },
    {
        "match": "contains",
        "keyword": "news",
        "reply": {"type": "news", "articles": [{"title": "T", "url": "https://x"}]},
    },
]


def text(content: str) -> inbound.InboundMessage:
    return inbound.InboundMessage(msg_type="text", text=inbound.TextMessage(content=content))


def test_rules_in_order_then_default() -> None:
    config = app(auto_reply=RULES)
    assert choose_reply(config, text(" price ")).text.content == "exact"  # exact ignores padding
    assert choose_reply(config, text("price list")).text.content == "default answer"
    assert choose_reply(config, text("I need help")).image.media_id == "HELP"
    assert choose_reply(config, text("order 42")).voice.media_id == "ORDER"
    assert choose_reply(config, text("order 42 now")).text.content == "default answer"
    assert choose_reply(config, text("any news?")).news.articles[0].url == "https://x"


def test_default_applies_to_messages_not_events() -> None:
    config = app()
    image = inbound.InboundMessage(msg_type="image", image=inbound.ImageMessage(media_id="m"))
    assert choose_reply(config, image).text.content == "default answer"
    click = inbound.InboundMessage(
        msg_type="event", event="CLICK", menu_click=inbound.MenuClickEvent()
    )
    assert choose_reply(config, click).WhichOneof("reply") is None


def test_subscribe_welcome() -> None:
    follow = inbound.InboundMessage(
        msg_type="event", event="subscribe", subscribe=inbound.SubscribeEvent()
    )
    assert choose_reply(app(), follow).WhichOneof("reply") is None
    welcome = app(subscribe_reply={"type": "text", "content": "welcome"})
    assert choose_reply(welcome, follow).text.content == "welcome"
