"""Request validation that collects every field violation, so a caller learns all at once."""

from __future__ import annotations

import re
import urllib.parse

from wxplatform.errors import FieldViolation, InvalidRequest

__all__ = ["Checks"]

_OPENID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class Checks:
    """Field checks of one request; `done` raises `InvalidRequest` naming each failure."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def fail(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def require(self, field: str, value: str, *, limit: int = 1024) -> None:
        if not value:
            self.fail(field, "is required")
        elif len(value) > limit:
            self.fail(field, f"must be at most {limit} characters")

    def openid(self, field: str, value: str) -> None:
        """An openid (or unionid): 1-128 characters of [A-Za-z0-9_-]."""
        if not _OPENID.fullmatch(value):
            self.fail(field, "must be an openid")

    def url(self, field: str, value: str) -> None:
        if not value:
            return
        try:
            parts = urllib.parse.urlsplit(value)
        except ValueError:  # e.g. an unclosed IPv6 bracket
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            self.fail(field, "must be an absolute http(s) URL")

    def idempotency_key(self, key: str) -> None:
        """1–128 printable ASCII characters."""
        if not 1 <= len(key) <= 128 or not key.isascii() or not key.isprintable():
            self.fail("idempotency_key", "must be 1-128 printable ASCII characters")

    def done(self) -> None:
        if self.violations:
            raise InvalidRequest(self.violations)
