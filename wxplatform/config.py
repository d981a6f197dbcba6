"""Settings: one TOML file, decoded and validated eagerly into frozen msgspec Structs.

The file path comes from `--config` or `WXP_CONFIG`; `load_settings` takes the
environment as a mapping so nothing else in the code reads `os.environ`.

The Structs below are the schema: each key is written once, with its type, bounds,
default and description (`tools/config_table.py` renders the README's table from them).
msgspec does the decoding and the per-key checks; `__post_init__` hooks do what spans
keys. Every problem becomes a `ConfigError` naming the offending key
(`apps[1].encryption`) with a message derived from the schema, never from the value, so a
secret cannot leak through an error. Secrets are held as `Secret`, which never shows its
value in `repr`, `str` or logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec
from msgspec import Meta, field

from wxplatform.wechat.crypto import CryptoError, aes_key_from_encoding_key

__all__ = [
    "AppConfig",
    "AppKind",
    "Article",
    "CallerConfig",
    "ConfigError",
    "ConfigFile",
    "CoreConfig",
    "DevConfig",
    "EdgeConfig",
    "Grant",
    "OAuthConfig",
    "RedisConfig",
    "ReplyRule",
    "ReplySpec",
    "Secret",
    "SessionConfig",
    "Settings",
    "VaultConfig",
    "VaultKey",
    "WeChatConfig",
    "annotation_at",
    "expectation",
    "hash_credential",
    "load_settings",
    "parse_settings",
    "split_address",
]

AppKind = Literal["official_account", "mini_program", "website"]
Encryption = Literal["plaintext", "compatible", "safe"]
DataFormat = Literal["xml", "json"]
MatchKind = Literal["exact", "contains", "regex"]
TokenMode = Literal["stable", "classic"]
ReplyType = Literal["text", "image", "voice", "video", "music", "news", "transfer_customer_service"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_TOKEN = re.compile(r"[A-Za-z0-9]{3,32}")


class ConfigError(ValueError):
    """The configuration is invalid; `key` is the dotted path of the offending key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config: {key}: {problem}")
        self.key = key
        self.problem = problem


class _Problem(ValueError):
    """Raised inside decoding; `field` is relative to the Struct being checked."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


class Secret:
    """A configuration value that must never be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that needs it."""
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


def hash_credential(token: str) -> str:
    """SHA-256 hex of a caller credential: what `[[callers]] token_sha256` stores."""
    return hashlib.sha256(token.encode()).hexdigest()


def split_address(address: str) -> tuple[str, int]:
    """`host:port` → (host, port); raises ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def _pattern(regex: str, problem: str, description: str | None = None) -> Meta:
    """A string constraint whose refusal says `problem` (a regex makes a poor message)."""
    return Meta(pattern=regex, description=description, extra={"problem": problem})


Address = Annotated[str, _pattern(f"^.+:{_PORT}$", "must be host:port")]


