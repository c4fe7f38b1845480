"""Validation of config.yaml.

It is checked against the JSON schema in ``workflow/schemas/`` and then against the rules a schema
cannot express (a train cohort, stratification columns, contradictory strategy settings). Every
problem raises :class:`~gigamil.errors.ConfigError` with one message that names the key and the
file. The cohort sheets are read and checked in :mod:`gigamil.sheets`, the cohorts together in
:mod:`gigamil.cohorts`; schemas are loaded and their errors worded in :mod:`gigamil.schemas`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from gigamil.config_strings import coerce_strings, schema_leaves
from gigamil.errors import ConfigError
from gigamil.schemas import (
    SLIDE_ID_PATTERN,
    SchemaValidator,
    describe_error,
    load_schema,
    pattern_rule,
)
from gigamil.strategy import resolve_strategy

SHEET_COLUMNS = ("slide_id", "patient_id", "label", "path")
OPTIONAL_COLUMNS = ("mpp", "site", "lesion_mask")
ROLE_PREDICT = "predict"  # cohorts only predicted, labels optional, no metrics


def check_slide_id(slide_id: Any) -> str:
    """``slide_id`` as a string when it is a safe file name by the sheet schema's rule (letters,
    digits, ``_ - .``, not only dots); else :class:`ConfigError`. Every writer of per-slide files
    calls it, so no output path can leave its directory (``../x``, ``/abs``, ``..``)."""
    name = str(slide_id)
    if not re.fullmatch(SLIDE_ID_PATTERN, name):
        raise ConfigError(f"slide_id {name!r} {pattern_rule(SLIDE_ID_PATTERN, name)}")
    return name


def _fill_defaults(schema: Mapping[str, Any], instance: dict[str, Any]) -> None:
    """Insert schema defaults for missing keys, recursing into nested objects."""
    props = schema.get("properties", {})
    for key, sub in props.items():
        if key not in instance and "default" in sub:
            instance[key] = deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(sub, instance[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("type") == "object":
        for key, value in instance.items():
            if key not in props and isinstance(value, dict):
                _fill_defaults(extra, value)


def _canonical_numbers(schema: Mapping[str, Any], instance: dict[str, Any]) -> None:
    """Write each whole number in one form per key, in place, so that equal values make equal
    rule params (Snakemake compares params by their ``repr``: ``mask_mpp: 8`` after ``8.0``
    would redo every mask, store and model): an ``integer`` key's whole float becomes an int
    (``epochs: 48.0`` → 48; ``range()`` and tensor sizes need one); a ``number`` key's whole
    number takes the form of the key's default: a float where the default is a whole float
    (``mask_mpp`` 8 → 8.0, default 8.0), else an int (``cv.val_fraction`` 0.0 → 0, default
    0.2); a key of several types (``oneOf``) by the types of its choices
    (``trainable_blocks: 2.0`` → 2, ``threshold: 20.0`` → 20). The shipped config.yaml is
    written in these forms, so its params are unchanged."""
    for parent, key, value, sub in schema_leaves(schema, instance):
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not (isinstance(value, int) or value.is_integer()):
            continue
        types = [sub.get("type")]  # and those of a oneOf/anyOf's choices (trainable_blocks)
        types += [alt.get("type") for alt in sub.get("oneOf", []) + sub.get("anyOf", [])]
        types = [t for ts in types for t in (ts if isinstance(ts, list) else [ts])]
        default = sub.get("default")
        if "integer" in types:
            parent[key] = int(value)
        elif "number" in types:
            whole_float = isinstance(default, float) and default.is_integer()
            parent[key] = float(value) if whole_float else int(value)


def _non_finite(instance: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(dotted key, value)`` of every NaN or infinite number in ``instance`` (YAML's ``.nan``,
    ``.inf``), nested mappings and lists included: the schema's bounds let them through
    (``nan > 0`` is false, so is ``nan <= 0``)."""
    for key, value in instance.items():
        name = f"{prefix}{key}"
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, Mapping):
                yield from _non_finite(v, f"{name}.")
            elif isinstance(v, float) and not math.isfinite(v):
                yield name, v


def _empty_sections_to_defaults(schema: Mapping[str, Any], instance: dict[str, Any]) -> None:
    """An empty section (``training:`` with every key commented out: YAML reads null) becomes
    ``{}``, so its defaults apply, in place; nested sections too."""
    for key, sub in (schema.get("properties") or {}).items():
        if not isinstance(sub, Mapping) or sub.get("type") != "object" or key not in instance:
            continue
        if instance[key] is None:
            instance[key] = {}
        if isinstance(instance[key], dict):
            _empty_sections_to_defaults(sub, instance[key])


