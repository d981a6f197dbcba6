"""Which interactions open a customer-service window (docs/wechat.md §5.3).

Recorded here at ingress; enforced by messaging before any customer-service send. The
latest interaction of a kind opens a fresh window of that kind with its full quota; an
unfollow closes them all (WeChat answers 45015 to a user who unfollowed).
"""

from __future__ import annotations

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from wxplatform.config import AppConfig
from wxplatform.core.model import WindowGrant

__all__ = ["closes_windows", "windows_opened_by"]

_MINUTE = 60
_TWO_DAYS = 48 * 3600

USER_MESSAGE = WindowGrant("message", quota=5, seconds=_TWO_DAYS)
MENU_CLICK = WindowGrant("menu", quota=3, seconds=_MINUTE)
FOLLOW = WindowGrant("follow", quota=3, seconds=_MINUTE)
SCAN = WindowGrant("scan", quota=3, seconds=_MINUTE)
ENTER_SESSION = WindowGrant("session", quota=2, seconds=_MINUTE)  # mini programs

# Only these menu types count; a VIEW (link) click does not open a window.
_MENU_EVENTS = frozenset({"CLICK", "scancode_push", "scancode_waitmsg"})


def windows_opened_by(app: AppConfig, message: inbound.InboundMessage) -> list[WindowGrant]:
    """The windows `message` opens for its sender (none for most events)."""
    if message.msg_type != "event":
        return [USER_MESSAGE] if not message.HasField("unknown") else []
    event = message.event
    if app.kind == "mini_program":
        return [ENTER_SESSION] if event == "user_enter_tempsession" else []
    if event in _MENU_EVENTS:
        return [MENU_CLICK]
    if event == "subscribe":
        # A follow through a parametric QR code is a scan as well.
        return [FOLLOW, SCAN] if message.subscribe.qr_scene else [FOLLOW]
    if event == "SCAN":
        return [SCAN]
    return []


def closes_windows(app: AppConfig, message: inbound.InboundMessage) -> bool:
    """Whether `message` closes every window of its sender: an official account's unfollow."""
    return app.kind == "official_account" and message.event == "unsubscribe"
