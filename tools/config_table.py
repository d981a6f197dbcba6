"""Render the README's configuration tables from the schema in `wxplatform.config`.

`python tools/config_table.py` rewrites the part of README.md between the
`<!-- config-table -->` markers; `--check` (run by `make check`) fails when it is stale.
Each key's default comes from its Struct field and its meaning from the field's
`Meta(description=...)`, so the README cannot drift from what the code accepts.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import msgspec

from wxplatform.config import ConfigFile, ReplySpec

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- config-table -->", "<!-- /config-table -->"

# Struct types used by several keys: documented once, in a table of their own.
SHARED = {
    ReplySpec: "A reply (`[apps.default_reply]`, `[apps.subscribe_reply]`,"
    " `[apps.auto_reply.reply]`) is a table of"
}


def render() -> str:
    """The Markdown between the markers."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += _rows(ConfigFile, "", recurse=True)
    for struct, title in SHARED.items():
        lines += ["", f"{title}:", "", "| key | default | meaning |", "|---|---|---|"]
        lines += _rows(struct, "", recurse=False)
    return "\n".join(lines)


def _rows(struct: type[msgspec.Struct], header: str, *, recurse: bool) -> Iterator[str]:
    hints = typing.get_type_hints(struct, include_extras=True)
    for info in msgspec.structs.fields(struct):
        kind = hints[info.name]
        plain = _plain(kind)
        element = get_args(plain)[0] if get_origin(plain) is tuple else None
        dotted = f"{header.strip('[]')}.{info.encode_name}" if header else info.encode_name
        if recurse and _is_struct(plain) and plain not in SHARED:
            yield from _rows(plain, f"[{dotted}]", recurse=True)
        elif recurse and element is not None and _is_struct(element) and element not in SHARED:
            yield from _rows(element, f"[[{dotted}]]", recurse=True)
        else:
            key = f"`{header} {info.encode_name}`" if header else f"`{info.encode_name}`"
            if _is_struct(plain) or _is_struct(element):
                key = f"`[{dotted}]`" if element is None else f"`[[{dotted}]]`"
            yield f"| {key} | {_default(info)} | {_description(kind)} |"


def _plain(kind: Any) -> Any:
    if get_origin(kind) is typing.Annotated:
        kind = get_args(kind)[0]
    args = get_args(kind)
    if type(None) in args:
        (kind,) = (a for a in args if a is not type(None))
    return kind


def _is_struct(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


def _description(kind: Any) -> str:
    metas = get_args(kind)[1:] if get_origin(kind) is typing.Annotated else ()
    words = [m.description for m in metas if isinstance(m, msgspec.Meta) and m.description]
    return " ".join(words)


def _default(info: msgspec.structs.FieldInfo) -> str:
    if info.default is msgspec.NODEFAULT:
        return "required"
    if info.default is None:
        return "—"
    if info.default in ((), ""):
        return "none"
    return f"`{info.default}`"


def _splice(text: str, table: str) -> str:
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        sys.exit(f"{README.name} lacks the {START} … {END} markers")
    return f"{head}{START}\n{table}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md is stale")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    wanted = _splice(text, render())
    if args.check:
        if wanted != text:
            print("README.md's config table is stale: run python tools/config_table.py")
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