def _check_roles(cfg: Mapping[str, Any], source: str) -> None:
    """A train cohort without ``trained_models``; none with it (the models are given)."""
    train = [name for name, c in cfg["cohorts"].items() if c["role"] == "train"]
    if cfg.get("trained_models") and train:
        raise ConfigError(
            f"{source}: cohorts: {', '.join(train)} has role: train, but trained_models gives "
            "the fold models, so nothing is trained; give it role: external (scored by the "
            "models) or predict, or remove trained_models"
        )
    if not cfg.get("trained_models") and not train:
        raise ConfigError(
            f"{source}: cohorts: at least one cohort needs role: train (the workflow trains the "
            "models it predicts with; to predict with model.pt files trained elsewhere, set "
            "trained_models: their folder: README, 'Sharing trained models')"
        )


def _config_error(error: jsonschema.ValidationError, schema: Mapping[str, Any]) -> str:
    """:func:`describe_error` of a configuration's schema error; a configuration without
    ``cohorts`` (typically a --configfile of only the keys to change) says what --configfile
    does."""
    text = describe_error(error, schema)
    if error.validator == "required" and not error.absolute_path and "'cohorts'" in error.message:
        text += (
            ": a configuration names its cohorts, and a --configfile replaces config.yaml "
            "instead of adding to it: start from a copy of config.yaml"
        )
    return text


def check_stratify_by(names: Sequence[str], key: str = "cv.stratify_by") -> None:
    """ConfigError (``{key}: ...``) for a column the folds cannot stratify by: the label (always
    balanced), another column gigamil reads from a sheet, or ``n`` / ``n_slides`` (the fold
    splitter's own names). ``key``: how the user gave them (``--stratify-by`` on the CLI)."""
    for name in names:
        if name == "label":  # the folds always balance it
            raise ConfigError(
                f"{key}: the folds always balance the label; list only other columns (e.g. site)"
            )
        if name in (*SHEET_COLUMNS, "n", "n_slides"):  # n, n_slides: the splitter's own
            own = name in ("n", "n_slides")
            why = " (a name the fold splitter uses itself: rename the column)" if own else ""
            raise ConfigError(f"{key}: cannot stratify by {name!r}{why}")


def validate_config(config: Mapping[str, Any], source: str = "config.yaml") -> dict[str, Any]:
    """Validate ``config`` against the schema and return a copy with every default filled in.

    Raises:
        ConfigError: naming the first offending key, e.g.
            ``config.yaml: unknown key training.epoch (allowed here: ...)``.
    """
    schema = load_schema("config")
    if config is not None and not isinstance(config, Mapping):
        raise ConfigError(
            f"{source}: the configuration must be a mapping of keys (experiment:, cohorts:, "
            f"...), not a {type(config).__name__}"
        )
    cfg = deepcopy(dict(config or {}))
    _empty_sections_to_defaults(schema, cfg)
    coerce_strings(schema, cfg)
    validator = SchemaValidator(schema)
    errors = sorted(  # keys of mixed types (a YAML key 2024 beside names) compared as text
        validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), [str(p) for p in e.path])
    )
    found = [f"{k}: {v} is not a finite number" for k, v in _non_finite(cfg)]  # .nan passes
    if found := found + list(dict.fromkeys(_config_error(e, schema) for e in errors)):
        from gigamil.sheet_csv import raise_problems  # it imports this module

        raise_problems(source, found, "problems in the configuration")  # all in one round
    _fill_defaults(schema, cfg)
    _canonical_numbers(schema, cfg)
    _check_roles(cfg, source)
    try:
        check_stratify_by(cfg["cv"]["stratify_by"])
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        resolve_strategy(cfg["model"], cfg["training"])  # contradictions, before any job runs
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def config_warnings(config: Mapping[str, Any]) -> list[str]:
    """Settings that are valid but probably not what was meant, as sentences for a warning
    (``config``: validated, defaults filled in). The workflow prints them once, in snakemake's
    main process. Today: ``allow_patient_overlap`` on a train cohort (it has no effect there),
    an even ``preprocessing.tissue.median_px`` (the next odd kernel is used), and
    ``training.early_stopping.min_epochs`` at or above ``training.epochs``
    (outside ``strategy: em``, which does not use the epochs): epochs before ``min_epochs`` are
    warm-up (:class:`gigamil.train.early_stopping.EarlyStopping`), so early stopping cannot end
    training early and model.pt is the last epoch's model (with the two equal: the better of
    the last two). With ``trained_models`` (nothing trains) the model and training keys are not
    checked; external cohorts without ``ensemble.enabled`` are (they get no metrics)."""
    training = config["training"]
    epochs, min_epochs = training["epochs"], training["early_stopping"]["min_epochs"]
    out = [
        f"cohorts.{name}.allow_patient_overlap applies to external cohorts only; cohort {name} has "
        "role train (its patients are split by the folds), so it has no effect"
        for name, cohort in config["cohorts"].items()
        if cohort.get("role") == "train" and cohort.get("allow_patient_overlap")
    ]
    if config.get("trained_models"):  # nothing trains: the model and training keys are unused
        out += _trained_models_warnings(config)
    elif training["strategy"] != "em" and min_epochs >= epochs > 0:
        out.append(
            f"training.early_stopping.min_epochs ({min_epochs}) >= training.epochs ({epochs}): "
            "the epochs before min_epochs are warm-up, so early stopping never acts and each "
            "fold keeps its last epoch (with the two equal: the better of the last two); lower "
            "min_epochs to let it choose an epoch"
        )
    out += [] if config.get("trained_models") else _foundation_warnings(config["model"])
    if (k := config["preprocessing"]["tissue"]["median_px"]) % 2 == 0:
        out.append(even_median_message("preprocessing.tissue.median_px", k))
    return out


