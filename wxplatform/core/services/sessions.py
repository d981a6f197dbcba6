"""Platform sessions: opaque tokens for WeChat users, shared by every team and replica.

A token is 256 random bits (URL-safe base64, 43 characters), handed out once when its
session is created; core keeps only its SHA-256. A session lives for its idle TTL,
extended by each refresh, and never beyond its absolute cap; a token names a session
of one app only (the app is part of the key). Unknown, expired and revoked tokens all
answer SESSION_NOT_FOUND, with the same message.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.core.adapters.session_store import SessionStore, is_event_id
from wxplatform.core.model import SessionChange, StoredSession
from wxplatform.core.services.checks import Checks
from wxplatform.errors import (
    AppNotFound,
    FieldViolation,
    InvalidRequest,
    SessionEventsExpired,
    SessionNotFound,
    ShuttingDown,
)

__all__ = ["NewSession", "SessionService", "check_attributes", "token_hash"]

TOKEN_BYTES = 32  # 256 bits
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # what secrets.token_urlsafe(32) gives
_ATTRIBUTE_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_BYTES = 4096  # keys and values together, in UTF-8
_WATCH_BATCH = 100
_WATCH_BLOCK_MS = 1000


@dataclass(frozen=True)
class NewSession:
    """A session just created, with the token that only its creator ever sees."""

    token: str
    session: StoredSession


def token_hash(token: str) -> str:
    """What a session is stored under: the SHA-256 of its token."""
    return hashlib.sha256(token.encode()).hexdigest()


class SessionService:
    """CreateSession, GetSession, RefreshSession, Revoke*, WatchSessionEvents."""

    def __init__(
        self,
        apps: Mapping[str, AppConfig],
        store: SessionStore,
        clock: Clock,
        *,
        stopping: asyncio.Event,
    ) -> None:
        self._apps = apps
        self._store = store
        self._clock = clock
        self._stopping = stopping  # set while core drains: watches end

    def _app(self, app_id: str) -> AppConfig:
        app = self._apps.get(app_id)
        if app is None:
            raise AppNotFound(app_id)
        return app

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    async def create(
        self,
        app_id: str,
        openid: str,
        *,
        unionid: str = "",
        attributes: Mapping[str, str] | None = None,
        ttl_seconds: float | None = None,
    ) -> NewSession:
        """A new session for a user; `ttl_seconds` defaults to the app's idle TTL."""
        app = self._app(app_id)
        config = app.sessions
        checks = Checks()
        checks.openid("openid", openid)
        if unionid:
            checks.openid("unionid", unionid)
        attributes = dict(attributes or {})
        check_attributes(checks, attributes)
        if ttl_seconds is not None and not 1 <= ttl_seconds <= config.idle_ttl_seconds:
            checks.fail("ttl", f"must be between 1 s and {config.idle_ttl_seconds} s")
        checks.done()
        now_ms = self._now_ms()
        idle_ms = int((ttl_seconds or config.idle_ttl_seconds) * 1000)
        absolute_ms = now_ms + config.absolute_ttl_seconds * 1000
        session = StoredSession(
            session_id="s" + secrets.token_hex(12),
            openid=openid,
            unionid=unionid,
            attributes=attributes,
            created_ms=now_ms,
            expires_ms=min(now_ms + idle_ms, absolute_ms),
            absolute_ms=absolute_ms,
            idle_ms=idle_ms,
        )
        token = secrets.token_urlsafe(TOKEN_BYTES)
        await self._store.create(app.app_id, token_hash(token), session, now_ms=now_ms)
        return NewSession(token, session)

    async def get(self, app_id: str, token: str) -> StoredSession:
        """The live session of `token`, unchanged."""
        app = self._app(app_id)
        digest = _digest(token)
        found = await self._store.get(app.app_id, digest, now_ms=self._now_ms()) if digest else None
        return _found(found)

    async def refresh(self, app_id: str, token: str) -> StoredSession:
        """The live session of `token`, its idle TTL started again (up to its cap)."""
        app = self._app(app_id)
        digest = _digest(token)
        found = (
            await self._store.refresh(app.app_id, digest, now_ms=self._now_ms()) if digest else None
        )
        return _found(found)

    async def revoke(self, app_id: str, token: str) -> bool:
        """Revoke the session of `token`; True if it was live (unknown ones are no error)."""
        app = self._app(app_id)
        digest = _digest(token)
        return bool(digest) and await self._store.revoke(app.app_id, digest, now_ms=self._now_ms())

    async def revoke_user(self, app_id: str, openid: str) -> int:
        """Revoke every session of a user, on every replica; how many were live."""
        app = self._app(app_id)
        checks = Checks()
        checks.openid("openid", openid)
        checks.done()
        return await self._store.revoke_user(app.app_id, openid, now_ms=self._now_ms())

    async def watch(
        self, app_id: str, after: str
    ) -> AsyncIterator[tuple[list[SessionChange], str]]:
        """The app's session events after `after` (or from now on), in batches with the
        position after each, until core drains. The first batch is empty and comes at
        once: the position the watch starts from."""
        app = self._app(app_id)
        if after and not is_event_id(after):
            raise InvalidRequest(FieldViolation("after_event_id", "is not an event id"))
        if not after:
            after = await self._store.last_event_id(app.app_id)
        elif not await self._store.retains(app.app_id, after):
            raise SessionEventsExpired(
                "events after this id are no longer kept: drop cached sessions, watch afresh"
            )
        yield [], after
        while not self._stopping.is_set():
            changes, after = await self._store.read_after(
                app.app_id, after, count=_WATCH_BATCH, block_ms=_WATCH_BLOCK_MS
            )
            if changes:
                yield changes, after
        # Ends the stream with UNAVAILABLE: the watcher resumes on another replica.
        raise ShuttingDown("server is draining; resume the watch")


def _digest(token: str) -> str:
    """The token's hash, or "" for what cannot be a token (then no session is looked up)."""
    if not token:
        raise InvalidRequest(FieldViolation("session_token", "is required"))
    return token_hash(token) if _TOKEN.fullmatch(token) else ""


def _found(session: StoredSession | None) -> StoredSession:
    if session is None:
        # One answer for unknown, expired and revoked: a caller learns nothing more.
        raise SessionNotFound("no such session")
    return session


def check_attributes(checks: Checks, attributes: Mapping[str, str]) -> None:
    """The bounds on a session's attributes (at most 32, 4 KiB in all, plain keys)."""
    if len(attributes) > MAX_ATTRIBUTES:
        checks.fail("attributes", f"must hold at most {MAX_ATTRIBUTES} entries")
    size = 0
    for key, value in attributes.items():
        if not _ATTRIBUTE_KEY.fullmatch(key):
            checks.fail(f"attributes[{key[:64]!r}]", "key must be 1-64 of [A-Za-z0-9_.:-]")
        size += len(key.encode()) + len(value.encode())
    if size > MAX_ATTRIBUTE_BYTES:
        checks.fail("attributes", f"must total at most {MAX_ATTRIBUTE_BYTES} bytes")
