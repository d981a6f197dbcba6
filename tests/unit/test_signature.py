"""Callback and JS-SDK signatures against WeChat's official vectors."""

from __future__ import annotations

import hashlib
from typing import Any

from wxplatform.wechat.signature import jssdk_signature, sign, signature_matches


def test_callback_signature_vectors(vectors: dict[str, Any]) -> None:
    cases = vectors["callback_signature"]
    assert len(cases) == 8
    for case in cases:
        computed = sign(case["token"], case["timestamp"], case["nonce"])
        assert signature_matches(computed, case["signature"]) is case["valid"], case["id"]


def test_sort_is_lexicographic_not_numeric() -> None:
    # '1000' < '999' as strings, so the joined text is "1000999tok"; a numeric sort
    # would join "9991000tok". Compare against both digests computed independently.
    lexicographic = hashlib.sha1(b"1000999tok", usedforsecurity=False).hexdigest()
    numeric = hashlib.sha1(b"9991000tok", usedforsecurity=False).hexdigest()
    assert sign("999", "1000", "tok") == lexicographic != numeric
    assert sign("Zzz", "abc", "1") == hashlib.sha1(b"1Zzzabc", usedforsecurity=False).hexdigest()


def test_msg_signature_vectors(vectors: dict[str, Any]) -> None:
    for case in vectors["decrypt"]:
        q = case["query"]
        assert (
            sign(case["token"], q["timestamp"], q["nonce"], case["encrypt"]) == q["msg_signature"]
        )


def test_signature_matches_rejects_case_and_length_variants() -> None:
    good = sign("AAAAA", "1714036504", "1514711492")
    assert signature_matches(good, "f464b24fc39322e44b38aa78f5edd27bd1441696")
    assert not signature_matches(good, good.upper())
    assert not signature_matches(good, good[:-1])
    assert not signature_matches(good, "")


def test_jssdk_signature_vectors(vectors: dict[str, Any]) -> None:
    for case in vectors["jssdk_signature"]:
        got = jssdk_signature(
            case["jsapi_ticket"], case["noncestr"], case["timestamp"], case["url"]
        )
        assert got == case["signature"], case["id"]
