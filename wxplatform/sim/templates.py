"""Message templates of the simulated apps and the checks WeChat runs on send `data`.

Tests register templates through the control API: a template message's keys
(`keyword1`, `amount2`…) take any short text; a subscribe template's keys each have
a value type (docs/wechat.md §5.2, §5.4). A send whose data does not fit is refused
with 47003 naming the first bad key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from wxplatform.sim.errors import ApiError
from wxplatform.sim.values import VALUE_TYPES, type_of_key, valid_value

__all__ = [
    "TEMPLATE_VALUE_LIMIT",
    "Template",
    "TemplateBook",
    "TemplateKind",
    "check_data",
]

TemplateKind = Literal["template", "subscribe"]
KINDS: tuple[TemplateKind, ...] = ("template", "subscribe")

# Template message values: any non-empty text up to this many characters.
TEMPLATE_VALUE_LIMIT = 200
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
_COLOR = re.compile(r"#[0-9A-Fa-f]{6}")
# Since the 2023 template-message reform WeChat silently drops `first` and `remark`
# (§5.2), so old clients that still send them are not refused for it.
_DROPPED_TEMPLATE_KEYS = frozenset({"first", "remark"})


@dataclass(frozen=True)
class Template:
    """One registered template: its kind and `{key: value type}`."""

    template_id: str
    kind: TemplateKind
    keys: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        """The template as the control API shows it."""
        return {"template_id": self.template_id, "kind": self.kind, "keys": dict(self.keys)}


def _keys(kind: TemplateKind, keys: Mapping[str, Any] | Sequence[Any]) -> dict[str, str]:
    """Validate keys given as `{key: type}` or as a list of names (types from prefixes)."""
    if isinstance(keys, str):
        raise ValueError("keys must be an object or a list of key names")
    items: list[tuple[Any, Any]] = (
        list(keys.items()) if isinstance(keys, Mapping) else [(k, None) for k in keys]
    )
    if not items:
        raise ValueError("a template needs at least one key")
    out: dict[str, str] = {}
    for key, given in items:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"bad template key {key!r}")
        if given is not None and not isinstance(given, str):
            raise ValueError(f"type of key {key!r} must be a string")
        if kind == "template":
            out[key] = given or "string"
            continue
        value_type = given or type_of_key(key)
        if value_type not in VALUE_TYPES:
            raise ValueError(f"key {key!r} needs a subscribe value type: {', '.join(VALUE_TYPES)}")
        out[key] = value_type
    return out


class TemplateBook:
    """Templates per app."""

    def __init__(self) -> None:
        self._templates: dict[str, dict[str, Template]] = {}

    def add(
        self,
        app_id: str,
        template_id: str,
        kind: str,
        keys: Mapping[str, Any] | Sequence[Any],
    ) -> Template:
        """Register (or replace) a template; `ValueError` says what is wrong."""
        if not template_id:
            raise ValueError("template_id must not be empty")
        if kind not in KINDS:
            raise ValueError("kind must be 'template' or 'subscribe'")
        template = Template(template_id, kind, _keys(kind, keys))
        self._templates.setdefault(app_id, {})[template_id] = template
        return template

    def get(self, app_id: str, template_id: str) -> Template | None:
        """The app's template, if registered."""
        return self._templates.get(app_id, {}).get(template_id)

    def all(self, app_id: str) -> list[Template]:
        """Every template of the app."""
        return list(self._templates.get(app_id, {}).values())


def _invalid(key: str, part: str = "value") -> ApiError:
    return ApiError(47003, f"argument invalid! data.{key}.{part} invalid")


def check_data(template: Template, data: Any) -> None:
    """Refuse `data` that does not fit the template, as WeChat does (47003).

    Every template key needs `{"value": str}` valid for its type; a key the template
    does not have is refused too (`first`/`remark` on template messages excepted).
    """
    if not isinstance(data, Mapping) or not data:
        raise ApiError(47003, "argument invalid! data is empty")
    for key in template.keys:
        if key not in data:
            raise _invalid(key)
    for key, item in data.items():
        if key not in template.keys:
            if template.kind == "template" and key in _DROPPED_TEMPLATE_KEYS:
                continue
            raise _invalid(key)
        if not isinstance(item, Mapping):
            raise _invalid(key)
        value = item.get("value")
        if not isinstance(value, str):
            raise _invalid(key)
        if template.kind == "template":
            if not value or len(value) > TEMPLATE_VALUE_LIMIT:
                raise _invalid(key)
            color = item.get("color")
            if color is not None and not (isinstance(color, str) and _COLOR.fullmatch(color)):
                raise _invalid(key, "color")
        elif not valid_value(template.keys[key], value):
            raise _invalid(key)
