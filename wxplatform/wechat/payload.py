"""Safe parsing of push bodies (XML with defusedxml, or JSON) and rendering of reply XML.

Bodies come from the internet, so parsing is strict: UTF-8 only, no DTD or entities,
bounded nesting, and a field that appears twice is rejected (WeChat never repeats one,
and an attacker who can repeat `MsgId` could make two readers disagree). Only the
container elements WeChat documents as repeating (`item`, `List`) may repeat.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

__all__ = ["MalformedPayload", "Payload", "parse_json", "parse_xml", "render_xml"]

# A parsed push: element name -> text, nested Payload, or a list of either.
Payload = dict[str, Any]

REPEATABLE = frozenset({"item", "List"})
_DECLARED_ENCODING = re.compile(
    r"\s*<\?xml\b[^>]*?\bencoding\s*=\s*[\"']([^\"']*)[\"']", re.IGNORECASE
)
DEFAULT_MAX_DEPTH = 8


class MalformedPayload(ValueError):
    """A body that is not a well-formed, safe WeChat payload.

    `kind` is a short stable label (for metrics and logs): `encoding`, `dtd`, `syntax`,
    `depth`, `duplicate`, `shape`.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPayload("encoding", "body is not UTF-8") from exc


def parse_xml(body: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Payload:
    """Parse a `<xml>…</xml>` push into a Payload."""
    text = _decode(body).removeprefix("\ufeff")  # a UTF-8 byte-order mark is harmless
    declared = _DECLARED_ENCODING.match(text)
    if declared and declared.group(1).lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise MalformedPayload("encoding", "only UTF-8 XML is accepted")
    try:
        # Parsing the decoded text, not the bytes, so a declaration can never make the
        # parser read the body in another encoding than the UTF-8 it was checked as.
        root = SafeET.fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise MalformedPayload("dtd", type(exc).__name__) from exc
    except ParseError as exc:
        raise MalformedPayload("syntax", str(exc)) from exc
    if root.tag != "xml":
        raise MalformedPayload("shape", "root element is not <xml>")
    fields = _element_fields(root, depth=1, max_depth=max_depth)
    if not isinstance(fields, dict):
        raise MalformedPayload("shape", "<xml> has no fields")
    return fields


def _element_fields(element: Element, *, depth: int, max_depth: int) -> Payload | str:
    if depth > max_depth:
        raise MalformedPayload("depth", f"nesting deeper than {max_depth}")
    children = list(element)
    if not children:
        return element.text or ""
    fields: Payload = {}
    for child in children:
        value = _element_fields(child, depth=depth + 1, max_depth=max_depth)
        if child.tag not in fields:
            fields[child.tag] = [value] if child.tag in REPEATABLE else value
        elif child.tag in REPEATABLE:
            fields[child.tag].append(value)
        else:
            raise MalformedPayload("duplicate", f"field {child.tag!r} appears twice")
    return fields


def parse_json(body: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Payload:
    """Parse a JSON push (mini programs) into a Payload, rejecting duplicate keys."""
    text = _decode(body)

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise MalformedPayload("duplicate", f"field {key!r} appears twice")
            out[key] = value
        return out

    def no_constants(name: str) -> Any:
        raise MalformedPayload("syntax", f"{name} is not JSON")  # NaN, Infinity

    try:
        value = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except MalformedPayload:
        raise
    except (ValueError, RecursionError) as exc:  # ValueError: also huge integers
        raise MalformedPayload("syntax", "body is not JSON") from exc
    if not isinstance(value, dict):
        raise MalformedPayload("shape", "JSON body is not an object")
    if _depth(value) > max_depth:
        raise MalformedPayload("depth", f"nesting deeper than {max_depth}")
    return value


def _depth(value: Any) -> int:
    """Nesting depth, computed without recursion (json.loads accepts ~1000 levels)."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in node)
    return deepest


def render_xml(fields: Mapping[str, Any]) -> bytes:
    """Render `<xml>` with text in CDATA and ints bare, as WeChat's samples do.

    Nested mappings become child elements; a list repeats its element name (for
    `<item>` lists pass `{"item": [...]}`).
    """
    return ("<xml>" + _render_children(fields) + "</xml>").encode()


def _render_children(fields: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for name, value in fields.items():
        values = value if isinstance(value, list) else [value]
        parts.extend(f"<{name}>{_render_value(v)}</{name}>" for v in values)
    return "".join(parts)


def _render_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return _render_children(value)
    if isinstance(value, bool):
        raise TypeError("booleans have no WeChat XML form")
    if isinstance(value, int):
        return str(value)
    # "]]>" cannot appear inside one CDATA section: split it across two.
    text = str(value).replace("]]>", "]]]]><![CDATA[>")
    return f"<![CDATA[{text}]]>"
