"""Opening a WeChat push and sealing its reply: pure functions, no HTTP server.

docs/wechat.md §1 (URL verification), §2 (signatures and encryption), §3 (pushes) and
§4 (passive replies). The callback handler feeds these the query arguments and body it
received and writes what they return; everything that can be wrong with a push is
raised here as an `EdgeRejection` naming what was wrong.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import passive_reply_pb2 as pr
from edge.errors import BadParameters, BadPayload, SignatureMismatch, StaleTimestamp
from edge.normalize import normalize
from edge.replies import reply_fields
from wxplatform.config import AppConfig
from wxplatform.wechat.crypto import CryptoError, MessageCrypto
from wxplatform.wechat.payload import MalformedPayload, Payload, parse_json, parse_xml, render_xml
from wxplatform.wechat.signature import sign, signature_matches

__all__ = ["OpenedPush", "open_push", "seal_reply", "signed_pair", "verify_url"]

log = logging.getLogger("wxplatform.edge")

Arguments = Mapping[str, list[bytes]]  # a query string's arguments, as Tornado parses them

_MAX_TIMESTAMP_DIGITS = 12


@dataclass(frozen=True)
class OpenedPush:
    """A verified, decrypted and normalized push.

    `message` is None for WeChat cloud hosting's path probe (answered, never forwarded).
    `key_index` is the AES key that opened an encrypted push (its reply is sealed with
    the same key), None for a plaintext one; `nonce` is echoed in a sealed reply.
    """

    message: inbound.InboundMessage | None
    key_index: int | None
    nonce: str


def verify_url(app: AppConfig, arguments: Arguments, *, now: float, window: int) -> str:
    """The `echostr` to answer WeChat's URL verification with, once its signature holds.

    The handshake is always plaintext-signed, whatever the app's encryption mode.
    """
    params = _params(arguments, ("signature", "timestamp", "nonce", "echostr"))
    _fresh_timestamp(params["timestamp"], now, window)
    _verify(app, params)
    return params["echostr"]


def open_push(
    app: AppConfig,
    crypto: MessageCrypto | None,
    arguments: Arguments,
    body: bytes,
    *,
    now: float,
    window: int,
) -> OpenedPush:
    """Check a push's parameters, timestamp and signature, decrypt it, parse it and
    normalize it into the message core takes."""
    # `signature` is plaintext mode's; an encrypted push is verified by `msg_signature`
    # alone (WeChat's guide: never by `signature`), so there it may be absent.
    params = _params(
        arguments, ("timestamp", "nonce"), ("signature", "encrypt_type", "msg_signature", "openid")
    )
    timestamp = _fresh_timestamp(params["timestamp"], now, window)
    encrypted = params.get("encrypt_type", "raw") == "aes"
    if encrypted:
        fields, key_index, verified = _open_encrypted(app, crypto, params, body)
    else:
        fields, key_index, verified = _open_plaintext(app, params, body), None, body
    if "MsgType" not in fields and fields.get("action") == "CheckContainerPath":
        return OpenedPush(None, key_index, params["nonce"])  # cloud hosting's probe (§3.3)
    transport = inbound.InboundTransport(
        encryption=_encryption(app, encrypted),
        format=inbound.DATA_FORMAT_JSON if app.data_format == "json" else inbound.DATA_FORMAT_XML,
        signature_timestamp=timestamp,
        nonce=params["nonce"],
        body_sha256=hashlib.sha256(verified).hexdigest(),
    )
    try:
        message = normalize(app.app_id, fields, transport, now)
    except MalformedPayload as exc:
        raise BadPayload(f"payload_{exc.kind}", exc.detail) from None
    except Exception:
        log.exception("normalizer failed on a push")
        raise BadPayload("payload_unparseable") from None
    return OpenedPush(message, key_index, params["nonce"])


def seal_reply(
    app: AppConfig,
    crypto: MessageCrypto | None,
    opened: OpenedPush,
    reply: pr.PassiveReply,
    *,
    now: float,
) -> bytes | None:
    """The XML answering the push with `reply`, encrypted like the push; None for no
    reply (answered with "success")."""
    assert opened.message is not None
    seconds = int(now)
    fields = reply_fields(reply, opened.message, seconds) if app.data_format == "xml" else None
    if fields is None:
        return None
    body = render_xml(fields)
    if opened.key_index is None:
        return body
    assert crypto is not None
    # Encrypted with the key that opened the push (key rotation, docs/wechat.md §2.1).
    encrypt = crypto.encrypt(body.decode(), key_index=opened.key_index)
    return render_xml(
        {
            "Encrypt": encrypt,
            "MsgSignature": sign(app.token.reveal(), str(seconds), opened.nonce, encrypt),
            "TimeStamp": seconds,
            "Nonce": opened.nonce,  # WeChat asks to echo the request's nonce
        }
    )


def signed_pair(transport: inbound.InboundTransport) -> str:
    """What a push's signature covers besides the token and body: "timestamp:nonce"."""
    return f"{transport.signature_timestamp}:{transport.nonce}"


