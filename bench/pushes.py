"""Pre-built pushes: each one a complete, validly signed HTTP/1.1 request on the wire.

Everything is computed before a measurement starts, so the load generator only writes
bytes and reads answers. Each push has its own MsgId (core's dedup does real work) and
its own nonce, and carries the current timestamp, well inside the edge's ±300 s window
for a run that lasts seconds. The bytes are what `wxplatform.sim.messages.build_push`
sends (the smoke test checks this); building them here reuses one `MessageCrypto` per
app, because `build_push` derives the key and draws 16 random characters per call,
which would make pre-building a large batch of safe-mode pushes take seconds.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from bench.spec import KEYWORD
from wxplatform.config import AppConfig
from wxplatform.sim.messages import message_crypto, original_id, text_message
from wxplatform.wechat.payload import render_xml
from wxplatform.wechat.signature import sign

__all__ = ["Push", "PushFactory"]


@dataclass(frozen=True, slots=True)
class Push:
    """One request: its bytes on the wire, and what a reply to it must be addressed to."""

    wire: bytes
    openid: str
    to_user: str


def _random_prefix() -> bytes:
    return secrets.token_hex(8).encode()


class PushFactory:
    """Builds text pushes with the keyword for one app, to one edge address."""

    def __init__(
        self,
        app: AppConfig,
        host: str,
        port: int,
        *,
        users: int = 500,
        random_prefix: Callable[[], bytes] = _random_prefix,
    ) -> None:
        self.app = app
        self._host = f"{host}:{port}"
        self._path = f"/wx/{quote(app.app_id, safe='')}"
        self._token = app.token.reveal()
        self._crypto = message_crypto(app) if app.encryption != "plaintext" else None
        self._to_user = original_id(app.app_id)
        self._users = users
        self._random_prefix = random_prefix
        # Random bases, so two load runs against one Redis never share a MsgId or nonce.
        self._msg_id_base = 10**18 + secrets.randbelow(4 * 10**18)
        self._nonce_base = 100_000_000 + secrets.randbelow(1_000_000_000)
        self._next = 0

    def build_one(self, *, timestamp: int, nonce: str, msg_id: int, openid: str) -> Push:
        """One push, signed (and in safe mode encrypted) as WeChat would send it."""
        ts = str(timestamp)
        fields = text_message(self._to_user, openid, KEYWORD, msg_id, timestamp)
        query = {"signature": sign(self._token, ts, nonce), "timestamp": ts, "nonce": nonce}
        query["openid"] = openid
        body = render_xml(fields)
        if self._crypto is not None:
            encrypt = self._crypto.encrypt(body.decode(), random_prefix=self._random_prefix())
            query["encrypt_type"] = "aes"
            query["msg_signature"] = sign(self._token, ts, nonce, encrypt)
            body = render_xml({"ToUserName": self._to_user, "Encrypt": encrypt})
        head = (
            f"POST {self._path}?{urlencode(query)} HTTP/1.1\r\n"
            f"Host: {self._host}\r\n"
            "Content-Type: text/xml\r\n"
            "User-Agent: Mozilla/4.0\r\n"
            "Accept: */*\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return Push(head.encode() + body, openid, self._to_user)

    def build(self, count: int) -> list[Push]:
        """`count` fresh pushes stamped with the current time."""
        timestamp = int(time.time())
        pushes = []
        for _ in range(count):
            n = self._next
            self._next += 1
            pushes.append(
                self.build_one(
                    timestamp=timestamp,
                    nonce=str(self._nonce_base + n),
                    msg_id=self._msg_id_base + n,
                    openid=f"oBench{n % self._users:022d}",
                )
            )
        return pushes
