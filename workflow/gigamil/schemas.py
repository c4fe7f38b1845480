"""The JSON schemas of ``workflow/schemas/`` (config.yaml, the cohort sheets) and the wording of
their validation errors: each names the key (dotted path; in a sheet, the column), says what is
wrong in words (a pattern's rule instead of its regex, the nearest allowed value, the key's
description where a value fits none of its alternatives). Used by :mod:`gigamil.config`,
:mod:`gigamil.settings` and :mod:`gigamil.sheets`.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# workflow/schemas/ through the package's data/schemas link, or the copies an installed wheel
# holds there (the link's target is outside the package)
SCHEMA_DIR = Path(__file__).resolve().parent / "data" / "schemas"


def load_schema(name: str) -> dict[str, Any]:
    """Load ``workflow/schemas/{name}.schema.yaml``."""
    return yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text(encoding="utf-8"))


SLIDE_ID_PATTERN = load_schema("sheet")["properties"]["slide_id"]["pattern"]


def _pattern(
    validator: Any,
    pattern: str,
    instance: Any,
    schema: Mapping[str, Any],  # noqa: ARG001 - jsonschema's keyword signature
) -> Iterator[jsonschema.ValidationError]:
    """jsonschema's ``pattern`` (``re.search``), except that a pattern ending in ``$`` does not
    take a string ending in a line break: Python's ``$`` matches before a final ``\n``, so
    ``experiment: |`` (YAML's block scalar, "demo\n") passed as a safe name and planned
    results/models/demo\n/...; ``\\Z`` would say it, but JSON Schema's regexes have none."""
    if not validator.is_type(instance, "string"):
        return
    line_break = pattern.endswith("$") and instance.endswith("\n")
    if line_break or re.search(pattern, instance) is None:  # jsonschema's own: re.search
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


#: The validator of gigamil's schemas (Draft 2020-12 with :func:`_pattern`).
SchemaValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _pattern}
)