def _trained_models_warnings(config: Mapping[str, Any]) -> list[str]:
    """With ``trained_models``: external cohorts without ``ensemble.enabled`` get no metrics."""
    external = [n for n, c in config["cohorts"].items() if c.get("role") == "external"]
    if external and not config["ensemble"]["enabled"]:
        return [
            f"ensemble.enabled is false: the external cohort(s) {', '.join(external)} get each "
            "trained_models fold model's predictions and heatmaps but no ensemble and no "
            "metrics; set ensemble.enabled: true to score them"
        ]
    return []


def even_median_message(name: str, k: int) -> str:
    """The warning for an even median kernel ``k`` given as ``name`` (the next odd one is used)."""
    return f"{name} {k} is even; a median blur needs an odd kernel, so {k + 1} is used (write {k + 1} or {k - 1 or 1})"


def _foundation_warnings(model: Mapping[str, Any]) -> list[str]:
    """A pathology foundation model named without ``model.weights``: it is built with random
    weights (no download happens), a ViT that has learnt nothing, which a user naming ``uni``
    almost certainly did not mean."""
    from gigamil.nn.foundation import FOUNDATION_MODELS

    spec = FOUNDATION_MODELS.get(str(model.get("encoder")))
    if spec is None or model.get("weights"):
        return []
    where = f"hf-hub:{spec.hf_repo} once downloaded, or a local file" if spec.hf_repo else "a file"
    return [
        f"model.encoder {model['encoder']} with model.weights null builds the architecture "
        f"({spec.architecture}) with random weights, not the pretrained model: set model.weights "
        f"({where})"
    ]


def check_cmap(cmap: str, key: str = "heatmaps.cmap") -> None:
    """ConfigError unless ``heatmaps.cmap`` names a matplotlib colour map (with the nearest
    name); ``key`` names the setting in the message (``--cmap`` on the command line). Not part
    of :func:`validate_config`, which every job runs: importing matplotlib costs about 0.3-0.5 s;
    the workflow runs this once, in snakemake's main process."""
    import matplotlib

    if cmap not in matplotlib.colormaps:
        near = difflib.get_close_matches(cmap, list(matplotlib.colormaps), n=1)
        raise ConfigError(
            f"{key}: {cmap!r} is not a matplotlib colour map"
            + (f"; did you mean {near[0]}?" if near else " (e.g. jet, viridis, magma)")
        )


_MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *anchor`


def duplicate_key(node: yaml.Node | None, path: tuple[str, ...] = ()) -> str | None:
    """The first key given twice in one mapping of a composed YAML document
    (``yaml.compose``), as a message with its dotted path and both lines, or None. Keys merged
    in with ``<<: *anchor`` may be overridden (YAML merge keys): they do not count."""
    seen_nodes: set[int] = set()

    def walk(node: yaml.Node | None, path: tuple[str, ...]) -> str | None:
        if node is None or id(node) in seen_nodes:  # an alias: its node is checked once
            return None
        seen_nodes.add(id(node))
        children: list[tuple[str, yaml.Node]] = []
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = (key_node.tag, str(key_node.value))
                line = key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode) and key in seen:
                    return (
                        f"key {'.'.join((*path, key[1]))} given twice (lines {seen[key]} and "
                        f"{line}); YAML would silently keep the second"
                    )
                seen[key] = line
                children.append((key[1], value_node))
        elif isinstance(node, yaml.SequenceNode):
            children = [(str(i), item) for i, item in enumerate(node.value)]
        for name, child in children:
            found = walk(child, (*path, name))
            if found:
                return found
        return None

    return walk(node, path)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file (``yaml.safe_load``), rejecting duplicate keys.

    Raises:
        ConfigError: the file is not valid YAML, or a mapping gives a key twice (plain YAML
            loaders keep the last value silently); the message names the file, the key's
            dotted path and both lines.
        OSError: the file cannot be read.
    """
    text = Path(path).read_text()
    try:
        found = duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        if found:
            raise ConfigError(f"{path}: {found}")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def read_config_file(path: str | Path) -> Any:
    """The parsed content of a config file, not yet validated (``{}`` for an empty one).

    Raises:
        ConfigError: the file is not found, or not valid YAML (:func:`read_yaml`).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    return read_yaml(path) or {}


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a config.yaml (duplicate keys are an error, see :func:`read_yaml`)."""
    return validate_config(read_config_file(path), source=str(path))
