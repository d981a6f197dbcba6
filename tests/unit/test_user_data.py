"""Mini-program open data against WeChat's published example (docs/wechat.md §5.8)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from wxplatform.wechat.user_data import (
    UserDataError,
    decrypt_user_data,
    encrypt_user_data,
    raw_data_signature,
    signature_matches,
)


def test_the_official_example_decrypts(vectors: dict[str, Any]) -> None:
    for case in vectors["wxa_encrypted_data"]:
        opened = decrypt_user_data(case["session_key"], case["encrypted_data"], case["iv"])
        assert opened.data == case["expected_json"], case["id"]
        assert opened.appid == case["appid"]
        assert opened.timestamp == case["expected_json"]["watermark"]["timestamp"]


def test_the_official_raw_data_signatures(vectors: dict[str, Any]) -> None:
    for case in vectors["wxa_rawdata_signature"]:
        assert raw_data_signature(case["raw_data"], case["session_key"]) == case["signature"]
        assert signature_matches(case["raw_data"], case["session_key"], case["signature"])
        assert not signature_matches(case["raw_data"] + " ", case["session_key"], case["signature"])


def test_what_we_encrypt_opens_again() -> None:
    key = base64.b64encode(bytes(range(16))).decode()
    data = {"nickName": "林", "watermark": {"appid": "wxa1", "timestamp": 1700000000}}
    iv = bytes(16)
    opened = decrypt_user_data(key, encrypt_user_data(key, data, iv), base64.b64encode(iv).decode())
    assert opened.data == data


@pytest.mark.parametrize(
    ("session_key", "encrypted_data", "iv", "problem"),
    [
        ("tiihtNczf5v6AKRyjwEUhQ==", "not base64!", "r7BXXKkLb8qrSNn05n0qiA==", "not base64"),
        ("tiihtNczf5v6AKRyjwEUhQ==", "AAAA", "r7BXXKkLb8qrSNn05n0qiA==", "whole AES blocks"),
        ("tiihtNczf5v6AKRyjwEUhQ==", "A" * 24, "AAAA", "iv must be 16 bytes"),
        ("short", "A" * 24, "r7BXXKkLb8qrSNn05n0qiA==", "session_key"),
    ],
)
def test_malformed_inputs_are_refused(
    session_key: str, encrypted_data: str, iv: str, problem: str
) -> None:
    with pytest.raises(UserDataError, match=problem):
        decrypt_user_data(session_key, encrypted_data, iv)


def test_another_users_key_is_refused(vectors: dict[str, Any]) -> None:
    case = vectors["wxa_encrypted_data"][0]
    other = base64.b64encode(b"\x01" * 16).decode()
    with pytest.raises(UserDataError):
        decrypt_user_data(other, case["encrypted_data"], case["iv"])