def _key(path: Iterator[Any] | list[Any]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


# values users write for an allowed one that spelling alone would not suggest ("gpu" is closer to
# "cpu" than to "cuda")
VALUE_ALIASES = {"gpu": "cuda", "nvidia": "cuda"}

CLASS_PATTERN = load_schema("config")["properties"]["classes"]["items"]["pattern"]
EXPERIMENT_PATTERN = load_schema("config")["properties"]["experiment"]["pattern"]
SAFE_NAME = "is not a safe file name (letters, digits, '_', '-', '.'; not only dots; "
# a slide's tissue mask {id}.png must not be another slide's QC image {id}.qc.png
SLIDE_ID_RULE = f"{SAFE_NAME}not ending in .qc; at most 200 characters)"
_PATTERN_RULES = {  # a schema pattern -> what a user reads instead of the regular expression
    CLASS_PATTERN: "has spaces at its start or end, which the sheets' labels are read without: "
    "remove them",
    SLIDE_ID_PATTERN: SLIDE_ID_RULE,
    EXPERIMENT_PATTERN: f"{SAFE_NAME}at most 200 characters)",
}


def pattern_rule(pattern: str, value: object) -> str:
    """What ``value`` breaks of ``pattern``'s rule in words; a slide id ending in ``.qc`` is
    told so first (the only part of the rule that allowed characters can break)."""
    rule = _PATTERN_RULES[pattern]
    if pattern == SLIDE_ID_PATTERN and str(value).lower().endswith(".qc"):
        return f"ends in .qc, the suffix of the tissue masks' QC images: rename it ({rule})"
    return rule


def _error_message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message, with a pattern's rule in words instead of the regex and, for a
    value that fits none of a key's alternatives, the key's description instead of "is not
    valid under any of the given schemas"."""
    if error.validator == "pattern" and error.schema.get("pattern") in _PATTERN_RULES:
        return f"{error.instance!r} {pattern_rule(error.schema['pattern'], error.instance)}"
    if error.validator == "type" and error.instance is None:  # YAML's null, ~ or an empty value
        kinds = error.validator_value
        kind = " or ".join(kinds) if isinstance(kinds, list) else str(kinds)
        article = "an" if kind[:1] in "aeiou" else "a"
        return f"null (an empty value) is not allowed here: give {article} {kind}"
    if (
        error.validator == "type"
        and error.validator_value == "string"
        and (isinstance(error.instance, (bool, int, float)))
    ):  # YAML reads 0, 1.5, yes/no/on/off unquoted as numbers and booleans
        kind = "a boolean" if isinstance(error.instance, bool) else "a number"
        sheets = " as the sheets spell it" if list(error.absolute_path)[:1] == ["classes"] else ""
        return f"{error.instance!r} is {kind} in YAML, not a string: quote it{sheets}, e.g. '0'"
    if error.validator == "minItems" and isinstance(error.instance, list):
        return (
            f"{error.instance!r} has {len(error.instance)} item(s); at least "
            f"{error.validator_value} are needed"
        )
    if error.validator == "enum" and isinstance(error.instance, str):
        names = [_yaml_name(v) for v in error.validator_value]
        alias = VALUE_ALIASES.get(error.instance.lower())
        near = [alias] if alias in names else difflib.get_close_matches(error.instance, names, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        return f"{error.instance!r} is not one of {', '.join(names)}{hint}"
    if error.validator in ("oneOf", "anyOf") and error.schema.get("description"):
        described = " ".join(str(error.schema["description"]).split())
        names = [_yaml_name(v) for alt in error.validator_value for v in alt.get("enum", [])]
        near = difflib.get_close_matches(str(error.instance), names, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        lists = any(alt.get("type") == "array" for alt in error.validator_value)
        if not near and lists and isinstance(error.instance, str):  # one item, not in a list
            hint = f" (a list of one is written [{error.instance}])"
        return f"{error.instance!r} is not allowed here{hint}. {described}"
    if error.validator in _BOUNDS and error.schema.get("description"):  # what the key is
        return f"{error.message} ({_summary(error.schema['description'])})"
    return error.message


# a value of the wrong type or out of range: the message names the key's description too
_BOUNDS = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength")


def _summary(description: str, most: int = 240) -> str:
    """A schema description's whitespace collapsed, cut after the last sentence that ends
    within ``most`` characters (the first sentence whole if that is longer)."""
    text = " ".join(str(description).split())
    if len(text) <= most:
        return text.rstrip(".")
    # sentence ends: ". " but not that of an abbreviation such as "e.g. " or "i.e. "
    ends = [m.start() for m in re.finditer(r"(?<!\be\.g)(?<!\bi\.e)\. ", text)]
    within = [e for e in ends if e < most]
    return text[: within[-1]] if within else text[: ends[0]] if ends else text


def _is_pattern_rule(error: jsonschema.ValidationError) -> bool:
    return error.validator == "pattern" and error.schema.get("pattern") in _PATTERN_RULES


def describe_value_error(error: jsonschema.ValidationError) -> str:
    """The key (dotted path; in a sample sheet the column) and what is wrong with its value:
    ``lr: 'x' is not of type 'number'``, or for a pattern with a rule in words ``slide_id 'a/b'
    is not a safe file name (...)``."""
    sep = " " if _is_pattern_rule(error) else ": "
    return _key(list(error.absolute_path)) + sep + _error_message(error)


def _schema_keys(schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every named property of ``schema`` (nested objects included)."""
    out: list[str] = []
    for name, sub in (schema.get("properties") or {}).items():
        out.append(prefix + name)
        if isinstance(sub, Mapping):
            out += _schema_keys(sub, f"{prefix}{name}.")
    return out


def _yaml_name(value: object) -> str:
    """A schema value as config.yaml spells it: true, false, null; else as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _nested_hint(path: str, value: Any) -> str:
    """How to write the section key ``path`` (``training.epochs``) given at the top level: indented
    under its section in config.yaml, or as a mapping with --config (Snakemake's own parser
    stops at ``--config training.epochs=10`` with a traceback)."""
    *sections, key = path.split(".")
    inner = json.dumps({key: value}, default=str)
    for section in reversed(sections[1:]):
        inner = f'{{"{section}": {inner}}}'
    return (
        f" (in a config file it belongs under {' > '.join(f'{x}:' for x in sections)}; with "
        "--config, write "
        f"the section as a mapping: --config '{sections[0]}={inner}')"
    )


def describe_error(error: jsonschema.ValidationError, root: Mapping[str, Any] | None = None) -> str:
    """Turn a jsonschema error into a short message that names the config key. With ``root``
    (the whole schema), an unknown key that exists in another section is pointed to there
    (``training.stain_jitter``: did you mean training.augment.stain_jitter?)."""
    where = _key(list(error.absolute_path))
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = (
            sorted(set(error.instance) - set(allowed), key=str)
            if isinstance(error.instance, dict)
            else []
        )
        keys = ", ".join(f"{where}.{k}" if where != "<top level>" else k for k in extra)
        close = [m for k in extra for m in difflib.get_close_matches(str(k), allowed, n=1)]
        if not close and root is not None:  # the key of another section?
            paths = _schema_keys(root)
            close = [q for k in extra for q in paths if q.rsplit(".", 1)[-1] == str(k)][:3]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        glued = [str(k) for k in extra if str(k).split(":", 1)[0].strip() in allowed]
        if glued and ":" in glued[0]:  # {epochs:10}: YAML reads one key 'epochs:10'
            name, value = glued[0].split(":", 1)
            hint = f"; YAML needs a space after the colon: {name.strip()}: {value.strip()}"
        if where == "<top level>" and len(extra) == 1 and len(close) == 1 and "." in close[0]:
            hint += _nested_hint(close[0], error.instance[extra[0]])
        return f"unknown key {keys} (allowed here: {', '.join(allowed)}){hint}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if "propertyNames" in error.schema_path:
        name = error.instance
        if isinstance(name, (bool, int, float)):  # YAML reads NO, on, 2024 unquoted so
            kind = "a boolean" if isinstance(name, bool) else "a number"
            return (
                f"{where}: the name {name!r} is {kind} in YAML, not a name: quote it as "
                "written (e.g. 'NO' or '2024')"
            )
        return (
            f"{where}: invalid name {name!r} (use letters, digits, '_' and '-'; at most 100 "
            "characters)"
        )
    return f"{where}: {_error_message(error)}"
