"""Encryption at rest for the secrets core keeps in Redis (session keys, OAuth tokens).

AES-256-GCM from `cryptography`. A sealed value is `<key id>.<base64 of nonce and
ciphertext>`: the first configured key seals, any configured key opens, so keys rotate
without downtime (add the new key first; drop the old one once nothing it sealed is
left). Each value is bound to what it belongs to (`context`, the associated data): a
value copied to another user's key in Redis does not open there.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wxplatform.config import VaultKey

__all__ = ["Vault", "VaultError"]

_NONCE = 12


class VaultError(ValueError):
    """A sealed value does not open: an unknown key id, or tampered or misplaced data."""


class Vault:
    """Seals and opens values with the configured keys."""

    def __init__(self, keys: Sequence[VaultKey]) -> None:
        self._keys = {k.id: AESGCM(base64.b64decode(k.key.reveal())) for k in keys}
        self._current = keys[0].id if keys else None

    def __repr__(self) -> str:
        return f"Vault(keys={sorted(self._keys)!r})"

    def seal(self, plaintext: bytes, context: bytes) -> str:
        """`plaintext` encrypted with the current key, bound to `context`."""
        if self._current is None:
            raise VaultError("no vault key is configured")
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._keys[self._current].encrypt(nonce, plaintext, context)
        return f"{self._current}.{base64.b64encode(nonce + sealed).decode()}"

    def open(self, sealed: str, context: bytes) -> bytes:
        """The plaintext of a value `seal` made for the same `context`."""
        key_id, _, blob = sealed.partition(".")
        aead = self._keys.get(key_id)
        if aead is None:
            raise VaultError(f"sealed with a key that is no longer configured ({key_id!r})")
        try:
            raw = base64.b64decode(blob, validate=True)
            return aead.decrypt(raw[:_NONCE], raw[_NONCE:], context)
        except (binascii.Error, ValueError, InvalidTag):
            raise VaultError("sealed value is damaged or belongs elsewhere") from None