class _Schema(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of every config table: immutable, and an unknown key is an error."""


class CoreConfig(_Schema, frozen=True):
    """`[core]`."""

    listen: Annotated[Address, Meta(description="gRPC address of core")] = "127.0.0.1:50051"
    metrics_listen: Annotated[Address, Meta(description="Prometheus `/metrics` of core")] = (
        "127.0.0.1:9464"
    )
    drain_seconds: Annotated[
        float,
        Meta(
            gt=0, description="on SIGTERM: health goes NOT_SERVING, in-flight calls get this long"
        ),
    ] = 10.0
    # Longer than WeChat's retry window (~15 s) and than the edge spool's replay horizon.
    dedup_ttl_seconds: Annotated[
        int,
        Meta(
            ge=60,
            le=30 * 86400,
            description="how long a message's identity and reply are remembered",
        ),
    ] = 24 * 3600
    event_retention: Annotated[
        int, Meta(ge=100, le=10**8, description="events kept per app stream (approximate trim)")
    ] = 100_000
    max_deliveries: Annotated[
        int,
        Meta(
            ge=1,
            le=1000,
            description="deliveries to one consumer group before the dead-letter stream",
        ),
    ] = 5
    idempotency_ttl_seconds: Annotated[
        int,
        Meta(
            ge=60,
            le=30 * 86400,
            description="one WeChat call per idempotency key within this horizon",
        ),
    ] = 24 * 3600
    session_event_retention: Annotated[
        int,
        Meta(
            ge=100,
            le=10**8,
            description="session events kept per app for `WatchSessionEvents` to resume from",
        ),
    ] = 100_000
    delivery_ttl_seconds: Annotated[
        int, Meta(ge=3600, le=365 * 86400, description="how long delivery records are kept")
    ] = 30 * 86400

    def __post_init__(self) -> None:
        if self.idempotency_ttl_seconds > self.delivery_ttl_seconds:
            # A retry after the record expired would find the key done but no outcome.
            raise _Problem("idempotency_ttl_seconds", "must not exceed core.delivery_ttl_seconds")


class EdgeConfig(_Schema, frozen=True):
    """`[edge]`."""

    listen: Annotated[Address, Meta(description="HTTP address of the edge")] = "127.0.0.1:8080"
    core_target: Annotated[Address, Meta(description="where the edge finds core")] = (
        "127.0.0.1:50051"
    )
    core_credential: Annotated[
        Secret | None, Meta(description="the edge's caller credential for core")
    ] = None
    # Below a second nothing reaches core in time and every push is spooled (the edge
    # keeps some of the budget to write the spool).
    budget_seconds: Annotated[
        float,
        Meta(
            ge=1,
            lt=5,
            description="total time per push (1 s up to WeChat's 5 s); core gets what is left",
            extra={"problem": "must be at least 1 and below WeChat's 5 s deadline"},
        ),
    ] = 4.0
    max_body_bytes: Annotated[
        int,
        Meta(ge=1024, le=16 * 1024 * 1024, description="push bodies above this are refused (413)"),
    ] = 64 * 1024
    timestamp_window_seconds: Annotated[
        int,
        Meta(
            ge=30, le=86400, description="pushes whose `timestamp` is further from now are refused"
        ),
    ] = 300
    spool_path: Annotated[str, Meta(description="durable spool used while core is unreachable")] = (
        ".wxplatform/edge-spool.sqlite3"
    )
    spool_max_bytes: Annotated[
        int,
        Meta(
            ge=1024 * 1024,
            le=1024**4,
            description="spool size cap; when full, pushes are left to WeChat's retry",
        ),
    ] = 256 * 1024 * 1024
    spool_max_age_seconds: Annotated[
        int,
        Meta(
            ge=60,
            le=7 * 86400,
            description="replay horizon (must be below `core.dedup_ttl_seconds`)",
        ),
    ] = 12 * 3600
    # One Python process runs on one CPU at a time: one worker per CPU the edge may use.
    processes: Annotated[
        int,
        Meta(
            ge=1,
            le=64,
            description="worker processes of `wxplatform edge` sharing `listen` (SO_REUSEPORT)",
        ),
    ] = 1

    def __post_init__(self) -> None:
        if self.processes > 1 and split_address(self.listen)[1] == 0:
            # Workers share one port; port 0 would give each its own.
            raise _Problem("processes", "needs a fixed port in edge.listen")


class RedisConfig(_Schema, frozen=True):
    """`[redis]`; no url means an embedded redis-server (dev only)."""

    url: Annotated[
        Secret | None,
        Meta(description="`redis://…`; absent means an embedded Redis (`wxplatform dev` only)"),
    ] = None

    def __post_init__(self) -> None:
        if self.url is None:
            return
        url = self.url.reveal()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise _Problem("url", "must be a redis://, rediss:// or unix:// URL")
        if not url.startswith("unix://"):
            try:
                urllib.parse.urlsplit(url).port  # noqa: B018 - parsing is the check
            except ValueError:
                raise _Problem("url", "has an invalid port") from None


class WeChatConfig(_Schema, frozen=True):
    """`[wechat]`."""

    api_base: Annotated[str, Meta(description="WeChat's API (the simulator in dev)")] = (
        "https://api.weixin.qq.com"
    )
    open_base: Annotated[
        str, Meta(description="where WeChat's authorize pages are (the simulator in dev)")
    ] = "https://open.weixin.qq.com"

    def __post_init__(self) -> None:
        for name in ("api_base", "open_base"):
            value: str = getattr(self, name)
            if not value.startswith(("http://", "https://")):
                raise _Problem(name, "must be an http(s) URL")
            msgspec.structs.force_setattr(self, name, value.rstrip("/"))


class DevConfig(_Schema, frozen=True):
    """`[dev]`: used only by `wxplatform dev` and `wxplatform sim`."""

    sim_listen: Annotated[
        Address, Meta(description="where `wxplatform dev` runs the WeChat simulator")
    ] = "127.0.0.1:8081"
    demo_credential: Annotated[
        Secret | None, Meta(description="the demo caller's credential in `wxplatform dev`")
    ] = None


class VaultKey(_Schema, frozen=True):
    """`[[vault.keys]]`: one key that encrypts secrets core keeps in Redis."""

    id: Annotated[
        str,
        _pattern(
            r"^[A-Za-z0-9_-]{1,32}$",
            "must be 1-32 characters of [A-Za-z0-9_-]",
            "names the key in each ciphertext, so old ones stay readable after a rotation",
        ),
    ]
    key: Annotated[Secret, Meta(description="32 random bytes, base64 (AES-256-GCM)")]

    def __post_init__(self) -> None:
        try:
            raw = base64.b64decode(self.key.reveal(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise _Problem("key", "must be 32 bytes in base64")


class VaultConfig(_Schema, frozen=True):
    """`[vault]`: encryption at rest of mini-program session keys (and OAuth tokens)."""

    keys: Annotated[
        tuple[VaultKey, ...],
        Meta(
            description="the first encrypts, every one decrypts: add a new key first to "
            "rotate, and drop an old one once nothing it encrypted is left"
        ),
    ] = ()

    def __post_init__(self) -> None:
        ids: set[str] = set()
        for i, entry in enumerate(self.keys):
            if entry.id in ids:
                raise _Problem(f"keys[{i}].id", f"duplicate key id {entry.id!r}")
            ids.add(entry.id)


class Article(_Schema, frozen=True):
    """The one article of a `news` reply."""

    title: str = ""
    description: str = ""
    pic_url: str = ""
    url: str = ""


_REPLY_FIELDS: dict[str, tuple[str, ...]] = {
    # type: the fields it requires; the other fields of ReplySpec are optional or unused
    "text": ("content",),
    "image": ("media_id",),
    "voice": ("media_id",),
    "video": ("media_id",),
    "music": ("thumb_media_id",),
    "news": (),
    "transfer_customer_service": (),
}


class ReplySpec(_Schema, frozen=True, kw_only=True):
    """A passive reply as configured (mirrors `acme.wxplatform.v1.PassiveReply`)."""

    type: Annotated[
        ReplyType, Meta(description="what kind of reply; the fields below as the type needs them")
    ]
    content: Annotated[str, Meta(description="`text`: the text")] = ""
    media_id: Annotated[
        str, Meta(description="`image`, `voice`, `video`: an uploaded media id")
    ] = ""
    title: Annotated[str, Meta(description="`video`, `music`: title")] = ""
    description: Annotated[str, Meta(description="`video`, `music`: description")] = ""
    music_url: Annotated[str, Meta(description="`music`: the music's URL")] = ""
    hq_music_url: Annotated[str, Meta(description="`music`: its high-quality URL")] = ""
    thumb_media_id: Annotated[str, Meta(description="`music`: the thumbnail's media id")] = ""
    articles: Annotated[
        tuple[Article, ...],
        Meta(description="`news`: exactly one table of `title`, `description`, `pic_url`, `url`"),
    ] = ()
    kf_account: Annotated[
        str, Meta(description="`transfer_customer_service`: the agent to hand over to")
    ] = ""

    def __post_init__(self) -> None:
        for name in _REPLY_FIELDS[self.type]:
            if not getattr(self, name):
                raise _Problem(name, f"is required for a {self.type} reply")
        if self.type == "news" and len(self.articles) != 1:
            # WeChat rejects more than one article in practice (45008, docs/wechat.md §4.1).
            raise _Problem("articles", "must hold exactly one article")


class ReplyRule(_Schema, frozen=True, kw_only=True):
    """Keyword rule: text messages matching `keyword` get `reply`."""

    match: Annotated[MatchKind, Meta(description="`exact`, `contains` or `regex`")] = "exact"
    keyword: Annotated[str, Meta(min_length=1, description="what a text message is matched on")]
    reply: Annotated[ReplySpec, Meta(description="the reply a match gets")]

    def __post_init__(self) -> None:
        if self.match == "regex":
            try:
                re.compile(self.keyword)
            except re.error as exc:
                raise _Problem("keyword", f"invalid regex: {exc}") from None

    def matches(self, text: str) -> bool:
        """Whether a text message's content triggers this rule."""
        if self.match == "exact":
            return text.strip() == self.keyword
        if self.match == "contains":
            return self.keyword in text
        return re.search(self.keyword, text) is not None  # compiled once, in re's cache


class SessionConfig(_Schema, frozen=True):
    """`[apps.sessions]`: the platform sessions of the app's users."""

    idle_ttl_seconds: Annotated[
        int,
        Meta(
            ge=60,
            le=30 * 86400,
            description="a session unused this long expires; the default and the largest "
            "TTL a `CreateSession` may ask for",
        ),
    ] = 86400
    absolute_ttl_seconds: Annotated[
        int,
        Meta(ge=60, le=365 * 86400, description="no refresh keeps a session beyond this age"),
    ] = 30 * 86400

    def __post_init__(self) -> None:
        if self.idle_ttl_seconds > self.absolute_ttl_seconds:
            raise _Problem("idle_ttl_seconds", "must not exceed absolute_ttl_seconds")


class OAuthConfig(_Schema, frozen=True):
    """`[apps.oauth]`: web login through WeChat for an official account's pages."""

    public_base_url: Annotated[
        str,
        Meta(
            description="the edge's public base URL; its host is the domain registered at "
            "WeChat for web authorization. Empty: no web login for this app"
        ),
    ] = ""
    return_urls: Annotated[
        tuple[str, ...],
        Meta(
            description="where a login may return to, as `scheme://host[:port]/path-prefix`; "
            "a return URL must match one exactly in scheme, host and port and start with "
            "its path at a `/` boundary"
        ),
    ] = ()
    cookie_name: Annotated[
        str,
        _pattern(
            r"^[A-Za-z0-9_-]{1,64}$",
            "must be 1-64 characters of [A-Za-z0-9_-]",
            "the session cookie the edge sets (always HttpOnly, SameSite=Lax)",
        ),
    ] = "wxp_session"
    cookie_domain: Annotated[
        str, Meta(description="its Domain attribute; empty: the edge's host only")
    ] = ""
    cookie_path: Annotated[str, Meta(description="its Path attribute")] = "/"
    cookie_secure: Annotated[
        bool, Meta(description="its Secure attribute; turn off only for local development")
    ] = True

    def __post_init__(self) -> None:
        if self.public_base_url:
            if not _absolute_url(self.public_base_url):
                raise _Problem("public_base_url", "must be an http(s) URL without query")
            msgspec.structs.force_setattr(self, "public_base_url", self.public_base_url.rstrip("/"))
        for i, url in enumerate(self.return_urls):
            if not _absolute_url(url):
                raise _Problem(f"return_urls[{i}]", "must be an http(s) URL without query")
        if self.public_base_url and not self.return_urls:
            raise _Problem("return_urls", "must list at least one URL with web login on")
        if not self.cookie_path.startswith("/"):
            raise _Problem("cookie_path", "must start with /")


def _absolute_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not parts.query
        and not parts.fragment
        and "@" not in parts.netloc
        and url.isascii()
    )


