"""WXBizMsgCrypt: AES-256-CBC message encryption for safe and compatible mode (§2).

Decryption is strict where Tencent's samples are lenient: the ciphertext must be valid
base64 of a whole number of AES blocks, the PKCS#7 pad (block 32) must be 1..32
identical bytes, the length field must fit, and the trailing appid must be ours. Every
failure is a `CryptoError` carrying the sample library's error code for logs.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "AppIdMismatch",
    "BadCiphertext",
    "CryptoError",
    "IllegalAesKey",
    "MessageCrypto",
    "aes_key_from_encoding_key",
]

_BLOCK = 32  # WeChat pads to 32 bytes, not to the AES block size of 16.


class CryptoError(ValueError):
    """A message could not be decrypted or a key is unusable.

    `code` is the WXBizMsgCrypt sample code (-40004, -40005, -40007, -40008, -40010).
    """

    code = -40007

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class IllegalAesKey(CryptoError):
    """The EncodingAESKey is not 43 base64 characters decoding to 32 bytes."""

    code = -40004


class BadCiphertext(CryptoError):
    """The ciphertext is not base64, not block-aligned, or its padding or length is bad."""

    code = -40008


class AppIdMismatch(CryptoError):
    """The message decrypted, but it is addressed to another app."""

    code = -40005


def aes_key_from_encoding_key(encoding_aes_key: str) -> bytes:
    """`Base64_Decode(EncodingAESKey + "=")`, checked to give 32 bytes."""
    if (
        len(encoding_aes_key) != 43
        or not encoding_aes_key.isalnum()
        or not encoding_aes_key.isascii()
    ):
        raise IllegalAesKey("EncodingAESKey must be 43 characters of [A-Za-z0-9]")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except binascii.Error as exc:
        raise IllegalAesKey("EncodingAESKey is not base64") from exc
    if len(key) != 32:
        raise IllegalAesKey("EncodingAESKey does not decode to 32 bytes")
    return key


def _cipher(key: bytes) -> Cipher[modes.CBC]:
    return Cipher(algorithms.AES(key), modes.CBC(key[:16]))


@dataclass(frozen=True)
class _Key:
    raw: bytes = field(repr=False)


class MessageCrypto:
    """Encrypts and decrypts one app's messages, with an optional previous key.

    WeChat's FAQ asks servers to keep the previous EncodingAESKey after a rotation: a
    message that fails with the current key is tried with the previous one, and the
    reply is encrypted with whichever worked (`decrypt` returns its index).
    """

    def __init__(self, app_id: str, encoding_aes_key: str, previous_key: str | None = None) -> None:
        self.app_id = app_id
        self._keys = [_Key(aes_key_from_encoding_key(encoding_aes_key))]
        if previous_key:
            self._keys.append(_Key(aes_key_from_encoding_key(previous_key)))

    def __repr__(self) -> str:
        return f"MessageCrypto(app_id={self.app_id!r}, keys={len(self._keys)})"

    def encrypt(
        self, message: str, *, key_index: int = 0, random_prefix: bytes | None = None
    ) -> str:
        """`Encrypt` value for `message`: base64(AES(random16 ‖ len ‖ msg ‖ appid ‖ pad))."""
        prefix = random_prefix if random_prefix is not None else _random16()
        body = message.encode()
        full = prefix + struct.pack(">I", len(body)) + body + self.app_id.encode()
        pad = _BLOCK - len(full) % _BLOCK
        encryptor = _cipher(self._keys[key_index].raw).encryptor()
        data = encryptor.update(full + bytes([pad]) * pad) + encryptor.finalize()
        return base64.b64encode(data).decode()

    def decrypt(self, encrypted: str) -> tuple[str, int]:
        """Plaintext of an `Encrypt` value and the index of the key that opened it."""
        try:
            data = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadCiphertext("ciphertext is not base64") from exc
        if not data or len(data) % 16:
            raise BadCiphertext("ciphertext is not a whole number of AES blocks")
        errors: list[CryptoError] = []
        for index, key in enumerate(self._keys):
            try:
                return self._open(key.raw, data), index
            except CryptoError as exc:
                errors.append(exc)
        # A wrong key usually fails the padding check; an appid mismatch means some key
        # opened the message cleanly, which is the more telling error to report.
        raise next((e for e in errors if isinstance(e, AppIdMismatch)), errors[0])

    def _open(self, key: bytes, data: bytes) -> str:
        decryptor = _cipher(key).decryptor()
        plain = decryptor.update(data) + decryptor.finalize()
        pad = plain[-1]
        if not 1 <= pad <= _BLOCK or plain[-pad:] != bytes([pad]) * pad:
            raise BadCiphertext("bad padding")
        plain = plain[:-pad]
        if len(plain) < 20:
            raise BadCiphertext("plaintext too short")
        (length,) = struct.unpack(">I", plain[16:20])
        if length > len(plain) - 20:
            raise BadCiphertext("length field out of range")
        try:
            message = plain[20 : 20 + length].decode()
            receiver = plain[20 + length :].decode()
        except UnicodeDecodeError as exc:
            raise BadCiphertext("plaintext is not UTF-8") from exc
        if receiver != self.app_id:
            raise AppIdMismatch("message is addressed to another app")
        return message


def _random16() -> bytes:
    # 16 hex characters: ASCII alphanumerics like the official samples use.
    return secrets.token_hex(8).encode()
