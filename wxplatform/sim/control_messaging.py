"""The control API of the messaging side: users, templates, consent, windows, callbacks.

Each route mirrors a `WeChatSimulator` method (see `server.py`). Like the rest of
`/_sim/`, errors are HTTP statuses with `{"error": ...}`: 400 for a bad request, 404 for
an unknown app or msgid, 409 for a template result that was already pushed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wxplatform.sim.control import (
    ControlError,
    ControlHandler,
    control_errors,
    flag_field,
    int_field,
    optional_text,
    text_field,
)

if TYPE_CHECKING:
    from wxplatform.sim.server import WeChatSimulator

__all__ = ["messaging_control_routes"]


class _Handler(ControlHandler):
    def query(self, name: str) -> str:
        value = self.get_query_argument(name, None)
        if not value:
            raise ControlError(400, f"query parameter {name} is required")
        return value


class UsersHandler(_Handler):
    """`GET /_sim/users?app_id=` lists users; `POST` registers or updates one."""

    def get(self) -> None:
        """The app's known users."""
        with control_errors():
            self.send(self.sim.users(self.query("app_id")))

    def post(self) -> None:
        """Body: app_id, openid, and optional follows, blocked, template_blocked."""
        data = self.body_object()
        app_id, openid = text_field(data, "app_id"), text_field(data, "openid")
        with control_errors():
            user = self.sim.set_user(
                app_id,
                openid,
                follows=flag_field(data, "follows"),
                blocked=flag_field(data, "blocked"),
                template_blocked=flag_field(data, "template_blocked"),
            )
        self.send(user)


class TemplatesHandler(_Handler):
    """`GET /_sim/templates?app_id=` lists templates; `POST` registers one."""

    def get(self) -> None:
        """The app's templates."""
        with control_errors():
            self.send(self.sim.templates(self.query("app_id")))

    def post(self) -> None:
        """Body: app_id, template_id, kind (template|subscribe), keys ({key: type} or [keys])."""
        data = self.body_object()
        app_id, template_id = text_field(data, "app_id"), text_field(data, "template_id")
        kind = text_field(data, "kind")
        keys = data.get("keys")
        if not isinstance(keys, dict | list):
            raise ControlError(400, "keys must be an object or a list")
        with control_errors():
            self.send(self.sim.add_template(app_id, template_id, kind, keys), 201)


class ConsentHandler(_Handler):
    """`GET /_sim/consent?app_id=&openid=` reads consent; `POST` grants some."""

    def get(self) -> None:
        """Acceptances left per template id."""
        with control_errors():
            self.send(self.sim.consent(self.query("app_id"), self.query("openid")))

    def post(self) -> None:
        """Body: app_id, openid, template_id, count (default 1)."""
        data = self.body_object()
        app_id, openid = text_field(data, "app_id"), text_field(data, "openid")
        template_id = text_field(data, "template_id")
        count = int_field(data, "count", 1)
        if count is None:
            raise ControlError(400, "count must be an integer")
        with control_errors():
            left = self.sim.grant_consent(app_id, openid, template_id, count)
        self.send({"template_id": template_id, "remaining": left})


class WindowsHandler(_Handler):
    """`GET /_sim/windows?app_id=&openid=`: a user's customer-service windows."""

    def get(self) -> None:
        """Windows, soonest expiry first."""
        with control_errors():
            self.send(self.sim.windows(self.query("app_id"), self.query("openid")))


class SentHandler(_Handler):
    """`GET /_sim/sent[?app_id=]` lists accepted sends; `DELETE` forgets them."""

    def get(self) -> None:
        """Sends, oldest first."""
        self.send(self.sim.sent(self.get_query_argument("app_id", None) or None))

    def delete(self) -> None:
        """Clear the log."""
        self.sim.clear_sent()
        self.send({"cleared": True})


class CallbacksHandler(_Handler):
    """`GET /_sim/callbacks` shows URLs and delay; `POST` sets a URL and/or the delay."""

    def get(self) -> None:
        """URLs per app and the delay."""
        self.send(self.sim.callback_settings())

    def post(self) -> None:
        """Body: app_id with edge_url (null stops), and/or delay (seconds)."""
        data = self.body_object()
        app_id = optional_text(data, "app_id")
        delay = data.get("delay")
        if app_id is None and delay is None:
            raise ControlError(400, "give app_id and edge_url, or delay")
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)):
            raise ControlError(400, "delay must be a number of seconds")
        with control_errors():
            if app_id is not None:
                if "edge_url" not in data:
                    raise ControlError(400, "edge_url is required (null stops callbacks)")
                edge_url = data["edge_url"]
                if edge_url is not None and not isinstance(edge_url, str):
                    raise ControlError(400, "edge_url must be a string or null")
                self.sim.set_callback_url(app_id, edge_url)
            if delay is not None:
                self.sim.set_callback_delay(delay)
        self.send(self.sim.callback_settings())


class CallbackResultsHandler(_Handler):
    """`GET /_sim/callbacks/results`: result events pushed so far."""

    def get(self) -> None:
        """Finished jobs, in the order they finished."""
        self.send([r.to_json() for r in self.sim.callback_results()])


class CallbackDrainHandler(_Handler):
    """`POST /_sim/callbacks/drain`: wait for pending result events, then list all."""

    async def post(self) -> None:
        """Every finished job, once none is pending."""
        self.send([r.to_json() for r in await self.sim.drain_callbacks()])


class TemplateResultHandler(_Handler):
    """`GET|POST /_sim/template_result`: force what TEMPLATESENDJOBFINISH reports."""

    def get(self) -> None:
        """Forced results not used yet."""
        self.send(self.sim.result_rules())

    def post(self) -> None:
        """Body: app_id, status, and msgid (a pending job) or openid (next send) or neither."""
        data = self.body_object()
        app_id, status = text_field(data, "app_id"), text_field(data, "status")
        openid = optional_text(data, "openid")
        msgid = int_field(data, "msgid")
        if openid is not None and msgid is not None:
            raise ControlError(400, "give msgid or openid, not both")
        with control_errors():
            self.sim.force_template_result(app_id, status, openid=openid, msgid=msgid)
        self.send({"app_id": app_id, "status": status, "openid": openid, "msgid": msgid}, 201)


def messaging_control_routes(
    sim: WeChatSimulator,
) -> list[tuple[str, type[ControlHandler], dict[str, Any]]]:
    """The URL table of the messaging control API."""
    kwargs = {"sim": sim}
    return [
        (r"/_sim/users", UsersHandler, kwargs),
        (r"/_sim/templates", TemplatesHandler, kwargs),
        (r"/_sim/consent", ConsentHandler, kwargs),
        (r"/_sim/windows", WindowsHandler, kwargs),
        (r"/_sim/sent", SentHandler, kwargs),
        (r"/_sim/callbacks", CallbacksHandler, kwargs),
        (r"/_sim/callbacks/results", CallbackResultsHandler, kwargs),
        (r"/_sim/callbacks/drain", CallbackDrainHandler, kwargs),
        (r"/_sim/template_result", TemplateResultHandler, kwargs),
    ]
