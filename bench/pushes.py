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
from urllib.parse import quote

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


_OPENID_MARK = "OPENIDMARK"
_MSG_ID_MARK = 7_070_707_070_707_070_707  # an int, so render_xml writes it bare like a MsgId


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

    def _templates(self, timestamp: int) -> tuple[str, str, str]:
        """The plaintext body around the openid and the MsgId, rendered by `render_xml`."""
        fields = text_message(self._to_user, _OPENID_MARK, KEYWORD, _MSG_ID_MARK, timestamp)
        head, rest = render_xml(fields).decode().split(_OPENID_MARK)
        middle, tail = rest.split(str(_MSG_ID_MARK))
        return head, middle, tail

    def build_one(
        self,
        *,
        timestamp: int,
        nonce: str,
        msg_id: int,
        openid: str,
        templates: tuple[str, str, str] | None = None,
    ) -> Push:
        """One push, signed (and in safe mode encrypted) as WeChat would send it."""
        if not openid.isalnum() or not nonce.isdigit():
            raise ValueError("openid and nonce must need no URL escaping")
        head, middle, tail = templates or self._templates(timestamp)
        ts = str(timestamp)
        plain = f"{head}{openid}{middle}{msg_id}{tail}"
        # The same query, in the same order, as `build_push`; no value needs escaping.
        query = f"signature={sign(self._token, ts, nonce)}&timestamp={ts}&nonce={nonce}"
        query += f"&openid={openid}"
        if self._crypto is None:
            body = plain.encode()
        else:
            encrypt = self._crypto.encrypt(plain, random_prefix=self._random_prefix())
            query += f"&encrypt_type=aes&msg_signature={sign(self._token, ts, nonce, encrypt)}"
            body = (
                f"<xml><ToUserName><![CDATA[{self._to_user}]]></ToUserName>"
                f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
            ).encode()
        head_bytes = (
            f"POST {self._path}?{query} HTTP/1.1\r\n"
            f"Host: {self._host}\r\n"
            "Content-Type: text/xml\r\n"
            "User-Agent: Mozilla/4.0\r\n"
            "Accept: */*\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        return Push(head_bytes + body, openid, self._to_user)

    def build(self, count: int) -> list[Push]:
        """`count` fresh pushes stamped with the current time."""
        timestamp = int(time.time())
        templates = self._templates(timestamp)
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
                    templates=templates,
                )
            )
        return pushes
