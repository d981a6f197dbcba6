"""Callback signatures (docs/wechat.md §1, §2.3) and the JS-SDK signature (§5.7)."""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["jssdk_signature", "sign", "signature_matches"]


def sign(*parts: str) -> str:
    """SHA-1 (lowercase hex) of the parts sorted as strings and joined.

    With (token, timestamp, nonce) this is the URL `signature`; with the `Encrypt`
    value as a fourth part it is `msg_signature`. WeChat sorts lexicographically as
    strings, so `'1000' < '999'`; sorting UTF-8 bytes gives the same order.
    """
    joined = b"".join(sorted(p.encode() for p in parts))
    return hashlib.sha1(joined, usedforsecurity=False).hexdigest()


def signature_matches(expected: str, provided: str) -> bool:
    """Constant-time comparison of a computed signature with a received one."""
    return hmac.compare_digest(expected.encode(), provided.encode())


def jssdk_signature(jsapi_ticket: str, noncestr: str, timestamp: int | str, url: str) -> str:
    """The `wx.config` signature: fields in name order, raw values, SHA-1 hex.

    `url` is signed without its fragment, as the browser reports it.
    """
    page = url.split("#", 1)[0]
    string1 = f"jsapi_ticket={jsapi_ticket}&noncestr={noncestr}&timestamp={timestamp}&url={page}"
    return hashlib.sha1(string1.encode(), usedforsecurity=False).hexdigest()
