"""Values as ``snakemake --config`` hands them over: strings, read as config.yaml's YAML would
have read them (:func:`coerce_strings`), before :mod:`gigamil.config` validates them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from gigamil.schemas import SchemaValidator

#: Strings that mean null for a key that may be null (YAML's spellings).
NULL_WORDS = ("null", "Null", "NULL", "~")


def schema_leaves(
    schema: Mapping[str, Any], instance: dict[str, Any]
) -> Iterator[tuple[dict[str, Any], str, Any, dict[str, Any]]]:
    """Every value of ``instance`` that is not a mapping, with its schema node (the key's
    ``properties`` entry, else ``additionalProperties``; keys the schema does not describe are
    skipped), recursing into nested mappings: ``(the mapping holding it, key, value, node)``,
    so the caller may replace the value in place."""
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key, value in list(instance.items()):
        sub = props.get(key, extra if isinstance(extra, dict) else None)
        if not isinstance(sub, dict):
            continue
        if isinstance(value, dict):
            yield from schema_leaves(sub, value)
        else:
            yield instance, key, value, sub


def coerce_strings(schema: Mapping[str, Any], instance: dict[str, Any]) -> None:
    """Turn string values that the schema rejects but whose YAML reading it accepts ("3" → 3,
    "false" → False, "2" → 2 for ``trainable_blocks``) into that reading, in place; a reading
    of the schema's type that is out of range ("-3" for a minimum of 1) too, so that the error
    names the range, not the type.

    ``snakemake --config 'training={"epochs": 3}'`` hands the values inside such a mapping over
    as strings; a user typed a number and should not be told it is not one. A key that may be
    null takes ``null`` or ``~`` as null (``--config trained_models=null`` arrived as the string
    'null', a valid path to the schema, and was looked for as a folder).
    """
    for parent, key, value, sub in schema_leaves(schema, instance):
        if not isinstance(value, str):
            continue
        if value in NULL_WORDS and _takes_null(sub):  # 'null' is a valid string there too
            parent[key] = None
            continue
        check = SchemaValidator(sub)
        if check.is_valid(value):
            continue
        readings = _readings(value)
        # a valid reading, else one of the right type ("-3" → -3: then the error says
        # "less than the minimum", as for the same value in config.yaml)
        fits = [r for r in readings if check.is_valid(r)] or [
            r for r in readings if not any(e.validator == "type" for e in check.iter_errors(r))
        ]
        if fits:
            parent[key] = fits[0]


def _readings(value: str) -> list[Any]:
    """The non-string values a string on a command line may mean: its YAML reading (3, 0.5,
    false, null), else a number Python reads (YAML 1.1 keeps "1e-3" a string)."""
    out: list[Any] = []
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    if not isinstance(parsed, (dict, list, str)):
        out.append(parsed)
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            out.append(kind(value))
    return out


def _takes_null(node: Mapping[str, Any]) -> bool:
    """Whether a schema node allows null (``type: [string, "null"]``, or a ``oneOf`` /
    ``anyOf`` choice of type null)."""
    kinds = node.get("type")
    if kinds == "null" or (isinstance(kinds, list) and "null" in kinds):
        return True
    choices = [*node.get("oneOf", []), *node.get("anyOf", [])]
    return any(isinstance(c, Mapping) and _takes_null(c) for c in choices)
