"""What the identity services share: their collaborators, and the app lookup by kind."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wxplatform.clock import Clock
from wxplatform.config import AppConfig, AppKind
from wxplatform.core.adapters.identity_store import IdentityStore
from wxplatform.core.adapters.wechat_client import WeChatClient
from wxplatform.core.services.sessions import SessionService
from wxplatform.core.services.tokens import TokenService
from wxplatform.core.services.vault import Vault
from wxplatform.errors import AppKindMismatch, AppNotFound

__all__ = ["IdentityDeps"]


@dataclass(frozen=True)
class IdentityDeps:
    """The collaborators of web login and mini-program identity."""

    apps: Mapping[str, AppConfig]
    wechat: WeChatClient
    tokens: TokenService
    sessions: SessionService
    store: IdentityStore
    vault: Vault
    clock: Clock

    def app(self, app_id: str, kinds: tuple[AppKind, ...], refusal: str) -> AppConfig:
        """The configured app, which must be of one of `kinds` (else
        `AppKindMismatch(refusal)`)."""
        app = self.apps.get(app_id)
        if app is None:
            raise AppNotFound(app_id)
        if app.kind not in kinds:
            raise AppKindMismatch(refusal)
        return app
