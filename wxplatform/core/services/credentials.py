"""One shared, always-fresh credential per app (access token, JS-SDK ticket).

Readers never call WeChat while the stored credential is good. It is refreshed ahead of
expiry by exactly one replica: the refresher takes a fenced Redis lock, re-checks that
nobody refreshed meanwhile, fetches, and stores only if still fenced in. Within a
process, concurrent callers share one refresh (single flight); on other replicas they
wait for the lock holder's result instead of fetching again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from wxplatform.clock import Clock
from wxplatform.config import AppConfig
from wxplatform.core.adapters.credential_store import CredentialStore
from wxplatform.core.model import StoredCredential
from wxplatform.errors import TokenUnavailable, WxPlatformError

__all__ = ["Credential", "CredentialManager", "Fetch", "StillCurrent"]

log = logging.getLogger("wxplatform.core.credentials")

# Refresh this long before expiry. Below stable_token's 5-minute roll-over, so the
# refresh gets the rolled token rather than the same one again.
REFRESH_MARGIN = 240.0
_LOCAL_CACHE = 2.0  # seconds a replica trusts its in-process copy without asking Redis
_WAIT_START, _WAIT_CAP = 0.02, 0.2  # polling while another replica refreshes


@dataclass(frozen=True)
class Credential:
    """A credential and the wall-clock time it expires."""

    value: str = field(repr=False)
    expires_at: float


# fetch(app, rejected value or None, monotonic deadline) -> (value, expires_in seconds)
Fetch = Callable[[AppConfig, str | None, float], Awaitable[tuple[str, int]]]


class StillCurrent(Exception):
    """Raised by a fetch that could not replace a rejected value, which WeChat still serves.

    The manager stores `value` as valid again, so the app keeps working for everyone
    else, and fails this refresh with `error` (e.g. a forced refresh not allowed now).
    """

    def __init__(self, value: str, expires_in: int, error: WxPlatformError) -> None:
        super().__init__(error.message)
        self.value, self.expires_in, self.error = value, expires_in, error


@dataclass
class _Local:
    credential: Credential
    checked_at: float


class CredentialManager:
    """Get, refresh and invalidate one kind of credential for every app."""

    def __init__(self, kind: str, store: CredentialStore, fetch: Fetch, clock: Clock) -> None:
        self.kind = kind
        self._store = store
        self._fetch = fetch
        self._clock = clock
        self._local: dict[str, _Local] = {}
        # Bumped by `_forget`: a read of Redis that began before must not refill the
        # local copy with what it read.
        self._generations: dict[str, int] = {}
        # In flight per (app, rejected value or ""): a refresh after a rejection must not
        # ride on a background refresh that may hand the rejected token back.
        self._flights: dict[tuple[str, str], asyncio.Task[Credential]] = {}

    async def get(self, app: AppConfig, *, deadline: float) -> Credential:
        """The current credential, refreshing it first when missing or expired."""
        now = self._clock.now()
        local = self._local.get(app.app_id)
        if (
            local
            and now - local.checked_at < _LOCAL_CACHE
            and local.credential.expires_at - now > REFRESH_MARGIN
        ):
            return local.credential
        generation = self._generations.get(app.app_id, 0)
        stored = await self._store.read(app.app_id)
        if stored is not None:
            credential = Credential(stored.value, stored.expires_ms / 1000)
            left = credential.expires_at - now
            if left > REFRESH_MARGIN:
                # Not if an invalidation came while we read (see `_forget`): our value
                # may be the one rejected, and a local copy would hand it out for
                # _LOCAL_CACHE seconds.
                if self._generations.get(app.app_id, 0) == generation:
                    self._local[app.app_id] = _Local(credential, now)
                return credential
            if left > 5:
                # Still valid: answer now, refresh in the background ahead of expiry.
                self._start(app, stored, None)
                return credential
        return await self._wait(self._start(app, stored, _rejected(stored)), deadline)

    async def invalidate(
        self, app: AppConfig, value: str, *, deadline: float
    ) -> tuple[bool, Credential]:
        """Report `value` rejected by WeChat; returns (was it current, credential to use now)."""
        self._forget(app.app_id)
        if await self._store.invalidate(app.app_id, value):
            log.info("credential invalidated", extra={"app_id": app.app_id, "kind": self.kind})
            stale = StoredCredential(value, 0, -1)
            return True, await self._wait(self._start(app, stale, value), deadline)
        # Someone invalidated it first, maybe on another replica: reads of Redis made
        # before that, on their way to the local copy, are stale too.
        self._forget(app.app_id)
        return False, await self.get(app, deadline=deadline)

    def _forget(self, app_id: str) -> None:
        """Drop the local copy, and keep reads of Redis already under way from refilling it."""
        self._generations[app_id] = self._generations.get(app_id, 0) + 1
        self._local.pop(app_id, None)

    async def close(self) -> None:
        """Wait for refreshes in flight (each bounded by its own deadline)."""
        await asyncio.gather(*self._flights.values(), return_exceptions=True)

    async def refresh_if_due(self, app: AppConfig, *, deadline: float) -> None:
        """Refresh ahead of expiry (the background loop); nothing for an unused app."""
        stored = await self._store.read(app.app_id)
        if stored is not None and stored.expires_ms / 1000 - self._clock.now() <= REFRESH_MARGIN:
            await self._wait(self._start(app, stored, _rejected(stored)), deadline)

    def _start(
        self, app: AppConfig, stale: StoredCredential | None, rejected: str | None
    ) -> asyncio.Task[Credential]:
        """The refresh in flight for this app in this process, started if needed."""
        key = (app.app_id, rejected or "")
        flight = self._flights.get(key)
        if flight is None or flight.done():
            flight = asyncio.create_task(self._refresh(app, stale, rejected))
            self._flights[key] = flight
            flight.add_done_callback(lambda t: t.cancelled() or t.exception())  # consumed here
        return flight

    async def _wait(self, flight: asyncio.Task[Credential], deadline: float) -> Credential:
        remaining = deadline - time.monotonic()
        try:
            # Shielded: one impatient caller must not cancel the refresh others share.
            return await asyncio.wait_for(asyncio.shield(flight), max(remaining, 0.001))
        except TimeoutError:
            raise TokenUnavailable(f"{self.kind} refresh did not finish in time") from None

    async def _refresh(
        self, app: AppConfig, stale: StoredCredential | None, rejected: str | None
    ) -> Credential:
        # A refresh runs to its own deadline, independent of any one caller's.
        deadline = time.monotonic() + 10.0
        pause = _WAIT_START
        while time.monotonic() < deadline:
            fence = await self._store.acquire(app.app_id)
            if fence:
                return await self._refresh_locked(app, fence, stale, rejected, deadline)
            # Another replica is refreshing: wait for its result rather than fetch again.
            await asyncio.sleep(pause)
            pause = min(pause * 2, _WAIT_CAP)
            fresh = self._usable(await self._store.read(app.app_id), stale, rejected)
            if fresh is not None:
                return fresh
        raise TokenUnavailable(f"{self.kind} refresh timed out waiting for another replica")

    async def _refresh_locked(
        self,
        app: AppConfig,
        fence: int,
        stale: StoredCredential | None,
        rejected: str | None,
        deadline: float,
    ) -> Credential:
        stored = False
        try:
            # Re-check under the lock: the previous holder may have just refreshed.
            fresh = self._usable(await self._store.read(app.app_id), stale, rejected)
            if fresh is not None:
                return fresh
            try:
                value, expires_in = await self._fetch(app, rejected, deadline)
            except StillCurrent as kept:
                expires_ms = int((self._clock.now() + kept.expires_in) * 1000)
                stored = await self._store.store(app.app_id, fence, kept.value, expires_ms)
                log.warning(
                    "a rejected credential could not be replaced; WeChat still serves it",
                    extra={"app_id": app.app_id, "kind": self.kind, "reason": kept.error.reason},
                )
                raise kept.error from None
            credential = Credential(value, self._clock.now() + expires_in)
            stored = await self._store.store(
                app.app_id, fence, value, int(credential.expires_at * 1000)
            )
            if not stored:
                # Our lock expired while fetching and a newer refresh wrote: use that one.
                newer = self._usable(await self._store.read(app.app_id), None, rejected)
                if newer is None:
                    raise TokenUnavailable(f"{self.kind} refresh lost its lock")
                return newer
            self._local[app.app_id] = _Local(credential, self._clock.now())
            log.info(
                "credential refreshed",
                extra={"app_id": app.app_id, "kind": self.kind, "expires_in": expires_in},
            )
            return credential
        finally:
            if not stored:
                await self._store.release(app.app_id, fence)

    def _usable(
        self, current: StoredCredential | None, stale: StoredCredential | None, rejected: str | None
    ) -> Credential | None:
        """`current` if someone else refreshed it since we saw `stale`, and it is good.

        Never the `rejected` value, whatever its fence: WeChat refused it.
        """
        if current is None or current.value == rejected:
            return None
        left = current.expires_ms / 1000 - self._clock.now()
        unchanged = stale is not None and (current.fence, current.value) == (
            stale.fence,
            stale.value,
        )
        if left <= 5 or (unchanged and left <= REFRESH_MARGIN):
            return None
        return Credential(current.value, current.expires_ms / 1000)


def _rejected(stored: StoredCredential | None) -> str | None:
    """The stored value if it was invalidated (expiry 0: WeChat rejected it).

    A refresh after an invalidation seen on another replica must treat the value as
    rejected too: in normal mode `stable_token` hands the same token back while WeChat
    still thinks it valid, and storing it again would hand a refused token out anew.
    """
    return stored.value if stored is not None and stored.expires_ms == 0 else None
