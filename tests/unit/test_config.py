"""Config validation names the offending key and never shows a secret."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.support import AES_KEY, app_table, make_settings
from wxplatform.config import ConfigError, Secret, hash_credential, load_settings, parse_settings
from wxplatform.devconfig import render_dev_config


def base() -> dict[str, Any]:
    return {
        "apps": [app_table("wxapp1")],
        "callers": [
            {
                "name": "svc",
                "token_sha256": hash_credential("t"),
                "allow": [{"apps": ["wxapp1"], "rpcs": ["TokenService/*"]}],
            }
        ],
    }


def with_change(path: str, value: Any) -> dict[str, Any]:
    """A copy of `base()` with one key set (dotted path, list indexes as numbers)."""
    data = copy.deepcopy(base())
    node: Any = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[parts[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("core.listen", "nope", "core.listen"),
        ("core.drain_seconds", -1, "core.drain_seconds"),
        ("edge.budget_seconds", 5, "edge.budget_seconds"),
        ("edge.budget_seconds", 0.25, "edge.budget_seconds"),
        ("edge.processes", 0, "edge.processes"),
        ("edge.processes", 65, "edge.processes"),
        ("edge.max_body_bytes", 10, "edge.max_body_bytes"),
        ("redis.url", "http://x", "redis.url"),
        ("redis.url", "redis://localhost:abc", "redis.url"),
        (
            "callers.0.token_sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "callers[0].token_sha256",
        ),
        ("redis.url", "redis://localhost:70000", "redis.url"),
        ("wechat.api_base", "ftp://x", "wechat.api_base"),
        ("apps.0.kind", "game", "apps[0].kind"),
        ("apps.0.encryption", "rot13", "apps[0].encryption"),
        ("apps.0.app_id", "bad id!", "apps[0].app_id"),
        ("apps.0.token", "x", "apps[0].token"),
        ("apps.0.encoding_aes_key", "short", "apps[0].encoding_aes_key"),
        ("apps.0.app_secret", 42, "apps[0].app_secret"),
        ("apps.0.typo", 1, "apps[0].typo"),
        ("callers.0.token_sha256", "abc", "callers[0].token_sha256"),
        ("callers.0.allow", [{"apps": ["nope"], "rpcs": ["*"]}], "callers[0].allow[0].apps[0]"),
        ("callers.0.allow", [{"apps": ["*"], "rpcs": ["Token"]}], "callers[0].allow[0].rpcs[0]"),
        ("log_level", "LOUD", "log_level"),
        ("core", "fast", "core"),
        ("apps.0.oauth", {"public_base_url": "ftp://x"}, "apps[0].oauth.public_base_url"),
        ("apps.0.oauth", {"public_base_url": "https://e.test"}, "apps[0].oauth.return_urls"),
        (
            "apps.0.oauth",
            {"public_base_url": "https://e.test", "return_urls": ["https://u@shop.test/"]},
            "apps[0].oauth.return_urls[0]",
        ),
        ("wechat.open_base", "open.weixin.qq.com", "wechat.open_base"),
        (
            "apps.0.sessions",
            {"idle_ttl_seconds": 7200, "absolute_ttl_seconds": 3600},
            "apps[0].sessions.idle_ttl_seconds",
        ),
        ("apps", {}, "apps"),
        ("core.idempotency_ttl_seconds", 40 * 86400, "core.idempotency_ttl_seconds"),
        ("edge.spool_max_age_seconds", 86400, "edge.spool_max_age_seconds"),
        ("callers.0.allow", [{"apps": [], "rpcs": ["*"]}], "callers[0].allow[0].apps"),
        (
            "apps.0.auto_reply",
            [{"keyword": "a", "reply": {"type": "text"}}],
            "apps[0].auto_reply[0].reply.content",
        ),
        (
            "apps.0.auto_reply",
            [{"keyword": "(", "match": "regex", "reply": {"type": "text", "content": "x"}}],
            "apps[0].auto_reply[0].keyword",
        ),
        (
            "apps.0.default_reply",
            {"type": "news", "articles": [{"title": "t", "img": "x"}]},
            "apps[0].default_reply.articles[0].img",
        ),
    ],
)
def test_invalid_values_name_the_key(path: str, value: Any, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(with_change(path, value))
    assert caught.value.key == key
    assert key in str(caught.value)


def test_safe_mode_requires_an_aes_key() -> None:
    data = base()
    data["apps"][0]["encryption"] = "safe"
    data["apps"][0].pop("encoding_aes_key", None)
    with pytest.raises(
        ConfigError, match=r"apps\[0\]\.encoding_aes_key: is required for safe mode"
    ):
        parse_settings(data)


def test_a_website_app_logs_in_and_nothing_else() -> None:
    website = {
        "app_id": "wxweb1",
        "kind": "website",
        "app_secret": "s3cret",
        "oauth": {"public_base_url": "https://login.test", "return_urls": ["https://a.test/"]},
    }
    data: dict[str, Any] = {
        "apps": [website],
        "vault": {"keys": [{"id": "k", "key": "A" * 43 + "="}]},
    }
    assert parse_settings(data).apps["wxweb1"].kind == "website"
    with_token = copy.deepcopy(data)
    with_token["apps"][0]["token"] = "abc123"
    with pytest.raises(ConfigError, match=r"apps\[0\]\.token: websites get no callbacks"):
        parse_settings(with_token)
    no_login = copy.deepcopy(data)
    del no_login["apps"][0]["oauth"]
    with pytest.raises(ConfigError, match=r"apps\[0\]\.oauth\.public_base_url: is required"):
        parse_settings(no_login)
    official = copy.deepcopy(data)
    official["apps"][0]["kind"] = "official_account"
    with pytest.raises(ConfigError, match=r"apps\[0\]\.token: is required"):
        parse_settings(official)


def test_mini_programs_need_a_vault_key() -> None:
    data = base()
    data["apps"][0].update(kind="mini_program", auto_reply=[])
    data["apps"][0].pop("default_reply", None)
    data["apps"][0].pop("subscribe_reply", None)
    with pytest.raises(ConfigError, match=r"vault\.keys: is required with a mini program"):
        parse_settings(data)
    data["vault"] = {"keys": [{"id": "k1", "key": "c2hvcnQ="}]}
    with pytest.raises(ConfigError) as short:
        parse_settings(data)
    assert short.value.key == "vault.keys[0].key"
    assert "c2hvcnQ" not in str(short.value)
    key = "dGVzdC12YXVsdC1rZXktb2YtMzItYnl0ZXMtLS0tLS0="
    data["vault"] = {"keys": [{"id": "k1", "key": key}, {"id": "k1", "key": key}]}
    with pytest.raises(ConfigError, match=r"vault\.keys\[1\]\.id: duplicate"):
        parse_settings(data)
    data["vault"]["keys"].pop()
    assert parse_settings(data).vault.keys[0].id == "k1"


def test_mini_programs_take_no_passive_reply_rules() -> None:
    data = with_change("apps.0.kind", "mini_program")
    with pytest.raises(ConfigError, match="no passive replies"):
        parse_settings(data)


def test_passive_reply_rules_need_xml_pushes() -> None:
    """WeChat documents passive replies as XML: rules on a JSON app would never answer."""
    data = with_change("apps.0.data_format", "json")
    with pytest.raises(ConfigError, match=r"apps\[0\]\.auto_reply: passive replies need"):
        parse_settings(data)
    data["apps"][0]["auto_reply"] = []
    data["apps"][0].pop("default_reply", None)
    data["apps"][0].pop("subscribe_reply", None)
    assert parse_settings(data).apps["wxapp1"].data_format == "json"


def test_duplicate_apps_are_rejected() -> None:
    data = base()
    data["apps"].append(app_table("wxapp1"))
    with pytest.raises(ConfigError, match=r"apps\[1\]\.app_id: duplicate"):
        parse_settings(data)


def test_edge_workers_need_a_fixed_port() -> None:
    data = base()
    data["edge"] = {"processes": 2, "listen": "127.0.0.1:0"}
    with pytest.raises(ConfigError, match=r"edge\.processes: needs a fixed port"):
        parse_settings(data)
    data["edge"]["listen"] = "0.0.0.0:8080"
    assert parse_settings(data).edge.processes == 2


def test_defaults() -> None:
    settings = parse_settings(base())
    assert settings.core.listen == "127.0.0.1:50051"
    assert settings.edge.listen == "127.0.0.1:8080"
    assert settings.edge.core_target == "127.0.0.1:50051"
    assert settings.wechat.api_base == "https://api.weixin.qq.com"
    assert settings.redis.url is None
    assert settings.edge.processes == 1
    assert settings.apps["wxapp1"].encryption == "plaintext"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("redis.url", "redis://:hunter2-secret@localhost:99999/0"),
        ("redis.url", "http://hunter2-secret@localhost"),
        ("apps.0.encoding_aes_key", "hunter2-secret"),
        ("apps.0.token", "hunter2-secret!"),
        ("edge.core_credential", ["hunter2-secret"]),
    ],
)
def test_an_invalid_secret_is_named_but_never_shown(path: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(with_change(path, value))
    assert caught.value.key == path.replace(".0.", "[0].")
    assert "hunter2" not in str(caught.value)


def test_the_toml_file_is_decoded_against_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "wx.toml"
    path.write_text('[core]\nlisten = "127.0.0.1:50051"\ndrain_seconds = "soon"\n', "utf-8")
    with pytest.raises(ConfigError, match=r"core\.drain_seconds: must be a positive number"):
        load_settings(path, {})
    path.write_text("[edge]\nbudget_seconds = 2\n", "utf-8")
    assert load_settings(path, {}).edge.budget_seconds == 2.0


def test_secrets_never_appear_in_repr_or_str() -> None:
    data = with_change("apps.0.encryption", "safe")
    data["apps"][0]["encoding_aes_key"] = AES_KEY
    data["redis"] = {"url": "redis://:hunter2@localhost:6379/0"}
    data["edge"] = {"core_credential": "edge-secret-value"}
    settings = parse_settings(data)
    app = settings.apps["wxapp1"]
    shown = repr(settings) + str(settings) + f"{app}"
    for secret in (
        app.app_secret.reveal(),
        app.token.reveal(),
        AES_KEY,
        "hunter2",
        "edge-secret-value",
    ):
        assert secret not in shown
    assert str(Secret("x")) == "Secret('********')"


def test_load_settings_reads_file_or_environment(tmp_path: Path) -> None:
    path = tmp_path / "wx.toml"
    path.write_text(render_dev_config(), encoding="utf-8")
    assert len(load_settings(path, {}).apps) == 3
    assert len(load_settings(None, {"WXP_CONFIG": str(path)}).apps) == 3
    with pytest.raises(ConfigError, match="no config file"):
        load_settings(None, {})
    (tmp_path / "bad.toml").write_text("[core\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(tmp_path / "bad.toml", {})


def test_grants_match_app_and_rpc() -> None:
    settings = make_settings(app_table("wxa"), app_table("wxb"), team_apps=["wxa"])
    team = next(c for c in settings.callers if c.name == "team")
    (grant,) = team.grants
    assert grant.allows("wxa", "TokenService", "GetAccessToken")
    assert not grant.allows("wxb", "TokenService", "GetAccessToken")
    edge = next(c for c in settings.callers if c.name == "edge")
    assert edge.grants[0].allows("wxb", "IngressService", "DeliverMessage")
    assert not edge.grants[0].allows("wxb", "TokenService", "GetAccessToken")
