"""Shared constants and helpers for the simulator tests (fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from wxplatform.config import AppConfig, Secret

# 2024-04-26 00:00:00 in Beijing (UTC+8) is 2024-04-25 16:00:00 UTC. The clock starts
# 23 hours before it: tests that care can cross a quota day, the others have room.
BEIJING_MIDNIGHT = 1_714_060_800.0
START = BEIJING_MIDNIGHT - 23 * 3600

KEY_ALPHA = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # official Python/Java samples
KEY_WECOM = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"  # official WeCom doc
KEY_ZERO = "A" * 43  # official MP push guide: decodes to 32 zero bytes

SECRET = "0123456789abcdef0123456789abcdef"
TOKEN = "simtoken"


def load_vector(vector_id: str) -> dict[str, Any]:
    """A vector by id from tests/vectors.json (the official vectors, docs/wechat.md §8)."""
    path = Path(__file__).resolve().parent.parent / "vectors.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for section in data.values():
        if isinstance(section, list):
            for vector in section:
                if isinstance(vector, dict) and vector.get("id") == vector_id:
                    return dict(vector)
    raise KeyError(vector_id)


def make_app(
    app_id: str,
    *,
    encryption: str = "plaintext",
    data_format: str = "xml",
    kind: str = "official_account",
    token: str = TOKEN,
    key: str | None = None,
    previous_key: str | None = None,
) -> AppConfig:
    """An AppConfig for tests."""
    return AppConfig(
        app_id=app_id,
        kind=kind,  # type: ignore[arg-type]
        encryption=encryption,  # type: ignore[arg-type]
        data_format=data_format,  # type: ignore[arg-type]
        app_secret=Secret(SECRET),
        token=Secret(token),
        encoding_aes_key=Secret(key) if key else None,
        previous_encoding_aes_key=Secret(previous_key) if previous_key else None,
    )


PLAIN = "wxplain000000001"
COMPAT = "wxcompat00000001"
SAFE = "wxsafe0000000001"
DOC_MP = "wxba5fad812f8e6fb9"


RID = r"rid: [0-9a-f]{24}$"


async def get_token(client: httpx.AsyncClient, appid: str = PLAIN, secret: str = SECRET) -> Any:
    """`GET /cgi-bin/token` and return the decoded JSON body."""
    params = {"grant_type": "client_credential", "appid": appid, "secret": secret}
    response = await client.get("/cgi-bin/token", params=params)
    assert response.status_code == 200
    return response.json()


async def stable_token(
    client: httpx.AsyncClient, appid: str = PLAIN, *, force: bool = False, secret: str = SECRET
) -> Any:
    """`POST /cgi-bin/stable_token` and return the decoded JSON body."""
    body = {
        "grant_type": "client_credential",
        "appid": appid,
        "secret": secret,
        "force_refresh": force,
    }
    response = await client.post("/cgi-bin/stable_token", json=body)
    assert response.status_code == 200
    return response.json()


async def errcode_for(client: httpx.AsyncClient, token: str | None) -> int:
    """Call `getcallbackip` with `token`: 0 if it was accepted, else the errcode."""
    params = {} if token is None else {"access_token": token}
    response = await client.get("/cgi-bin/getcallbackip", params=params)
    assert response.status_code == 200
    body = response.json()
    if "ip_list" in body:
        assert "errcode" not in body
        return 0
    assert re.search(RID, body["errmsg"]), body
    return int(body["errcode"])


async def advance(client: httpx.AsyncClient, seconds: float) -> None:
    """Move the simulator's ManualClock through the control API."""
    response = await client.post("/_sim/clock", json={"advance": seconds})
    assert response.status_code == 200, response.text


@dataclass
class Received:
    """One request as the receiver saw it."""

    app_id: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]


@dataclass
class Receiver:
    """A stand-in edge: records requests, answers with `answer`, may stall first."""

    base_url: str = ""
    received: list[Received] = field(default_factory=list)
    answer: Callable[[Received], tuple[int, bytes]] = lambda _: (200, b"success")
    stall: int = 0  # how many requests get no answer at all
    released: asyncio.Event = field(default_factory=asyncio.Event)


class _Edge(RequestHandler):
    def initialize(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def post(self, app_id: str) -> None:
        receiver = self.receiver
        query = {k: self.get_query_argument(k) or "" for k in self.request.query_arguments}
        got = Received(app_id, query, self.request.body, dict(self.request.headers))
        receiver.received.append(got)
        if len(receiver.received) <= receiver.stall:
            # Never answer; the pusher gives up and drops the connection.
            await receiver.released.wait()
            return
        status, body = receiver.answer(got)
        self.set_status(status)
        self.finish(body)


@asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    """A receiver listening on a free loopback port."""
    state = Receiver()
    sockets = bind_sockets(0, address="127.0.0.1")
    server = HTTPServer(Application([(r"/wx/([^/]+)", _Edge, {"receiver": state})]))
    server.add_sockets(sockets)
    state.base_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        state.released.set()
        server.stop()
        await server.close_all_connections()
