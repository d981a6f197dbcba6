"""Template and subscribe-message sends of the simulated WeChat (docs/wechat.md §5.2, §5.4).

Each handler checks the request the way WeChat does, in a fixed order: the app's
kind (48001), the body (44002, 47001), the request's own fields (40003, 40037,
47003, …), then the user's state (40003, 43004, 43019, 43101). An accepted send is
logged in the outbox and, where WeChat reports delivery by event, schedules that
event back to the app's callback URL.
"""

from __future__ import annotations

from typing import Any, ClassVar

from wxplatform.config import AppKind
from wxplatform.sim.api import ApiHandler, requires_access_token
from wxplatform.sim.audience import User
from wxplatform.sim.callbacks import FieldsBuilder
from wxplatform.sim.errors import ApiError
from wxplatform.sim.messages import event_message, original_id
from wxplatform.sim.outbox import SentMessage
from wxplatform.sim.state import SimState
from wxplatform.sim.templates import Template, check_data
from wxplatform.sim.tokens import Caller

__all__ = [
    "BizSendHandler",
    "SubscribeSendHandler",
    "TemplateSendHandler",
    "known_user",
    "read_body",
    "require_kind",
    "text_field",
]

_LANGS = frozenset({"zh_CN", "en_US", "zh_HK", "zh_TW"})
_MINIPROGRAM_STATES = frozenset({"developer", "trial", "formal"})
_CLIENT_MSG_ID_LIMIT = 64  # bytes (§5.2)


def read_body(handler: ApiHandler) -> dict[str, Any]:
    """The JSON object a send carries: 44002 when empty, 47001 when not JSON.

    A body with `\\uXXXX` escapes is accepted: WeChat historically answered those with
    40033 "invalid charset" (§5), but the simulator does not hold clients to that.
    """
    if not handler.request.body.strip():
        raise ApiError(44002)
    return handler.json_body()


def text_field(body: dict[str, Any], name: str) -> str:
    """A string field, "" when absent; any other JSON type is 47001."""
    value = body.get(name, "")
    if not isinstance(value, str):
        raise ApiError(47001)
    return value


def require_kind(caller: Caller, kind: AppKind) -> None:
    """48001 "api unauthorized" when the token's app is not of `kind`."""
    if caller.app.kind != kind:
        raise ApiError(48001)


def known_user(state: SimState, app_id: str, openid: str) -> User:
    """The user behind `openid`; 40003 if it is empty or unknown to this app."""
    user = state.audience.user(app_id, openid) if openid else None
    if user is None:
        raise ApiError(40003)
    return user


def _template(state: SimState, app_id: str, template_id: str, kind: str) -> Template:
    template = state.templates.get(app_id, template_id) if template_id else None
    if template is None or template.kind != kind:
        raise ApiError(40037)
    return template


def _optional_object(body: dict[str, Any], name: str) -> None:
    if name in body and not isinstance(body[name], dict):
        raise ApiError(47001)


def _is_http_url(url: str) -> bool:
    scheme, sep, rest = url.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and bool(rest.split("/")[0])