class AppConfig(_Schema, frozen=True, kw_only=True):
    """`[[apps]]`: one WeChat app (official account or mini program)."""

    app_id: Annotated[
        str,
        _pattern(
            r"^[A-Za-z0-9_-]{1,64}$",
            "must be 1-64 characters of [A-Za-z0-9_-]",
            "the app (URL path `/wx/{app_id}`, Redis hash tag)",
        ),
    ]
    kind: Annotated[
        AppKind,
        Meta(
            description="`official_account`, `mini_program` or `website` (an Open Platform "
            "website app: QR-code login only)"
        ),
    ]
    encryption: Annotated[Encryption, Meta(description="`plaintext`, `compatible` or `safe`")] = (
        "plaintext"
    )
    data_format: Annotated[
        DataFormat,
        Meta(description="`xml` or `json` (mini programs; passive reply rules need `xml`)"),
    ] = "xml"
    app_secret: Annotated[Secret, Meta(description="AppSecret, from the WeChat admin console")]
    token: Annotated[
        Secret,
        Meta(
            description="the callback Token, from the WeChat admin console (3-32 of "
            "[A-Za-z0-9]); not for websites, which get no callbacks"
        ),
    ] = field(default_factory=lambda: Secret(""))
    encoding_aes_key: Annotated[
        Secret | None, Meta(description="EncodingAESKey, 43 characters; required unless plaintext")
    ] = None
    previous_encoding_aes_key: Annotated[
        Secret | None, Meta(description="kept after a key rotation")
    ] = None
    # `stable` uses /cgi-bin/stable_token (force only to replace a rejected token);
    # `classic` uses /cgi-bin/token, which invalidates the previous token.
    token_mode: Annotated[
        TokenMode,
        Meta(description="`stable` (`/cgi-bin/stable_token`) or `classic` (`/cgi-bin/token`)"),
    ] = "stable"  # noqa: S105 - a mode name, not a secret
    send_rate_per_second: Annotated[
        int, Meta(ge=1, le=100_000, description="wxplatform's own limit on the app's sends")
    ] = 100

    rules: Annotated[
        tuple[ReplyRule, ...],
        Meta(description="keyword rules for text messages; the first match replies"),
    ] = field(default=(), name="auto_reply")
    default_reply: Annotated[
        ReplySpec | None, Meta(description="reply to any user message no rule matched")
    ] = None
    subscribe_reply: Annotated[ReplySpec | None, Meta(description="reply to a follow")] = None
    sessions: SessionConfig = field(default_factory=SessionConfig)
    oauth: OAuthConfig = field(default_factory=OAuthConfig)

    def __post_init__(self) -> None:
        if not self.app_secret.reveal():
            raise _Problem("app_secret", "must not be empty")
        if self.kind == "website":
            self._check_website()
        elif not self.token.reveal():
            raise _Problem("token", "is required")
        elif not _TOKEN.fullmatch(self.token.reveal()):
            raise _Problem("token", "must be 3-32 characters of [A-Za-z0-9]")
        for name in ("encoding_aes_key", "previous_encoding_aes_key"):
            key: Secret | None = getattr(self, name)
            if key is not None:
                try:
                    aes_key_from_encoding_key(key.reveal())
                except CryptoError as exc:
                    raise _Problem(name, exc.detail) from None
        if self.encryption != "plaintext" and self.encoding_aes_key is None:
            raise _Problem("encoding_aes_key", f"is required for {self.encryption} mode")
        replies = self.rules or self.default_reply or self.subscribe_reply
        if self.kind == "mini_program" and replies:
            # Mini programs have no passive replies (docs/wechat.md §4.1): use customer service.
            raise _Problem("auto_reply", "mini programs have no passive replies")
        if self.oauth.public_base_url and self.kind == "mini_program":
            raise _Problem(
                "oauth.public_base_url", "web login is for official accounts and websites"
            )
        if self.data_format == "json" and replies:
            # WeChat documents passive replies as XML only; a JSON reply would be dropped.
            raise _Problem("auto_reply", 'passive replies need data_format = "xml"')

    def _check_website(self) -> None:
        """A website app logs users in and nothing else: no callbacks, no messages."""
        if self.token.reveal() or self.encoding_aes_key or self.encryption != "plaintext":
            raise _Problem("token", "websites get no callbacks: no token or encryption")
        if self.rules or self.default_reply or self.subscribe_reply:
            raise _Problem("auto_reply", "websites have no passive replies")
        if not self.oauth.public_base_url:
            raise _Problem("oauth.public_base_url", "is required: a website logs users in")


