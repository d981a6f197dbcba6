"""WXBizMsgCrypt against the official vectors, plus the strict checks."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from wxplatform.wechat.crypto import (
    AppIdMismatch,
    BadCiphertext,
    IllegalAesKey,
    MessageCrypto,
    aes_key_from_encoding_key,
)
from wxplatform.wechat.signature import sign, signature_matches

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def test_key_derivation(vectors: dict[str, Any]) -> None:
    for case in vectors["key_derivation"]:
        key = aes_key_from_encoding_key(case["encoding_aes_key"])
        assert key.hex() == case["aes_key_hex"]
        assert key[:16].hex() == case["iv_hex"]


@pytest.mark.parametrize("bad", ["", "A" * 42, "A" * 44, "A" * 42 + "!", "A" * 42 + "é"])
def test_illegal_keys_are_rejected(bad: str) -> None:
    with pytest.raises(IllegalAesKey):
        aes_key_from_encoding_key(bad)


def test_decrypt_vectors(vectors: dict[str, Any]) -> None:
    for case in vectors["decrypt"]:
        crypto = MessageCrypto(case["appid"], case["encoding_aes_key"])
        plain, key_index = crypto.decrypt(case["encrypt"])
        assert plain == case["expected_plaintext"], case["id"]
        assert key_index == 0


def test_encrypt_vectors(vectors: dict[str, Any]) -> None:
    for case in vectors["encrypt"]:
        crypto = MessageCrypto(case["appid"], case["encoding_aes_key"])
        encrypted = crypto.encrypt(case["plaintext"], random_prefix=case["random_prefix"].encode())
        assert encrypted == case["expected_encrypt"], case["id"]
        msg_signature = sign(case["token"], case["timestamp"], case["nonce"], encrypted)
        assert msg_signature == case["expected_msg_signature"], case["id"]


def test_decrypt_error_vectors(vectors: dict[str, Any]) -> None:
    for case in vectors["decrypt_errors"]:
        q = case["query"]
        computed = sign(case["token"], q["timestamp"], q["nonce"], case["encrypt"])
        if case["expected_error"] == -40001:
            assert not signature_matches(computed, q["msg_signature"]), case["id"]
            continue
        assert signature_matches(computed, q["msg_signature"]), case["id"]
        with pytest.raises(AppIdMismatch) as caught:
            MessageCrypto(case["appid"], case["encoding_aes_key"]).decrypt(case["encrypt"])
        assert caught.value.code == case["expected_error"] == -40005


def test_round_trip_with_unicode() -> None:
    crypto = MessageCrypto("wxapp", KEY)
    message = "<xml><Content><![CDATA[我是中文abcd123 🙂]]></Content></xml>"
    assert crypto.decrypt(crypto.encrypt(message)) == (message, 0)


@pytest.mark.parametrize(
    "ciphertext",
    [
        "not base64!!",
        "",
        base64.b64encode(b"x" * 15).decode(),
        base64.b64encode(b"x" * 33).decode(),
    ],
)
def test_malformed_ciphertext(ciphertext: str) -> None:
    with pytest.raises(BadCiphertext):
        MessageCrypto("wxapp", KEY).decrypt(ciphertext)


def test_bad_padding_is_rejected() -> None:
    crypto = MessageCrypto("wxapp", KEY)
    raw = bytearray(base64.b64decode(crypto.encrypt("hello")))
    raw[-1] ^= 0xFF  # garbles the last block, so the pad byte is no longer 1..32 and equal
    with pytest.raises(BadCiphertext):
        crypto.decrypt(base64.b64encode(bytes(raw)).decode())


def test_wrong_appid_is_rejected() -> None:
    sealed = MessageCrypto("wxother", KEY).encrypt("hello")
    with pytest.raises(AppIdMismatch):
        MessageCrypto("wxapp", KEY).decrypt(sealed)


def test_previous_key_still_opens_and_is_reported() -> None:
    old = "B" * 43
    sealed_with_old = MessageCrypto("wxapp", old).encrypt("rotated")
    crypto = MessageCrypto("wxapp", KEY, previous_key=old)
    assert crypto.decrypt(sealed_with_old) == ("rotated", 1)
    assert MessageCrypto("wxapp", old).decrypt(crypto.encrypt("reply", key_index=1)) == ("reply", 0)


def test_repr_does_not_show_keys() -> None:
    assert KEY not in repr(MessageCrypto("wxapp", KEY))