class TemplateSendHandler(ApiHandler):
    """`POST /cgi-bin/message/template/send`: official accounts' template messages."""

    @requires_access_token
    async def post(self, caller: Caller) -> None:
        """Check, log, answer with a msgid, then report TEMPLATESENDJOBFINISH."""
        require_kind(caller, "official_account")
        body = read_body(self)
        app_id, state = caller.app_id, self.state
        openid = text_field(body, "touser")
        if not openid:
            raise ApiError(40003)
        template = _template(state, app_id, text_field(body, "template_id"), "template")
        check_data(template, body.get("data"))
        url = text_field(body, "url")
        if url and not _is_http_url(url):
            # WeChat's code for this is 40066 "invalid url" (global return codes).
            raise ApiError(40066)
        _optional_object(body, "miniprogram")
        client_msg_id = text_field(body, "client_msg_id")
        if len(client_msg_id.encode()) > _CLIENT_MSG_ID_LIMIT:
            raise ApiError(45067)
        user = known_user(state, app_id, openid)
        if not user.follows:
            raise ApiError(43004)
        if user.blocked:
            raise ApiError(43019)
        now = state.clock.now()
        if client_msg_id:
            state.outbox.claim_client_msg_id(app_id, openid, client_msg_id, now)
        status = state.outbox.take_rule(app_id, openid)
        if status is None:
            # Refusing template messages shows only in the job result, not in the API.
            status = "failed:user block" if user.template_blocked else "success"
        msgid = state.outbox.new_msgid()
        sent = state.outbox.record(
            SentMessage(app_id, self.request.path, openid, body, msgid, now, status)
        )
        self.send_json({"errcode": 0, "errmsg": "ok", "msgid": msgid})
        state.callbacks.schedule(
            app_id, openid, "TEMPLATESENDJOBFINISH", msgid, self._finish_event(sent)
        )

    def _finish_event(self, sent: SentMessage) -> FieldsBuilder:
        clock = self.state.clock

        def build() -> dict[str, Any]:
            # `MsgID` with a capital D, unlike MsgId on user messages (§3.2).
            extra = {"MsgID": sent.msgid, "Status": sent.job_status}
            return event_message(
                original_id(sent.app_id),
                sent.openid,
                "TEMPLATESENDJOBFINISH",
                create_time=int(clock.now()),
                extra=extra,
            )

        return build


class _SubscribeHandler(ApiHandler):
    """Subscribe messages; subclasses name the kind of app allowed to call them."""

    app_kind: ClassVar[AppKind]

    @requires_access_token
    async def post(self, caller: Caller) -> None:
        """Check, use one consent, answer with a msgid (and report, for accounts)."""
        require_kind(caller, self.app_kind)
        body = read_body(self)
        app_id, state = caller.app_id, self.state
        openid = text_field(body, "touser")
        if not openid:
            raise ApiError(40003)
        template = _template(state, app_id, text_field(body, "template_id"), "subscribe")
        check_data(template, body.get("data"))
        text_field(body, "page")  # any string: a web page (bizsend) or an MP page path
        _optional_object(body, "miniprogram")
        state_value = text_field(body, "miniprogram_state")
        lang = text_field(body, "lang")
        # The bizsend page lists these mini program fields too (§5.4): check both.
        if state_value and state_value not in _MINIPROGRAM_STATES:
            raise ApiError(40097, "invalid args")
        if lang and lang not in _LANGS:
            raise ApiError(40097, "invalid args")
        known_user(state, app_id, openid)
        if not state.audience.take_consent(app_id, openid, template.template_id):
            raise ApiError(43101)
        now = state.clock.now()
        msgid = state.outbox.new_msgid()
        state.outbox.record(SentMessage(app_id, self.request.path, openid, body, msgid, now))
        self.send_json({"errcode": 0, "errmsg": "ok", "msgid": msgid})
        # Official accounts and mini programs alike get the result pushed (in a mini
        # program's JSON format, `List` is a bare object for one template).
        state.callbacks.schedule(
            app_id,
            openid,
            "subscribe_msg_sent_event",
            msgid,
            self._sent_event(app_id, openid, template.template_id, msgid),
        )

    def _sent_event(self, app_id: str, openid: str, template_id: str, msgid: int) -> FieldsBuilder:
        clock = self.state.clock

        def build() -> dict[str, Any]:
            entry = {
                "TemplateId": template_id,
                "MsgID": msgid,
                "ErrorCode": 0,
                "ErrorStatus": "success",
            }
            return event_message(
                original_id(app_id),
                openid,
                "subscribe_msg_sent_event",
                create_time=int(clock.now()),
                extra={"SubscribeMsgSentEvent": {"List": entry}},
            )

        return build


class BizSendHandler(_SubscribeHandler):
    """`POST /cgi-bin/message/subscribe/bizsend`: official accounts' subscription notices."""

    app_kind = "official_account"


class SubscribeSendHandler(_SubscribeHandler):
    """`POST /cgi-bin/message/subscribe/send`: mini programs' subscribe messages."""

    app_kind = "mini_program"