_RPC = r"^(\*|[A-Za-z]+Service/(\*|[A-Za-z0-9]+))$"


class Grant(_Schema, frozen=True, kw_only=True):
    """`[[callers.allow]]`: permission for a caller to call some RPCs for some apps.

    `apps` holds app ids or `*`; `rpcs` holds `Service/Method`, `Service/*` or `*`
    (service names without the package).
    """

    apps: Annotated[tuple[str, ...], Meta(min_length=1, description="app ids, or `*`")]
    rpcs: Annotated[
        tuple[
            Annotated[str, _pattern(_RPC, "must be *, Service/* or Service/Method")],
            ...,
        ],
        Meta(
            min_length=1,
            description="`Service/Method`, `Service/*` or `*` (`TokenService/InvalidateAccessToken`"
            " answers with the current token, so it needs `GetAccessToken` too)",
        ),
    ]

    def allows(self, app_id: str, service: str, method: str) -> bool:
        """Whether this grant covers `method` of `service` for `app_id`."""
        app_ok = "*" in self.apps or app_id in self.apps
        return app_ok and self.names(service, method)

    def names(self, service: str, method: str) -> bool:
        """Whether this grant covers `method` of `service` for some app."""
        rpcs = self.rpcs
        return "*" in rpcs or f"{service}/*" in rpcs or f"{service}/{method}" in rpcs


