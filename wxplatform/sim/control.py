"""The simulator's control API under `/_sim/`: plain JSON over HTTP for tests and the CLI.

Not part of WeChat. Errors here are ordinary HTTP statuses with `{"error": "..."}`:
400 for a bad request, 404 for an unknown app, 409 when the clock cannot be moved.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tornado.web import HTTPError, RequestHandler

from wxplatform.sim.errors import CallbackAlreadySent
from wxplatform.sim.faults import Fault
from wxplatform.sim.messages import event_message, original_id, text_message

if TYPE_CHECKING:
    from wxplatform.sim.server import WeChatSimulator

__all__ = [
    "DEFAULT_OPENID",
    "ControlError",
    "ControlHandler",
    "control_errors",
    "control_routes",
    "flag_field",
    "int_field",
    "optional_text",
    "text_field",
]

DEFAULT_OPENID = "o_sim_user_0000000000000000"


class ControlError(Exception):
    """A control request that cannot be honoured; `status` is the HTTP status to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ControlHandler(RequestHandler):
    """Base of the `/_sim/` handlers."""

    sim: WeChatSimulator

    def initialize(self, sim: WeChatSimulator) -> None:
        """Tornado hook: receive the simulator."""
        self.sim = sim

    def send(self, body: Any, status: int = 200) -> None:
        """Finish with a JSON body."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(body, ensure_ascii=False).encode())

    def body_object(self) -> dict[str, Any]:
        """The request body as a JSON object (400 otherwise)."""
        try:
            value = json.loads(self.request.body.decode("utf-8") or "null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ControlError(400, "body is not JSON") from None
        if not isinstance(value, dict):
            raise ControlError(400, "body must be a JSON object")
        return value

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error as `{"error": ...}`."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ControlError):
            self.send({"error": exc.message}, exc.status)
        elif isinstance(exc, HTTPError):
            self.send({"error": exc.reason or self._reason}, status_code)
        else:
            self.send({"error": "internal error"}, status_code)

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """A `ControlError` is an answer, not a failure."""
        if not isinstance(value, ControlError):
            super().log_exception(typ, value, tb)


class HealthHandler(ControlHandler):
    """`GET /_sim/health`: the simulator is up; which apps it knows."""

    def get(self) -> None:
        """Liveness and the configured app ids."""
        self.send({"ok": True, "apps": sorted(self.sim.apps)})


class FaultsHandler(ControlHandler):
    """`GET|POST|DELETE /_sim/faults`: list, add, clear injected faults."""

    def get(self) -> None:
        """The active faults."""
        self.send(self.sim.faults())

    def post(self) -> None:
        """Add one fault (see `faults.Fault` for the fields)."""
        try:
            fault = Fault.from_json(self.body_object())
        except (ValueError, TypeError) as exc:
            raise ControlError(400, str(exc)) from None
        self.sim.state.faults.add(fault)
        self.send(fault.to_json(), 201)

    def delete(self) -> None:
        """Remove every fault."""
        self.sim.clear_faults()
        self.send({"cleared": True})


class RequestsHandler(ControlHandler):
    """`GET|DELETE /_sim/requests[?path=]`: the redacted log of received API requests."""

    def get(self) -> None:
        """Recorded requests, oldest first, optionally for one path."""
        self.send(self.sim.requests(self.get_query_argument("path", None)))

    def delete(self) -> None:
        """Forget recorded requests."""
        self.sim.clear_requests()
        self.send({"cleared": True})


class ClockHandler(ControlHandler):
    """`GET|POST /_sim/clock`: read the clock, or `{"advance": seconds}` a ManualClock."""

    def get(self) -> None:
        """The simulator's current time and whether it can be moved."""
        self.send({"now": self.sim.clock.now(), "manual": self.sim.clock_is_manual})

    def post(self) -> None:
        """Move a ManualClock forward (409 for a real clock)."""
        seconds = self.body_object().get("advance")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ControlError(400, "advance must be a non-negative number of seconds")
        if not self.sim.clock_is_manual:
            raise ControlError(409, "the simulator runs on the real clock")
        self.send({"now": self.sim.advance_clock(seconds), "manual": True})


