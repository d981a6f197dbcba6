"""Settings: one TOML file, validated eagerly into frozen dataclasses.

The file path comes from `--config` or `WXP_CONFIG`; `load_settings` takes the
environment as a mapping so nothing else in the code reads `os.environ`. Every problem is
reported as a `ConfigError` that names the offending key (`apps[1].encryption`). Secrets
are wrapped in `Secret`, which never shows its value in `repr`, `str` or logs.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from wxplatform.wechat.crypto import CryptoError, aes_key_from_encoding_key

__all__ = [
    "AppConfig",
    "CallerConfig",
    "ConfigError",
    "CoreConfig",
    "DevConfig",
    "EdgeConfig",
    "Grant",
    "RedisConfig",
    "ReplyRule",
    "ReplySpec",
    "Secret",
    "Settings",
    "WeChatConfig",
    "hash_credential",
    "load_settings",
    "parse_settings",
    "split_address",
]

AppKind = Literal["official_account", "mini_program"]
Encryption = Literal["plaintext", "compatible", "safe"]
DataFormat = Literal["xml", "json"]
MatchKind = Literal["exact", "contains", "regex"]
TokenMode = Literal["stable", "classic"]
ReplyType = Literal["text", "image", "voice", "video", "music", "news", "transfer_customer_service"]

_APP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN = re.compile(r"[A-Za-z0-9]{3,32}")
_CALLER = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RPC = re.compile(r"\*|[A-Za-z]+Service/(\*|[A-Za-z0-9]+)")


class ConfigError(ValueError):
    """The configuration is invalid; `key` is the dotted path of the offending key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config: {key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class Secret:
    """A configuration value that must never be printed."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        """The secret itself, for the one place that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


def hash_credential(token: str) -> str:
    """SHA-256 hex of a caller credential: what `[[callers]] token_sha256` stores."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ReplySpec:
    """A passive reply as configured (mirrors `acme.wxplatform.v1.PassiveReply`)."""

    type: ReplyType
    content: str = ""
    media_id: str = ""
    title: str = ""
    description: str = ""
    music_url: str = ""
    hq_music_url: str = ""
    thumb_media_id: str = ""
    articles: tuple[Mapping[str, str], ...] = ()
    kf_account: str = ""


@dataclass(frozen=True)
class ReplyRule:
    """Keyword rule: text messages matching `keyword` get `reply`."""

    match: MatchKind
    keyword: str
    reply: ReplySpec
    pattern: re.Pattern[str] | None = field(default=None, compare=False)

    def matches(self, text: str) -> bool:
        """Whether a text message's content triggers this rule."""
        if self.match == "exact":
            return text.strip() == self.keyword
        if self.match == "contains":
            return self.keyword in text
        assert self.pattern is not None
        return self.pattern.search(text) is not None


@dataclass(frozen=True)
class AppConfig:
    """One WeChat app (official account or mini program)."""

    app_id: str
    kind: AppKind
    encryption: Encryption
    data_format: DataFormat
    app_secret: Secret
    token: Secret
    encoding_aes_key: Secret | None
    previous_encoding_aes_key: Secret | None
    rules: tuple[ReplyRule, ...] = ()
    default_reply: ReplySpec | None = None
    subscribe_reply: ReplySpec | None = None
    # `stable` uses /cgi-bin/stable_token (normal mode; force only to replace a rejected
    # token); `classic` uses /cgi-bin/token, which invalidates the previous token.
    token_mode: TokenMode = "stable"  # noqa: S105 - a mode name, not a secret
    send_rate_per_second: int = 100  # wxplatform's own limit on this app's sends


@dataclass(frozen=True)
class Grant:
    """Permission for a caller to call some RPCs for some apps.

    `apps` holds app ids or `*`; `rpcs` holds `Service/Method`, `Service/*` or `*`
    (service names without the package).
    """

    apps: frozenset[str]
    rpcs: frozenset[str]

    def allows(self, app_id: str, service: str, method: str) -> bool:
        """Whether this grant covers `method` of `service` for `app_id`."""
        app_ok = "*" in self.apps or app_id in self.apps
        return app_ok and self.names(service, method)

    def names(self, service: str, method: str) -> bool:
        """Whether this grant covers `method` of `service` for some app."""
        return bool({"*", f"{service}/*", f"{service}/{method}"} & self.rpcs)


@dataclass(frozen=True)
class CallerConfig:
    """An internal caller of core's gRPC API, known by the hash of its credential."""

    name: str
    token_sha256: str = field(repr=False)
    grants: tuple[Grant, ...]


@dataclass(frozen=True)
class CoreConfig:
    """`[core]`."""

    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9464"
    drain_seconds: float = 10.0
    # Longer than WeChat's retry window (~15 s) and than the edge spool's replay horizon.
    dedup_ttl_seconds: int = 24 * 3600
    event_retention: int = 100_000  # events kept per app stream (approximate trim)
    max_deliveries: int = 5  # to one consumer group, then the dead-letter stream
    idempotency_ttl_seconds: int = 24 * 3600  # one WeChat call per key within this horizon
    delivery_ttl_seconds: int = 30 * 86400  # delivery records kept this long


@dataclass(frozen=True)
class EdgeConfig:
    """`[edge]`."""

    listen: str = "127.0.0.1:8080"
    core_target: str = "127.0.0.1:50051"
    core_credential: Secret | None = None
    budget_seconds: float = 4.0
    max_body_bytes: int = 64 * 1024
    timestamp_window_seconds: int = 300
    spool_path: str = ".wxplatform/edge-spool.sqlite3"
    spool_max_bytes: int = 256 * 1024 * 1024
    spool_max_age_seconds: int = 12 * 3600  # replay horizon: older entries are dropped
    # Worker processes of `wxplatform edge` sharing `listen` (SO_REUSEPORT): one per
    # CPU the edge may use, since one Python process runs on one CPU at a time.
    processes: int = 1


@dataclass(frozen=True)
class RedisConfig:
    """`[redis]`; no url means an embedded redis-server (dev only)."""

    url: Secret | None = None


@dataclass(frozen=True)
class WeChatConfig:
    """`[wechat]`."""

    api_base: str = "https://api.weixin.qq.com"


@dataclass(frozen=True)
class DevConfig:
    """`[dev]`: used only by `wxplatform dev` and `wxplatform sim`."""

    sim_listen: str = "127.0.0.1:8081"
    demo_credential: Secret | None = None


@dataclass(frozen=True)
class Settings:
    """Everything a wxplatform process is configured with."""

    core: CoreConfig
    edge: EdgeConfig
    redis: RedisConfig
    wechat: WeChatConfig
    apps: Mapping[str, AppConfig]
    callers: tuple[CallerConfig, ...]
    dev: DevConfig = field(default_factory=DevConfig)
    log_level: str = "INFO"
    source: str = "<memory>"


def load_settings(path: str | Path | None, environ: Mapping[str, str]) -> Settings:
    """Read and validate the config file named by `path` or `WXP_CONFIG`."""
    chosen = path or environ.get("WXP_CONFIG")
    if not chosen:
        raise ConfigError("--config", "no config file given (use --config or WXP_CONFIG)")
    file = Path(chosen)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {file}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", f"{file} is not valid TOML: {exc}") from exc
    return parse_settings(data, source=str(file))


T = TypeVar("T")


class _Table:
    """Typed, path-aware access to one TOML table; rejects keys nobody read."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(
        self, name: str, kind: type[T], default: T | None = None, *, required: bool = False
    ) -> T:
        self.seen.add(name)
        if name not in self.data:
            if required or default is None:
                raise ConfigError(self.key(name), "is required")
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(self.key(name), f"must be a {kind.__name__}")
        return value

    def optional_str(self, name: str) -> str | None:
        self.seen.add(name)
        if name not in self.data:
            return None
        return self.get(name, str)

    def choice(self, name: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = self.get(name, str, default)
        if value not in options:
            raise ConfigError(self.key(name), f"must be one of {', '.join(options)}")
        return value

    def table(self, name: str) -> _Table:
        self.seen.add(name)
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(self.key(name), "must be a table")
        return _Table(value, self.key(name))

    def tables(self, name: str) -> list[_Table]:
        self.seen.add(name)
        value = self.data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(self.key(name), "must be an array of tables")
        return [_Table(v, f"{self.key(name)}[{i}]") for i, v in enumerate(value)]

    def strings(self, name: str) -> tuple[str, ...]:
        self.seen.add(name)
        value = self.data.get(name)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.key(name), "must be a non-empty array of strings")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")


def split_address(address: str) -> tuple[str, int]:
    """`host:port` → (host, port); raises ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def _address(table: _Table, name: str, default: str) -> str:
    value = table.get(name, str, default)
    try:
        split_address(value)
    except ValueError:
        raise ConfigError(table.key(name), "must be host:port") from None
    return value


def _int_range(table: _Table, name: str, default: int, low: int, high: int) -> int:
    value = table.get(name, int, default)
    if not low <= value <= high:
        raise ConfigError(table.key(name), f"must be between {low} and {high}")
    return value


def _positive(table: _Table, name: str, default: float) -> float:
    value = table.get(name, float, default)
    if value <= 0:
        raise ConfigError(table.key(name), "must be positive")
    return value


def _edge_config(t: _Table, core: CoreConfig) -> EdgeConfig:
    """`[edge]`, checked against core's dedup horizon."""
    credential = t.optional_str("core_credential")
    budget = _positive(t, "budget_seconds", EdgeConfig.budget_seconds)
    if not 1 <= budget < 5:
        # Below a second nothing reaches core in time and every push is spooled (the
        # edge keeps some of the budget to write the spool).
        raise ConfigError(
            t.key("budget_seconds"), "must be at least 1 and below WeChat's 5 s deadline"
        )
    max_body = t.get("max_body_bytes", int, EdgeConfig.max_body_bytes)
    if not 1024 <= max_body <= 16 * 1024 * 1024:
        raise ConfigError(t.key("max_body_bytes"), "must be between 1024 and 16777216")
    edge = EdgeConfig(
        listen=_address(t, "listen", EdgeConfig.listen),
        core_target=_address(t, "core_target", EdgeConfig.core_target),
        core_credential=Secret(credential) if credential else None,
        budget_seconds=budget,
        max_body_bytes=max_body,
        timestamp_window_seconds=_int_range(
            t, "timestamp_window_seconds", EdgeConfig.timestamp_window_seconds, 30, 86400
        ),
        spool_path=t.get("spool_path", str, EdgeConfig.spool_path),
        spool_max_bytes=_int_range(
            t, "spool_max_bytes", EdgeConfig.spool_max_bytes, 1024 * 1024, 1024**4
        ),
        spool_max_age_seconds=_int_range(
            t, "spool_max_age_seconds", EdgeConfig.spool_max_age_seconds, 60, 7 * 86400
        ),
        processes=_int_range(t, "processes", EdgeConfig.processes, 1, 64),
    )
    if edge.processes > 1 and split_address(edge.listen)[1] == 0:
        # Workers share one port; port 0 would give each its own.
        raise ConfigError(t.key("processes"), "needs a fixed port in edge.listen")
    if edge.spool_max_age_seconds >= core.dedup_ttl_seconds:
        # A replay older than the dedup records could be processed a second time.
        raise ConfigError(
            t.key("spool_max_age_seconds"), "must be shorter than core.dedup_ttl_seconds"
        )
    t.done()
    return edge


def parse_settings(data: Mapping[str, Any], *, source: str = "<memory>") -> Settings:
    """Validate a parsed TOML document into `Settings`."""
    root = _Table(data, "")
    log_level = root.choice("log_level", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO")

    t = root.table("core")
    core = CoreConfig(
        listen=_address(t, "listen", CoreConfig.listen),
        metrics_listen=_address(t, "metrics_listen", CoreConfig.metrics_listen),
        drain_seconds=_positive(t, "drain_seconds", CoreConfig.drain_seconds),
        dedup_ttl_seconds=_int_range(
            t, "dedup_ttl_seconds", CoreConfig.dedup_ttl_seconds, 60, 30 * 86400
        ),
        event_retention=_int_range(t, "event_retention", CoreConfig.event_retention, 100, 10**8),
        max_deliveries=_int_range(t, "max_deliveries", CoreConfig.max_deliveries, 1, 1000),
        idempotency_ttl_seconds=_int_range(
            t, "idempotency_ttl_seconds", CoreConfig.idempotency_ttl_seconds, 60, 30 * 86400
        ),
        delivery_ttl_seconds=_int_range(
            t, "delivery_ttl_seconds", CoreConfig.delivery_ttl_seconds, 3600, 365 * 86400
        ),
    )
    if core.idempotency_ttl_seconds > core.delivery_ttl_seconds:
        # A retry after the record expired would find the key done but no outcome to give.
        raise ConfigError(
            t.key("idempotency_ttl_seconds"), "must not exceed core.delivery_ttl_seconds"
        )
    t.done()

    edge = _edge_config(root.table("edge"), core)

    t = root.table("redis")
    url = t.optional_str("url")
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(t.key("url"), "must be a redis://, rediss:// or unix:// URL")
    if url is not None and not url.startswith("unix://"):
        try:
            urllib.parse.urlsplit(url).port  # noqa: B018 - parsing is the check
        except ValueError:
            raise ConfigError(t.key("url"), "has an invalid port") from None
    redis = RedisConfig(url=Secret(url) if url else None)
    t.done()

    t = root.table("wechat")
    api_base = t.get("api_base", str, WeChatConfig.api_base).rstrip("/")
    if not api_base.startswith(("http://", "https://")):
        raise ConfigError(t.key("api_base"), "must be an http(s) URL")
    wechat = WeChatConfig(api_base=api_base)
    t.done()

    t = root.table("dev")
    demo = t.optional_str("demo_credential")
    dev = DevConfig(
        sim_listen=_address(t, "sim_listen", DevConfig.sim_listen),
        demo_credential=Secret(demo) if demo else None,
    )
    t.done()

    apps: dict[str, AppConfig] = {}
    for table in root.tables("apps"):
        app = _parse_app(table)
        if app.app_id in apps:
            raise ConfigError(table.key("app_id"), f"duplicate app {app.app_id!r}")
        apps[app.app_id] = app

    callers: list[CallerConfig] = []
    for table in root.tables("callers"):
        caller = _parse_caller(table, apps)
        if any(c.name == caller.name for c in callers):
            raise ConfigError(table.key("name"), f"duplicate caller {caller.name!r}")
        if any(c.token_sha256 == caller.token_sha256 for c in callers):
            raise ConfigError(table.key("token_sha256"), "two callers share one credential")
        callers.append(caller)
    root.done()
    return Settings(
        core=core,
        edge=edge,
        redis=redis,
        wechat=wechat,
        apps=apps,
        callers=tuple(callers),
        dev=dev,
        log_level=log_level,
        source=source,
    )


def _parse_app(t: _Table) -> AppConfig:
    app_id = t.get("app_id", str, required=True)
    if not _APP_ID.fullmatch(app_id):
        raise ConfigError(t.key("app_id"), "must be 1-64 characters of [A-Za-z0-9_-]")
    kind = t.choice("kind", ("official_account", "mini_program"))
    encryption = t.choice("encryption", ("plaintext", "compatible", "safe"), "plaintext")
    data_format = t.choice("data_format", ("xml", "json"), "xml")
    token_mode = t.choice("token_mode", ("stable", "classic"), "stable")
    send_rate = _int_range(t, "send_rate_per_second", AppConfig.send_rate_per_second, 1, 100_000)
    secret = t.get("app_secret", str, required=True)
    if not secret:
        raise ConfigError(t.key("app_secret"), "must not be empty")
    token = t.get("token", str, required=True)
    if not _TOKEN.fullmatch(token):
        raise ConfigError(t.key("token"), "must be 3-32 characters of [A-Za-z0-9]")
    keys: dict[str, Secret | None] = {}
    for name in ("encoding_aes_key", "previous_encoding_aes_key"):
        value = t.optional_str(name)
        if value is not None:
            try:
                aes_key_from_encoding_key(value)
            except CryptoError as exc:
                raise ConfigError(t.key(name), exc.detail) from None
        keys[name] = Secret(value) if value else None
    if encryption != "plaintext" and keys["encoding_aes_key"] is None:
        raise ConfigError(t.key("encoding_aes_key"), f"is required for {encryption} mode")
    rules = tuple(_parse_rule(r) for r in t.tables("auto_reply"))
    default = _parse_reply(t.table("default_reply")) if "default_reply" in t.data else None
    welcome = _parse_reply(t.table("subscribe_reply")) if "subscribe_reply" in t.data else None
    t.seen.update({"default_reply", "subscribe_reply"})
    if kind == "mini_program" and (rules or default or welcome):
        # Mini programs have no passive replies (PROTOCOL.md §4.1): reply via customer service.
        raise ConfigError(t.key("auto_reply"), "mini programs have no passive replies")
    if data_format == "json" and (rules or default or welcome):
        # WeChat documents passive replies as XML only; a JSON reply would be dropped.
        raise ConfigError(t.key("auto_reply"), 'passive replies need data_format = "xml"')
    t.done()
    return AppConfig(
        app_id=app_id,
        kind=kind,  # type: ignore[arg-type]
        encryption=encryption,  # type: ignore[arg-type]
        data_format=data_format,  # type: ignore[arg-type]
        app_secret=Secret(secret),
        token=Secret(token),
        encoding_aes_key=keys["encoding_aes_key"],
        previous_encoding_aes_key=keys["previous_encoding_aes_key"],
        rules=rules,
        default_reply=default,
        subscribe_reply=welcome,
        token_mode=token_mode,  # type: ignore[arg-type]
        send_rate_per_second=send_rate,
    )


def _parse_rule(t: _Table) -> ReplyRule:
    match = t.choice("match", ("exact", "contains", "regex"), "exact")
    keyword = t.get("keyword", str, required=True)
    if not keyword:
        raise ConfigError(t.key("keyword"), "must not be empty")
    pattern = None
    if match == "regex":
        try:
            pattern = re.compile(keyword)
        except re.error as exc:
            raise ConfigError(t.key("keyword"), f"invalid regex: {exc}") from None
    reply = _parse_reply(t.table("reply"))
    t.done()
    return ReplyRule(match=match, keyword=keyword, reply=reply, pattern=pattern)  # type: ignore[arg-type]


_REPLY_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # type: (required fields, optional fields)
    "text": (("content",), ()),
    "image": (("media_id",), ()),
    "voice": (("media_id",), ()),
    "video": (("media_id",), ("title", "description")),
    "music": (("thumb_media_id",), ("title", "description", "music_url", "hq_music_url")),
    "news": ((), ()),
    "transfer_customer_service": ((), ("kf_account",)),
}


def _parse_reply(t: _Table) -> ReplySpec:
    kind = t.choice("type", tuple(_REPLY_FIELDS))
    required, optional = _REPLY_FIELDS[kind]
    values: dict[str, Any] = {}
    for name in required:
        values[name] = t.get(name, str, required=True)
        if not values[name]:
            raise ConfigError(t.key(name), "must not be empty")
    for name in optional:
        values[name] = t.get(name, str, "")
    if kind == "news":
        articles = []
        for a in t.tables("articles"):
            articles.append(
                {n: a.get(n, str, "") for n in ("title", "description", "pic_url", "url")}
            )
            a.done()
        if len(articles) != 1:
            # WeChat rejects more than one article in practice (45008, PROTOCOL.md §4.1).
            raise ConfigError(t.key("articles"), "must hold exactly one article")
        values["articles"] = tuple(articles)
    t.done()
    return ReplySpec(type=kind, **values)  # type: ignore[arg-type]


def _parse_caller(t: _Table, apps: Mapping[str, AppConfig]) -> CallerConfig:
    name = t.get("name", str, required=True)
    if not _CALLER.fullmatch(name):
        raise ConfigError(t.key("name"), "must be 1-64 characters of [a-z0-9_.-]")
    digest = t.get("token_sha256", str, required=True).lower()
    if not _SHA256.fullmatch(digest):
        raise ConfigError(t.key("token_sha256"), "must be 64 hex characters (sha256 of the token)")
    if digest == hash_credential(""):
        raise ConfigError(t.key("token_sha256"), "is the hash of an empty credential")
    grants = []
    for g in t.tables("allow"):
        app_ids = g.strings("apps")
        for i, app_id in enumerate(app_ids):
            if app_id != "*" and app_id not in apps:
                raise ConfigError(f"{g.key('apps')}[{i}]", f"unknown app {app_id!r}")
        rpcs = g.strings("rpcs")
        for i, rpc in enumerate(rpcs):
            if not _RPC.fullmatch(rpc):
                raise ConfigError(f"{g.key('rpcs')}[{i}]", "must be *, Service/* or Service/Method")
        g.done()
        grants.append(Grant(apps=frozenset(app_ids), rpcs=frozenset(rpcs)))
    t.done()
    return CallerConfig(name=name, token_sha256=digest, grants=tuple(grants))
