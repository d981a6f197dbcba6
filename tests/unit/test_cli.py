"""The command line refuses bad configuration with the key named, before starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from wxplatform.cli import main
from wxplatform.devconfig import render_dev_config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "wx.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_core_needs_a_redis_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, render_dev_config())
    assert main(["--config", config, "core"]) == 2
    assert "redis.url: is required" in capsys.readouterr().err


def test_edge_needs_a_core_credential(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, '[edge]\nlisten = "127.0.0.1:0"\n')
    assert main(["--config", config, "edge"]) == 2
    assert "edge.core_credential: is required" in capsys.readouterr().err


def test_invalid_config_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(
        tmp_path, render_dev_config().replace('encryption = "safe"', 'encryption = "tls"', 1)
    )
    assert main(["--config", config, "core"]) == 2
    err = capsys.readouterr().err
    assert "apps[1].encryption: must be one of plaintext, compatible, safe" in err
    assert "Traceback" not in err


def test_missing_config_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "/nonexistent/wx.toml", "core"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_an_older_dev_config_gets_the_vault_key_it_lacks(tmp_path: Path) -> None:
    from wxplatform.config import load_settings
    from wxplatform.devconfig import write_dev_config

    path = tmp_path / "dev.toml"
    older = render_dev_config()
    older = older[: older.index("[[vault.keys]]")] + older[older.index("[dev]") :]
    path.write_text(older, encoding="utf-8")
    assert not write_dev_config(path)  # kept, not replaced
    settings = load_settings(path, {})
    assert settings.vault.keys[0].id == "dev1"
    assert len(settings.apps) == 3  # the old apps are all there
    text = path.read_text(encoding="utf-8")
    assert older.strip() in text
    assert not write_dev_config(path)
    assert path.read_text(encoding="utf-8") == text  # the second run changes nothing
