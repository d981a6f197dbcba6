"""What every process of one run shares: the two apps, the keyword and its reply.

The spec is written once as JSON by the driver and read by each server under test and
by the load generator, so all of them sign, verify and encrypt with the same secrets.
Secrets are random per run; nothing here is a real credential.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wxplatform.config import AppConfig, Settings, hash_credential, parse_settings

__all__ = ["KEYWORD", "MODES", "REPLY", "BenchSpec", "Mode", "new_spec"]

Mode = Literal["plaintext", "safe"]
MODES: tuple[Mode, ...] = ("plaintext", "safe")

KEYWORD = "bench"  # a text push with exactly this content triggers the reply below
REPLY = "bench reply"  # the text reply every server under test answers with


def _encoding_aes_key() -> str:
    """A random EncodingAESKey: 43 characters of [A-Za-z0-9] decoding to 32 bytes."""
    for _ in range(1000):  # about one draw in four has no '+' or '/'
        candidate = base64.b64encode(secrets.token_bytes(32)).decode()[:43]
        if candidate.isalnum():
            return candidate
    raise RuntimeError("could not draw an alphanumeric EncodingAESKey")


def _app_table(app_id: str, mode: Mode) -> dict[str, Any]:
    table: dict[str, Any] = {
        "app_id": app_id,
        "kind": "official_account",
        "encryption": mode,
        "app_secret": "secret" + secrets.token_hex(8),
        "token": "tok" + secrets.token_hex(8),
        "auto_reply": [
            {"match": "exact", "keyword": KEYWORD, "reply": {"type": "text", "content": REPLY}}
        ],
    }
    if mode != "plaintext":
        table["encoding_aes_key"] = _encoding_aes_key()
    return table


@dataclass(frozen=True)
class BenchSpec:
    """The config document (as `parse_settings` takes it) and the edge's core credential."""

    config: dict[str, Any]
    edge_credential: str
    app_ids: dict[str, str]  # mode -> app id

    def app_id(self, mode: Mode) -> str:
        """The app that receives pushes in `mode`."""
        return self.app_ids[mode]

    def settings(self, workdir: Path | None = None) -> Settings:
        """Validated settings; files the edge may write (its spool) go under `workdir`."""
        config = json.loads(json.dumps(self.config))  # a deep copy
        if workdir is not None:
            # Keep the edge's on-disk spool out of the work tree.
            config.setdefault("edge", {})["spool_path"] = str(workdir / "edge-spool.sqlite3")
        return parse_settings(config, source="<bench>")

    def app(self, mode: Mode) -> AppConfig:
        """The validated config of the app for `mode`."""
        return self.settings().apps[self.app_id(mode)]

    def dump(self, path: Path) -> None:
        """Write the spec as JSON (readable only by the owner: it holds secrets)."""
        path.write_text(json.dumps(dataclasses.asdict(self)), encoding="utf-8")
        path.chmod(0o600)

    @classmethod
    def load(cls, path: Path) -> BenchSpec:
        """Read a spec written by `dump`."""
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(data["config"], data["edge_credential"], data["app_ids"])


def new_spec(log_level: str = "INFO") -> BenchSpec:
    """A fresh spec: one plaintext and one safe-mode app, and the edge as core's caller."""
    credential = "bench-edge-" + secrets.token_hex(12)
    app_ids: dict[str, str] = {m: f"wxbench{m[:5]}{secrets.token_hex(4)}" for m in MODES}
    config: dict[str, Any] = {
        "log_level": log_level,
        "core": {"drain_seconds": 1.0},
        "edge": {"core_credential": credential},
        "apps": [_app_table(app_ids[m], m) for m in MODES],
        "callers": [
            {
                "name": "edge",
                "token_sha256": hash_credential(credential),
                "allow": [{"apps": ["*"], "rpcs": ["IngressService/*"]}],
            }
        ],
    }
    spec = BenchSpec(config, credential, app_ids)
    spec.settings()  # fail here, not in a child process, if the config is invalid
    return spec
