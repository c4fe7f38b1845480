"""Render the configuration reference in README.md from workflow/schemas/config.schema.yaml.

``python -m gigamil.config_doc README.md`` rewrites the part of README.md between the markers
``<!-- config-reference:start -->`` and ``<!-- config-reference:end -->``; a test checks that the
README is up to date, so the reference cannot drift from the schema.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from gigamil.schemas import load_schema

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"


def _type(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(json.dumps(v) for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_type(n) for n in node["oneOf"])
    t = node.get("type", "")
    return " or ".join(t) if isinstance(t, list) else t


def _rows(node: dict[str, Any], prefix: str) -> list[str]:
    rows = []
    for key, sub in node.get("properties", {}).items():
        name = f"{prefix}{key}"
        if sub.get("type") == "object" and "properties" in sub:
            rows.append(f"| `{name}` | section | | {sub['description']} |")
            rows.extend(_rows(sub, f"{name}."))
            continue
        default = json.dumps(sub["default"]) if "default" in sub else "required"
        rows.append(
            f"| `{name}` | {_type(sub)} | `{default}` | {' '.join(sub['description'].split())} |"
        )
        extra = sub.get("additionalProperties")
        if isinstance(extra, dict) and "properties" in extra:
            rows.extend(_rows(extra, f"{name}.<name>."))
    return rows


def render_reference() -> str:
    """The markdown table of every config key: name, type, default, description."""
    schema = load_schema("config")
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    lines += _rows(schema, "")
    return "\n".join(lines)


def update_readme(path: Path) -> bool:
    """Rewrite the reference block of ``path``; returns True when the file changed.

    Raises:
        ValueError: ``path`` lacks a marker, or its end marker comes before its start (the
            block's bounds are unknown: rewriting would delete the rest of the file).
    """
    text = path.read_text()
    head, found, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not (found and end):
        raise ValueError(f"{path}: needs the markers {START!r} and, after it, {END!r}")
    new = f"{head}{START}\n{render_reference()}\n{END}{tail}"
    changed = new != text
    path.write_text(new)
    return changed


if __name__ == "__main__":  # pragma: no cover
    update_readme(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
