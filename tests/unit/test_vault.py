"""The vault: AES-GCM at rest, bound to a context, readable across a key rotation."""

from __future__ import annotations

import base64

import pytest

from wxplatform.config import Secret, VaultKey
from wxplatform.core.services.vault import Vault, VaultError


def key(key_id: str, fill: int) -> VaultKey:
    return VaultKey(id=key_id, key=Secret(base64.b64encode(bytes([fill]) * 32).decode()))


def test_a_sealed_value_opens_only_in_its_context() -> None:
    vault = Vault([key("k1", 1)])
    sealed = vault.seal(b"session-key", b"app:openid-a")
    assert b"session-key" not in sealed.encode()
    assert sealed.startswith("k1.")
    assert vault.open(sealed, b"app:openid-a") == b"session-key"
    with pytest.raises(VaultError):
        vault.open(sealed, b"app:openid-b")  # copied to another user's record
    with pytest.raises(VaultError):
        vault.open(sealed[:-4] + "AAAA", b"app:openid-a")  # tampered


def test_old_values_stay_readable_after_a_rotation() -> None:
    old = Vault([key("k1", 1)]).seal(b"v", b"c")
    rotated = Vault([key("k2", 2), key("k1", 1)])
    assert rotated.open(old, b"c") == b"v"
    assert rotated.seal(b"v", b"c").startswith("k2.")
    with pytest.raises(VaultError, match="no longer configured"):
        Vault([key("k2", 2)]).open(old, b"c")


def test_no_key_no_sealing_and_no_secret_in_repr() -> None:
    with pytest.raises(VaultError):
        Vault([]).seal(b"v", b"c")
    assert "AQEB" not in repr(Vault([key("k1", 1)]))
