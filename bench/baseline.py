"""The baseline: one bare Tornado handler doing the edge's job with no wxplatform layers.

For a push to `/wx/{app_id}` it checks the URL signature (SHA-1 of the sorted token,
timestamp and nonce, compared with `hmac.compare_digest`), parses the body with
defusedxml, and in safe mode checks `msg_signature`, AES-256-CBC-decrypts the `Encrypt`
field and parses the inner XML. A text push whose content is the keyword gets a text
reply, encrypted and signed again in safe mode; anything else gets `success`.

It does NOT reuse `wxplatform.wechat`: everything is written inline below. For a fair
comparison it uses the same libraries as the edge: `hashlib`/`hmac` for signatures,
`defusedxml.ElementTree.fromstring` with the same `forbid_*` flags, and `cryptography`
for AES. What it leaves out is exactly what the comparison is meant to price: request
ids, metrics, access logs, strict payload checks, normalization into a protobuf, the
core call and the reply model. The reply's 16-byte random prefix comes from
`secrets.token_hex` (any 16 bytes will do for WeChat).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
import tornado.web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import DefusedXmlException

__all__ = ["BaselineApp", "BaselineHandler", "make_baseline_app"]

_BLOCK = 32  # WeChat pads to 32 bytes


@dataclass(frozen=True)
class BaselineApp:
    """What the handler knows about an app: its id, token and (safe mode) AES key."""

    app_id: str
    token: str = field(repr=False)
    aes_key: bytes | None = field(default=None, repr=False)
    keyword: str = ""
    reply: str = ""


def _sign(*parts: str) -> str:
    joined = b"".join(sorted(p.encode() for p in parts))
    return hashlib.sha1(joined, usedforsecurity=False).hexdigest()


def _parse(body: bytes) -> Element:
    try:
        root: Element = SafeET.fromstring(
            body, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except (DefusedXmlException, ParseError):
        raise tornado.web.HTTPError(400) from None
    if root.tag != "xml":
        raise tornado.web.HTTPError(400)
    return root


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _decrypt(app: BaselineApp, key: bytes, ciphertext: str) -> bytes:
    try:
        data = base64.b64decode(ciphertext, validate=True)
    except (binascii.Error, ValueError):
        raise tornado.web.HTTPError(400) from None
    if not data or len(data) % 16:
        raise tornado.web.HTTPError(400)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(data) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= _BLOCK or len(plain) < 20 + pad:
        raise tornado.web.HTTPError(400)
    plain = plain[:-pad]
    length = int.from_bytes(plain[16:20], "big")
    if plain[20 + length :] != app.app_id.encode():
        raise tornado.web.HTTPError(400)
    return plain[20 : 20 + length]


def _encrypt(app: BaselineApp, key: bytes, message: bytes) -> str:
    full = secrets.token_hex(8).encode() + len(message).to_bytes(4, "big") + message
    full += app.app_id.encode()
    pad = _BLOCK - len(full) % _BLOCK
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    data = encryptor.update(full + bytes([pad]) * pad) + encryptor.finalize()
    return base64.b64encode(data).decode()


class BaselineHandler(tornado.web.RequestHandler):
    """`POST /wx/{app_id}`: verify, parse, (decrypt,) reply, (encrypt)."""

    def initialize(self, apps: Mapping[str, BaselineApp]) -> None:
        self.apps = apps

    def _arg(self, name: str) -> str:
        values = self.request.query_arguments.get(name)
        if not values:
            raise tornado.web.HTTPError(403 if "signature" in name else 400)
        return values[0].decode()

    def post(self, app_id: str) -> None:
        app = self.apps.get(app_id)
        if app is None:
            raise tornado.web.HTTPError(404)
        timestamp, nonce = self._arg("timestamp"), self._arg("nonce")
        encrypted = self.get_query_argument("encrypt_type", "raw") == "aes"
        if not hmac.compare_digest(_sign(app.token, timestamp, nonce), self._arg("signature")):
            raise tornado.web.HTTPError(403)
        if app.aes_key is not None and not encrypted:
            raise tornado.web.HTTPError(403)  # a safe-mode app takes only encrypted pushes
        root = _parse(self.request.body)
        if encrypted:
            if app.aes_key is None:
                raise tornado.web.HTTPError(400)
            ciphertext = root.findtext("Encrypt") or ""
            expected = _sign(app.token, timestamp, nonce, ciphertext)
            if not hmac.compare_digest(expected, self._arg("msg_signature")):
                raise tornado.web.HTTPError(403)
            root = _parse(_decrypt(app, app.aes_key, ciphertext))
        fields = {child.tag: child.text or "" for child in root}
        if fields.get("MsgType") != "text" or fields.get("Content", "").strip() != app.keyword:
            self.finish(b"success")
            return
        now = str(int(time.time()))
        reply = (
            f"<xml><ToUserName>{_cdata(fields.get('FromUserName', ''))}</ToUserName>"
            f"<FromUserName>{_cdata(fields.get('ToUserName', ''))}</FromUserName>"
            f"<CreateTime>{now}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content>{_cdata(app.reply)}</Content></xml>"
        ).encode()
        if encrypted and app.aes_key is not None:
            sealed = _encrypt(app, app.aes_key, reply)
            reply = (
                f"<xml><Encrypt>{_cdata(sealed)}</Encrypt>"
                f"<MsgSignature>{_cdata(_sign(app.token, now, nonce, sealed))}</MsgSignature>"
                f"<TimeStamp>{now}</TimeStamp><Nonce>{_cdata(nonce)}</Nonce></xml>"
            ).encode()
        self.set_header("Content-Type", "application/xml; charset=utf-8")
        self.finish(reply)


def make_baseline_app(apps: Mapping[str, BaselineApp]) -> tornado.web.Application:
    """The baseline's Tornado application (same application settings as the edge's)."""
    return tornado.web.Application(
        [(r"/wx/(?P<app_id>[^/]+)", BaselineHandler, {"apps": apps})],
        compress_response=False,
        xsrf_cookies=False,
    )