class StatsHandler(ControlHandler):
    """`GET /_sim/stats`: tokens issued per app and endpoint."""

    def get(self) -> None:
        """Counters per app: /cgi-bin/token and /cgi-bin/stable_token."""
        self.send(self.sim.stats())


class PushHandler(ControlHandler):
    """`POST /_sim/push`: deliver a callback to an edge and report the PushResult."""

    async def post(self) -> None:
        """Body: app_id, edge_url and either fields, text (+openid) or event (+event_key)."""
        data = self.body_object()
        app_id, edge_url = data.get("app_id"), data.get("edge_url")
        if not isinstance(app_id, str) or not isinstance(edge_url, str):
            raise ControlError(400, "app_id and edge_url are required strings")
        if app_id not in self.sim.apps:
            raise ControlError(404, f"unknown app {app_id!r}")
        if not edge_url.startswith(("http://", "https://")):
            raise ControlError(400, "edge_url must be an http(s) URL")
        timeout = data.get("timeout", 5.0)
        retries = data.get("max_retries", 3)
        nonce = data.get("nonce")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ControlError(400, "timeout must be a positive number")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ControlError(400, "max_retries must be an integer from 0 to 10")
        if nonce is not None and not isinstance(nonce, str):
            raise ControlError(400, "nonce must be a string")
        result = await self.sim.push(
            app_id,
            edge_url,
            _fields(data, app_id, int(self.sim.clock.now())),
            timeout=float(timeout),
            max_retries=retries,
            nonce=nonce,
        )
        self.send(result.to_json())


def _fields(data: dict[str, Any], app_id: str, now: int) -> dict[str, Any]:
    to = data.get("to") or original_id(app_id)
    openid = data.get("openid") or DEFAULT_OPENID
    if not isinstance(to, str) or not isinstance(openid, str):
        raise ControlError(400, "to and openid must be strings")
    if "fields" in data:
        fields = data["fields"]
        if not isinstance(fields, dict) or not fields:
            raise ControlError(400, "fields must be a non-empty JSON object")
        return fields
    if isinstance(data.get("text"), str):
        return text_message(to, openid, data["text"], create_time=now)
    if isinstance(data.get("event"), str):
        key = data.get("event_key")
        if key is not None and not isinstance(key, str):
            raise ControlError(400, "event_key must be a string")
        return event_message(to, openid, data["event"], key, create_time=now)
    raise ControlError(400, "give fields, text or event")


def control_routes(sim: WeChatSimulator) -> list[tuple[str, type[ControlHandler], dict[str, Any]]]:
    """The URL table of the control API."""
    kwargs = {"sim": sim}
    return [
        (r"/_sim/health", HealthHandler, kwargs),
        (r"/_sim/faults", FaultsHandler, kwargs),
        (r"/_sim/requests", RequestsHandler, kwargs),
        (r"/_sim/clock", ClockHandler, kwargs),
        (r"/_sim/stats", StatsHandler, kwargs),
        (r"/_sim/push", PushHandler, kwargs),
    ]


@contextmanager
def control_errors() -> Iterator[None]:
    """Turn the simulator methods' exceptions into control-API statuses."""
    try:
        yield
    except KeyError as exc:
        raise ControlError(404, str(exc.args[0]) if exc.args else "not found") from None
    except ValueError as exc:
        raise ControlError(400, str(exc)) from None
    except CallbackAlreadySent as exc:
        raise ControlError(409, str(exc)) from None


def text_field(data: dict[str, Any], name: str) -> str:
    """A required non-empty string of a control request's body."""
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ControlError(400, f"{name} must be a non-empty string")
    return value


def optional_text(data: dict[str, Any], name: str) -> str | None:
    """An optional string of a control request's body."""
    return None if data.get(name) is None else text_field(data, name)


def flag_field(data: dict[str, Any], name: str) -> bool | None:
    """An optional boolean of a control request's body."""
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise ControlError(400, f"{name} must be true or false")
    return value


def int_field(data: dict[str, Any], name: str, default: int | None = None) -> int | None:
    """An optional integer of a control request's body."""
    value = data.get(name, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ControlError(400, f"{name} must be an integer")
    return value