def _params(
    arguments: Arguments, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, str]:
    """Query parameters, each present at most once (required ones exactly once)."""
    out: dict[str, str] = {}
    for name in (*required, *optional):
        values = arguments.get(name, [])
        if len(values) > 1:
            raise BadParameters("duplicate_param", name)
        if not values:
            if name in required:
                if name == "signature":  # unsigned: refused like a wrong signature
                    raise SignatureMismatch("missing_signature")
                raise BadParameters("missing_param", name)
            continue
        try:
            out[name] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise BadParameters("bad_param", name) from None
    return out


def _fresh_timestamp(raw: str, now: float, window: int) -> int:
    """The timestamp, if within `window` seconds of now (retries reuse the original)."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_TIMESTAMP_DIGITS:
        raise BadParameters("bad_timestamp")
    timestamp = int(raw)
    if abs(now - timestamp) > window:
        raise StaleTimestamp("stale_timestamp")
    return timestamp


def _verify(app: AppConfig, params: Mapping[str, str], *extra: str) -> None:
    expected = sign(app.token.reveal(), params["timestamp"], params["nonce"], *extra)
    provided = params["msg_signature"] if extra else params["signature"]
    if not signature_matches(expected, provided):
        raise SignatureMismatch("bad_msg_signature" if extra else "bad_signature")


def _open_plaintext(app: AppConfig, params: Mapping[str, str], body: bytes) -> Payload:
    if app.encryption == "safe":
        # A plaintext signature does not cover the body: accepting one on a safe app
        # would let anyone replay a captured URL with a body of their own.
        raise SignatureMismatch("plaintext_on_safe_app")
    if "signature" not in params:
        raise SignatureMismatch("missing_signature")
    _verify(app, params)
    return _parse(app, body)


def _open_encrypted(
    app: AppConfig, crypto: MessageCrypto | None, params: Mapping[str, str], body: bytes
) -> tuple[Payload, int, bytes]:
    """The fields, the index of the AES key that opened them, and the verified message.

    The verified message is the decrypted one: a retry WeChat encrypted afresh is still
    the same message to the replay guard, and unsigned plaintext fields of a
    compatible-mode body count for nothing.
    """
    if crypto is None:
        raise BadParameters("unexpected_encryption")
    if "msg_signature" not in params:
        raise SignatureMismatch("missing_msg_signature")
    envelope = _parse(app, body)
    ciphertext = envelope.get("Encrypt")
    if not isinstance(ciphertext, str) or not ciphertext:
        raise BadPayload("payload_no_encrypt")
    # msg_signature covers the ciphertext; the URL `signature` does not cover the body.
    _verify(app, params, ciphertext)
    try:
        plaintext, key_index = crypto.decrypt(ciphertext)
    except CryptoError as exc:
        raise BadPayload(f"decrypt_{-exc.code}", exc.detail) from None
    message = plaintext.encode()
    return _parse(app, message), key_index, message


def _parse(app: AppConfig, body: bytes) -> Payload:
    try:
        return parse_json(body) if app.data_format == "json" else parse_xml(body)
    except MalformedPayload as exc:
        raise BadPayload(f"payload_{exc.kind}", exc.detail) from None
    except Exception:
        log.exception("parser failed on a push")
        raise BadPayload("payload_unparseable") from None


def _encryption(app: AppConfig, encrypted: bool) -> inbound.EncryptionMode.ValueType:
    if not encrypted:
        return inbound.ENCRYPTION_MODE_PLAINTEXT
    if app.encryption == "safe":
        return inbound.ENCRYPTION_MODE_SAFE
    return inbound.ENCRYPTION_MODE_COMPATIBLE