class CallerConfig(_Schema, frozen=True, kw_only=True):
    """`[[callers]]`: an internal caller of core's gRPC API, known by its credential's hash."""

    name: Annotated[
        str,
        _pattern(
            r"^[a-z0-9][a-z0-9_.-]{0,63}$",
            "must be 1-64 characters of [a-z0-9_.-]",
            "the caller, as logs and metrics name it",
        ),
    ]
    token_sha256: Annotated[
        str,
        _pattern(
            r"^[0-9a-fA-F]{64}$",
            "must be 64 hex characters (sha256 of the token)",
            "SHA-256 hex of its credential",
        ),
    ]
    grants: Annotated[
        tuple[Grant, ...], Meta(description="what it may call; everything not granted is denied")
    ] = field(default=(), name="allow")

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "token_sha256", self.token_sha256.lower())
        if self.token_sha256 == hash_credential(""):
            raise _Problem("token_sha256", "is the hash of an empty credential")

    def __repr__(self) -> str:
        return f"CallerConfig(name={self.name!r}, grants={self.grants!r})"


class ConfigFile(_Schema, frozen=True):
    """The whole TOML document, as decoded; `Settings` is what the code uses."""

    log_level: Annotated[
        LogLevel, Meta(description="`DEBUG`, `INFO`, `WARNING`, `ERROR`; JSON lines on stderr")
    ] = "INFO"
    core: CoreConfig = field(default_factory=CoreConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    wechat: WeChatConfig = field(default_factory=WeChatConfig)
    dev: DevConfig = field(default_factory=DevConfig)
    vault: VaultConfig = field(default_factory=VaultConfig)
    apps: Annotated[
        tuple[AppConfig, ...], Meta(description="the WeChat apps this deployment serves")
    ] = ()
    callers: Annotated[
        tuple[CallerConfig, ...], Meta(description="internal callers of core's gRPC API")
    ] = ()

    def __post_init__(self) -> None:
        if self.edge.spool_max_age_seconds >= self.core.dedup_ttl_seconds:
            # A replay older than the dedup records could be processed a second time.
            raise _Problem(
                "edge.spool_max_age_seconds", "must be shorter than core.dedup_ttl_seconds"
            )
        if not self.vault.keys and any(
            a.kind == "mini_program" or a.oauth.public_base_url for a in self.apps
        ):
            raise _Problem(
                "vault.keys",
                "is required with a mini program or web login: it encrypts session keys "
                "and OAuth tokens at rest",
            )
        app_ids: set[str] = set()
        for i, app in enumerate(self.apps):
            if app.app_id in app_ids:
                raise _Problem(f"apps[{i}].app_id", f"duplicate app {app.app_id!r}")
            app_ids.add(app.app_id)
        names: set[str] = set()
        digests: set[str] = set()
        for i, caller in enumerate(self.callers):
            if caller.name in names:
                raise _Problem(f"callers[{i}].name", f"duplicate caller {caller.name!r}")
            if caller.token_sha256 in digests:
                raise _Problem(f"callers[{i}].token_sha256", "two callers share one credential")
            names.add(caller.name)
            digests.add(caller.token_sha256)
            for g, grant in enumerate(caller.grants):
                for a, app_id in enumerate(grant.apps):
                    if app_id != "*" and app_id not in app_ids:
                        key = f"callers[{i}].allow[{g}].apps[{a}]"
                        raise _Problem(key, f"unknown app {app_id!r}")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a wxplatform process is configured with."""

    core: CoreConfig
    edge: EdgeConfig
    redis: RedisConfig
    wechat: WeChatConfig
    apps: Mapping[str, AppConfig]
    callers: tuple[CallerConfig, ...]
    dev: DevConfig = field(default_factory=DevConfig)
    vault: VaultConfig = field(default_factory=VaultConfig)
    log_level: LogLevel = "INFO"
    source: str = "<memory>"


def load_settings(path: str | Path | None, environ: Mapping[str, str]) -> Settings:
    """Read and validate the config file named by `path` or `WXP_CONFIG`."""
    chosen = path or environ.get("WXP_CONFIG")
    if not chosen:
        raise ConfigError("--config", "no config file given (use --config or WXP_CONFIG)")
    file = Path(chosen)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {file}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("--config", f"{file} is not valid TOML: {exc}") from exc
    try:
        document = msgspec.toml.decode(text, type=ConfigFile, dec_hook=_decode_custom)
    except msgspec.ValidationError as exc:
        raise _config_error(exc) from None
    except msgspec.DecodeError as exc:
        raise ConfigError("--config", f"{file} is not valid TOML: {exc}") from exc
    return _settings(document, source=str(file))


def parse_settings(data: Mapping[str, Any], *, source: str = "<memory>") -> Settings:
    """Validate an already parsed TOML document into `Settings`."""
    try:
        document = msgspec.convert(data, ConfigFile, dec_hook=_decode_custom)
    except msgspec.ValidationError as exc:
        raise _config_error(exc) from None
    return _settings(document, source=source)


def _settings(document: ConfigFile, *, source: str) -> Settings:
    return Settings(
        core=document.core,
        edge=document.edge,
        redis=document.redis,
        wechat=document.wechat,
        apps={app.app_id: app for app in document.apps},
        callers=document.callers,
        dev=document.dev,
        vault=document.vault,
        log_level=document.log_level,
        source=source,
    )


def _decode_custom(kind: type, value: Any) -> Any:
    if kind is Secret:
        if not isinstance(value, str):
            raise _Problem("", "must be a string")
        return Secret(value)
    raise NotImplementedError(kind)


_AT = re.compile(r"(?P<text>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>[^`]+)`")
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]+)`")


def _config_error(exc: msgspec.ValidationError) -> ConfigError:
    """The `ConfigError` for a decoding failure: the key's path and a schema-made problem."""
    found = _AT.fullmatch(str(exc))
    assert found is not None  # the pattern matches any text
    text, path = found["text"], (found["path"] or "").lstrip(".")
    cause = exc.__cause__
    if isinstance(cause, _Problem):
        return ConfigError(_join(path, cause.field), cause.problem)
    if unknown := _UNKNOWN.fullmatch(text):
        return ConfigError(_join(path, unknown["name"]), "unknown key")
    if missing := _MISSING.fullmatch(text):
        return ConfigError(_join(path, missing["name"]), "is required")
    return ConfigError(path or "config", expectation(annotation_at(path)))


def _join(path: str, name: str) -> str:
    if not name:
        return path
    if not path or name.startswith("["):
        return f"{path}{name}"
    return f"{path}.{name}"


_SEGMENT = re.compile(r"\.?(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|\[(?P<index>[0-9]+)\])")


def annotation_at(path: str) -> Any:
    """The schema's type annotation for the key at `path` (`apps[0].kind`)."""
    kind: Any = ConfigFile
    for segment in _SEGMENT.finditer(path):
        kind = _plain(kind)
        if segment["index"] is not None:
            kind = get_args(kind)[0]  # tuple[X, ...]
        else:
            by_name = {f.encode_name: f.name for f in msgspec.structs.fields(kind)}
            hints = typing.get_type_hints(kind, include_extras=True)
            kind = hints[by_name[segment["name"]]]
    return kind


def _plain(kind: Any) -> Any:
    """`kind` without its `Annotated` metadata and without `| None`."""
    if get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    args = get_args(kind)
    if type(None) in args:
        (kind,) = (a for a in args if a is not type(None))
    return kind


def _metas(kind: Any) -> list[Meta]:
    if get_origin(kind) is Annotated:
        return [m for m in get_args(kind)[1:] if isinstance(m, Meta)]
    return []


def expectation(kind: Any) -> str:
    """What a key of type `kind` must be, in words (`must be between 1 and 64`)."""
    metas = _metas(kind)
    for meta in metas:
        if meta.extra and "problem" in meta.extra:
            return str(meta.extra["problem"])
    plain = _plain(kind)
    if get_origin(plain) is Literal:
        return f"must be one of {', '.join(map(str, get_args(plain)))}"
    low = next((m.ge for m in metas if m.ge is not None), None)
    high = next((m.le for m in metas if m.le is not None), None)
    number = "integer" if plain is int else "number"
    if low is not None and high is not None:
        return f"must be {'an' if plain is int else 'a'} {number} between {low} and {high}"
    if any(m.gt == 0 for m in metas):
        return f"must be a positive {number}"
    if any(m.min_length for m in metas):
        return "must not be empty" if plain is str else "must be a non-empty array"
    if isinstance(plain, type) and issubclass(plain, msgspec.Struct):
        return "must be a table"
    if get_origin(plain) is tuple:
        element = get_args(plain)[0]
        if isinstance(element, type) and issubclass(element, msgspec.Struct):
            return "must be an array of tables"
        return "must be an array"
    names = {str: "a string", Secret: "a string", bool: "true or false", int: "an integer"}
    return f"must be {names.get(plain, 'a number')}"
