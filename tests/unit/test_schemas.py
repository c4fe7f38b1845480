"""gigamil.schemas: the wording of a schema error, from small schemas of its own (the config's
cases: test_config.py)."""

from __future__ import annotations

import jsonschema
import pytest

from gigamil.schemas import (
    SLIDE_ID_PATTERN,
    _summary,
    _yaml_name,
    describe_error,
    describe_value_error,
)


def _error(schema: dict, instance: object) -> jsonschema.ValidationError:
    """The one error of ``instance`` under ``schema``."""
    (error,) = jsonschema.Draft202012Validator(schema).iter_errors(instance)
    return error


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("integer", "give an integer"),
        ("object", "give an object"),
        ("string", "give a string"),
        (["string", "boolean"], "give a string or boolean"),
    ],
)
def test_a_null_value_names_the_kinds_it_should_be(kind, message):
    error = _error({"properties": {"k": {"type": kind}}}, {"k": None})
    assert describe_error(error) == f"k: null (an empty value) is not allowed here: {message}"


def test_a_decimal_number_for_a_string_is_told_to_be_quoted():
    error = _error({"properties": {"k": {"type": "string"}}}, {"k": 1.5})
    assert describe_error(error).startswith("k: 1.5 is a number in YAML, not a string: quote")


@pytest.mark.parametrize(
    ("allowed", "typed", "hint"),
    [
        (["auto", "cpu", "cuda"], "GPU", "; did you mean cuda?"),  # an alias, in any case
        (["cpu", "mps"], "gpu", "; did you mean cpu?"),  # the alias is not allowed: spelling
    ],
)
def test_an_enum_value_suggests_an_allowed_one(allowed, typed, hint):
    error = _error({"properties": {"device": {"enum": allowed}}}, {"device": typed})
    assert describe_error(error).endswith(hint)


def test_a_near_miss_of_a_one_of_value_is_not_taken_for_a_list_of_one():
    schema = {
        "properties": {
            "slides": {
                "description": "`all`, `none`, or a list of slide ids.",
                "oneOf": [{"enum": ["all", "none"]}, {"type": "array"}],
            }
        }
    }
    message = describe_error(_error(schema, {"slides": "nnoe"}))
    assert message == "slides: 'nnoe' is not allowed here (did you mean none?). " + (
        "`all`, `none`, or a list of slide ids."
    )


def test_a_pattern_rule_reads_as_a_sentence_after_the_key():
    error = _error({"properties": {"slide_id": {"pattern": SLIDE_ID_PATTERN}}}, {"slide_id": ".."})
    assert describe_value_error(error).startswith("slide_id '..' is not a safe file name")


def test_an_unknown_key_of_another_section_is_pointed_to_there():
    root = {
        "properties": {
            "a": {"properties": {"lr": {}}},
            "b": {"properties": {"lr": {}}},
            "c": {"properties": {"lr": {}}},
            "d": {"properties": {"lr": {}}},
            "top": {"properties": {"x": {}}, "additionalProperties": False},
        }
    }
    message = describe_error(_error(root["properties"]["top"], {"x": 1, "lr": 2}), root)
    assert message == "unknown key lr (allowed here: x); did you mean a.lr, b.lr, c.lr?"


@pytest.mark.parametrize(
    ("value", "name"), [(True, "true"), (False, "false"), (None, "null"), (0.5, "0.5")]
)
def test_schema_values_are_named_as_config_yaml_spells_them(value, name):
    assert _yaml_name(value) == name


def test_a_description_is_cut_after_its_last_sentence_that_fits():
    first, second, third = "A" * 50 + ".", "B" * 50 + ".", "C" * 200 + "."
    assert _summary(f"{first} {second} {third}", most=240) == f"{first} {second}"[:-1]
    # exactly `most` characters: kept whole
    text = "D" * 239 + "."
    assert _summary(text, most=240) == text[:-1]


def test_an_empty_string_names_what_the_key_is():
    schema = {"properties": {"k": {"type": "string", "minLength": 1, "description": "Patient id."}}}
    assert describe_error(_error(schema, {"k": ""})).endswith(" (Patient id)")
