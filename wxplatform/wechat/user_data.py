"""Mini-program open data: `encryptedData` decryption and the `rawData` signature.

docs/wechat.md §5.8: AES-128-CBC with the user's `session_key` (base64 of 16 bytes) and
the `iv` the mini program passes along, PKCS#7 on 16-byte blocks, UTF-8 JSON inside
with a `watermark` {appid, timestamp}; unencrypted `rawData` is signed as
`sha1_hex(rawData + session_key)`, with the session key in its base64 form.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "MalformedUserData",
    "OpenData",
    "UserDataError",
    "decrypt_user_data",
    "encrypt_user_data",
    "raw_data_signature",
    "signature_matches",
]

_BLOCK = 16


class UserDataError(ValueError):
    """The data does not open with this session key."""


class MalformedUserData(UserDataError):
    """The input is not even in WeChat's format (base64, block sizes)."""


@dataclass(frozen=True)
class OpenData:
    """Decrypted open data and its watermark."""

    data: dict[str, Any]
    appid: str
    timestamp: int


def _b64(value: str, what: str, *, length: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedUserData(f"{what} is not base64") from None
    if length is not None and len(raw) != length:
        raise MalformedUserData(f"{what} must be {length} bytes")
    return raw


def decrypt_user_data(session_key: str, encrypted_data: str, iv: str) -> OpenData:
    """Open `encryptedData`; raises `UserDataError` for anything but WeChat's format.

    The watermark's appid is returned, not checked: the caller compares it with its app.
    """
    key = _b64(session_key, "session_key", length=_BLOCK)
    vector = _b64(iv, "iv", length=_BLOCK)
    ciphertext = _b64(encrypted_data, "encrypted_data")
    if not ciphertext or len(ciphertext) % _BLOCK:
        raise MalformedUserData("encrypted_data is not whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(vector)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes([pad]) * pad:
        raise UserDataError("bad padding: not made with this session_key")
    try:
        data = json.loads(padded[:-pad].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UserDataError("not JSON: not made with this session_key") from None
    watermark = data.get("watermark") if isinstance(data, dict) else None
    if not isinstance(watermark, dict):
        raise UserDataError("no watermark")
    appid, timestamp = watermark.get("appid"), watermark.get("timestamp")
    if not isinstance(appid, str) or not isinstance(timestamp, int):
        raise UserDataError("malformed watermark")
    return OpenData(data, appid, timestamp)


def encrypt_user_data(session_key: str, data: dict[str, Any], iv: bytes) -> str:
    """What WeChat sends a mini program: `data` encrypted as `encryptedData` (base64)."""
    key = _b64(session_key, "session_key", length=_BLOCK)
    plaintext = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    pad = _BLOCK - len(plaintext) % _BLOCK
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(plaintext + bytes([pad]) * pad) + encryptor.finalize()
    return base64.b64encode(ciphertext).decode()


def raw_data_signature(raw_data: str, session_key: str) -> str:
    """`sha1_hex(rawData + session_key)`."""
    return hashlib.sha1((raw_data + session_key).encode(), usedforsecurity=False).hexdigest()


def signature_matches(raw_data: str, session_key: str, signature: str) -> bool:
    """Whether `signature` signs `raw_data` with `session_key` (constant time)."""
    return hmac.compare_digest(raw_data_signature(raw_data, session_key), signature.lower())
