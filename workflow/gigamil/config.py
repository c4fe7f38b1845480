"""Validation of config.yaml and of the cohort sheets.

Both are checked against the JSON schemas in ``workflow/schemas/`` and then against the rules a
schema cannot express (duplicate slides, labels outside ``classes``, patients with conflicting
labels, missing files). Every problem raises :class:`~gigamil.errors.ConfigError` with one message
that names the key, the file and the line (a sheet's header is line 1).
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import logging
import math
import re
from collections.abc import Iterator, Mapping
from copy import deepcopy
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

from gigamil.errors import ConfigError
from gigamil.layout import lesion_masks

log = logging.getLogger(__name__)
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
SHEET_COLUMNS = ("slide_id", "patient_id", "label", "path")
OPTIONAL_COLUMNS = ("mpp", "site", "lesion_mask")
ROLE_PREDICT = "predict"  # cohorts only predicted, labels optional, no metrics


def load_schema(name: str) -> dict[str, Any]:
    """Load ``workflow/schemas/{name}.schema.yaml``."""
    with open(SCHEMA_DIR / f"{name}.schema.yaml") as fh:
        return yaml.safe_load(fh)


_SLIDE_ID_PATTERN = load_schema("sheet")["properties"]["slide_id"]["pattern"]


def check_slide_id(slide_id: Any) -> str:
    """``slide_id`` as a string when it is a safe file name by the sheet schema's rule (letters,
    digits, ``_ - .``, not only dots); else :class:`ConfigError`. Every writer of per-slide files
    calls it, so no output path can leave its directory (``../x``, ``/abs``, ``..``)."""
    name = str(slide_id)
    if not re.fullmatch(_SLIDE_ID_PATTERN, name):
        raise ConfigError(
            f"slide_id {name!r} is not a safe file name (letters, digits, '_', '-', '.'; "
            "not only dots)"
        )
    return name


def _key(path: Iterator[Any] | list[Any]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


_PATTERN_RULES = {  # a schema pattern -> what a user reads instead of the regular expression
    _SLIDE_ID_PATTERN: "is not a safe file name (letters, digits, '_', '-', '.'; not only dots)",
}


def _error_message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message, with a pattern's rule in words instead of the regex and, for a
    value that fits none of a key's alternatives, the key's description instead of "is not
    valid under any of the given schemas"."""
    if error.validator == "pattern" and error.schema.get("pattern") in _PATTERN_RULES:
        return f"{error.instance!r} {_PATTERN_RULES[error.schema['pattern']]}"
    if error.validator == "type" and error.instance is None:  # YAML's null, ~ or an empty value
        kinds = error.validator_value
        kind = " or ".join(kinds) if isinstance(kinds, list) else str(kinds)
        article = "an" if kind[:1] in "aeiou" else "a"
        return f"null (an empty value) is not allowed here: give {article} {kind}"
    if error.validator == "minItems" and isinstance(error.instance, list):
        return (
            f"{error.instance!r} has {len(error.instance)} item(s); at least "
            f"{error.validator_value} are needed"
        )
    if error.validator == "enum" and isinstance(error.instance, str):
        names = [str(v) for v in error.validator_value]
        near = difflib.get_close_matches(error.instance, names, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        return f"{error.instance!r} is not one of {', '.join(names)}{hint}"
    if error.validator in ("oneOf", "anyOf") and error.schema.get("description"):
        described = " ".join(str(error.schema["description"]).split())
        names = [str(v) for alt in error.validator_value for v in alt.get("enum", [])]
        near = difflib.get_close_matches(str(error.instance), names, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        return f"{error.instance!r} is not allowed here{hint}. {described}"
    return error.message


def _is_pattern_rule(error: jsonschema.ValidationError) -> bool:
    return error.validator == "pattern" and error.schema.get("pattern") in _PATTERN_RULES


def _schema_keys(schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every named property of ``schema`` (nested objects included)."""
    out: list[str] = []
    for name, sub in (schema.get("properties") or {}).items():
        out.append(prefix + name)
        if isinstance(sub, Mapping):
            out += _schema_keys(sub, f"{prefix}{name}.")
    return out


def describe_error(error: jsonschema.ValidationError, root: Mapping[str, Any] | None = None) -> str:
    """Turn a jsonschema error into a short message that names the config key. With ``root``
    (the whole schema), an unknown key that exists in another section is pointed to there
    (``training.stain_jitter``: did you mean training.augment.stain_jitter?)."""
    where = _key(list(error.absolute_path))
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = (
            sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        )
        keys = ", ".join(f"{where}.{k}" if where != "<top level>" else k for k in extra)
        close = [m for k in extra for m in difflib.get_close_matches(str(k), allowed, n=1)]
        if not close and root is not None:  # the key of another section?
            paths = _schema_keys(root)
            close = [q for k in extra for q in paths if q.rsplit(".", 1)[-1] == str(k)][:3]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"unknown key {keys} (allowed here: {', '.join(allowed)}){hint}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if "propertyNames" in error.schema_path:
        return f"{where}: invalid name {error.instance!r} (use letters, digits, '_' and '-')"
    return f"{where}: {_error_message(error)}"


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


def _coerce_strings(schema: Mapping[str, Any], instance: dict[str, Any]) -> None:
    """Turn string values that the schema rejects but whose YAML reading it accepts ("3" → 3,
    "false" → False, "2" → 2 for ``trainable_blocks``) into that reading, in place.

    ``snakemake --config 'training={"epochs": 3}'`` hands the values inside such a mapping over
    as strings; a user typed a number and should not be told it is not one.
    """
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key, value in list(instance.items()):
        sub = props.get(key, extra if isinstance(extra, dict) else None)
        if not isinstance(sub, dict):
            continue
        if isinstance(value, dict):
            _coerce_strings(sub, value)
        elif isinstance(value, str):
            check = jsonschema.Draft202012Validator(sub)
            if check.is_valid(value):
                continue
            for parsed in _readings(value):
                if check.is_valid(parsed):
                    instance[key] = parsed
                    break


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
    _coerce_strings(schema, cfg)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        raise ConfigError(f"{source}: {describe_error(errors[0], schema)}")
    _fill_defaults(schema, cfg)
    roles = [c["role"] for c in cfg["cohorts"].values()]
    if "train" not in roles:
        raise ConfigError(f"{source}: cohorts: at least one cohort needs role: train")
    for name in cfg["cv"]["stratify_by"]:
        if name in SHEET_COLUMNS and name != "label":
            raise ConfigError(f"{source}: cv.stratify_by: cannot stratify by {name!r}")
    from gigamil.settings import resolve_strategy  # settings imports this module

    try:
        resolve_strategy(cfg["model"], cfg["training"])  # contradictions, before any job runs
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def config_warnings(config: Mapping[str, Any]) -> list[str]:
    """Settings that are valid but probably not what was meant, as sentences for a warning
    (``config``: validated, defaults filled in). The workflow prints them once, in snakemake's
    main process. Today: ``allow_patient_overlap`` on a train cohort (it has no effect there),
    and ``training.early_stopping.min_epochs`` at or above ``training.epochs``
    (outside ``strategy: em``, which does not use the epochs): epochs before ``min_epochs`` are
    warm-up (:class:`gigamil.train.early_stopping.EarlyStopping`), so early stopping cannot end
    training early and model.pt is the last epoch's model (with the two equal: the better of
    the last two)."""
    training = config["training"]
    epochs, min_epochs = training["epochs"], training["early_stopping"]["min_epochs"]
    out = [
        f"cohorts.{name}.allow_patient_overlap applies to external cohorts only; cohort {name} "
        "has role train (its patients are split by the folds), so it has no effect"
        for name, cohort in config["cohorts"].items()
        if cohort.get("role") == "train" and cohort.get("allow_patient_overlap")
    ]
    if training["strategy"] != "em" and min_epochs >= epochs > 0:
        out.append(
            f"training.early_stopping.min_epochs ({min_epochs}) >= training.epochs ({epochs}): "
            "the epochs before min_epochs are warm-up, so early stopping never acts and each "
            "fold keeps its last epoch (with the two equal: the better of the last two); lower "
            "min_epochs to let it choose an epoch"
        )
    return out


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


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a config.yaml (duplicate keys are an error, see :func:`read_yaml`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    return validate_config(read_yaml(path) or {}, source=str(path))


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def load_sheet(  # noqa: PLR0913 - public API (rules, scripts, tests call it by keyword)
    path: str | Path,
    cohort: str,
    classes: list[str],
    cohort_mpp: float | None = None,
    check_files: bool = True,
    base_dir: str | Path = ".",
    labels_required: bool = True,
) -> pd.DataFrame:
    """Read and validate one cohort sheet.

    Args:
        path: the CSV file.
        cohort: cohort name (added as column ``cohort``).
        classes: allowed labels.
        cohort_mpp: the cohort's MPP override, used where a row has no ``mpp``.
        check_files: require every slide ``path`` to exist (False for generated demo slides).
        base_dir: directory relative slide paths are resolved against (the working directory).
        labels_required: False for a ``role: predict`` cohort: the ``label`` column may be
            missing (it is added, empty) and labels may be empty; given ones must still be
            among ``classes``.

    Returns:
        DataFrame with columns cohort, slide_id, patient_id, label, path, mpp (float or NaN) and any
        extra columns of the sheet, in sheet order.
    """
    path = Path(path)
    if not path.is_file():
        where = (
            ""
            if path.is_absolute()
            else f" (looked for {path.resolve()}: relative paths are read from the working "
            "directory, snakemake's --directory, else where it runs)"
        )
        raise ConfigError(f"cohort {cohort!r}: sheet {path} not found{where}")
    df = _read_sheet_csv(path, labels_required)
    df["mpp"] = _sheet_mpp(df, path, cohort_mpp)
    _check_rows_against_schema(df, path, labels_required)
    _check_slides_and_labels(df, path, classes)
    if check_files:
        _check_slide_files(df, path, Path(base_dir))
    df.insert(0, "cohort", cohort)
    return df


def _sheet_line(df: pd.DataFrame, position: int) -> int:
    """The line of the sheet file where the row at 0-based ``position`` starts (the header is
    line 1); every error about a row names it so. Blank lines, which ``pd.read_csv`` skips, are
    counted: :func:`_read_sheet_csv` keeps each row's line in ``df.attrs["sheet_lines"]``
    (without it, e.g. a frame built in code, the row after the header is line 2)."""
    lines = df.attrs.get("sheet_lines")
    return int(lines[position]) if lines is not None else position + 2


def _record_lines(path: Path) -> list[int] | None:
    """The file line each data record of a CSV starts on, skipping blank (or whitespace-only)
    lines as ``pd.read_csv`` does; None when the file cannot be read so."""
    starts: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            previous = 0
            for record in reader:
                if len(record) > 1 or (record and record[0].strip()):
                    starts.append(previous + 1)
                previous = reader.line_num
    except (csv.Error, UnicodeDecodeError):
        return None
    return starts[1:]  # the first record is the header


def _read_sheet_csv(path: Path, labels_required: bool = True) -> pd.DataFrame:
    """The sheet as strings, names and values stripped; it needs SHEET_COLUMNS (``label`` only
    when ``labels_required``; else an empty one is added) and a row. Blank lines and rows whose
    every cell is empty are skipped; ``df.attrs["sheet_lines"]`` keeps each row's file line."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as CSV: {' '.join(str(exc).split())}") from exc
    df.columns = [c.strip() for c in df.columns]
    _check_column_spelling(list(df.columns), path)
    if not labels_required and "label" not in df.columns:
        df.insert(min(2, len(df.columns)), "label", "")
    missing = [c for c in SHEET_COLUMNS if c not in df.columns]
    if missing:
        semicolons = len(df.columns) == 1 and ";" in str(df.columns[0])
        raise ConfigError(
            f"{path}: missing column(s) {', '.join(missing)} "
            f"(a sheet needs {', '.join(SHEET_COLUMNS)}; optional: {', '.join(OPTIONAL_COLUMNS)})"
            + (
                "; its header is separated by ';': save the sheet as comma-separated CSV"
                if semicolons
                else ""
            )
        )
    if df.empty:
        raise ConfigError(f"{path}: the sheet has no rows")
    df = df.apply(lambda col: col.str.strip())
    lines = _record_lines(path)
    if lines is None or len(lines) != len(df):
        lines = [i + 2 for i in range(len(df))]
    filled = df.ne("").any(axis=1).to_numpy()  # rows of empty cells (",,,"): a spreadsheet's
    df = df[filled].reset_index(drop=True)  # leftovers hold no data, like blank lines
    if df.empty:
        raise ConfigError(f"{path}: the sheet has no rows (only empty ones)")
    df.attrs["sheet_lines"] = [line for line, keep in zip(lines, filled, strict=True) if keep]
    return df


def _check_column_spelling(columns: list[str], path: Path) -> None:
    """A column gigamil reads, spelt otherwise: ConfigError when only case, spaces or hyphens
    differ (``MPP``, ``Slide ID``: its values would be silently ignored), a warning for a near
    miss of an optional column (``lesion_masks``, ``mpp_um``): extra columns are kept as data
    and may be the user's own."""
    known = (*SHEET_COLUMNS, *OPTIONAL_COLUMNS)
    for col in columns:
        if col in known:
            continue
        folded = re.sub(r"[\s-]+", "_", col.lower())
        if folded in known and folded not in columns:
            raise ConfigError(
                f"{path}: column {col!r} means {folded!r}; column names are read as spelt: "
                f"rename it {folded}"
            )
        near = difflib.get_close_matches(folded, OPTIONAL_COLUMNS, n=1, cutoff=0.8) or [
            c for c in OPTIONAL_COLUMNS if folded.startswith(f"{c}_")
        ]
        if near and near[0] not in columns:
            log.warning(
                "%s: column %r is not read by gigamil (did you mean %s?); it is kept as data",
                path,
                col,
                near[0],
            )


def _sheet_mpp(df: pd.DataFrame, path: Path, cohort_mpp: float | None) -> pd.Series:
    """The ``mpp`` column as floats (NaN where empty), the cohort's MPP filling the gaps."""
    if "mpp" in df.columns:
        mpp = pd.to_numeric(df["mpp"].replace("", None), errors="coerce")
        bad = df["mpp"].ne("") & mpp.isna()
        if bad.any():
            row = int(bad.idxmax())
            sid = f" (slide_id {df.at[row, 'slide_id']!r})" if "slide_id" in df.columns else ""
            raise ConfigError(
                f"{path}: line {_sheet_line(df, row)}{sid}: mpp {df.at[row, 'mpp']!r} "
                "is not a number (µm/px, e.g. 0.25; leave it empty to use the slide's own)"
            )
        mpp = mpp.astype(float)
    else:
        mpp = pd.Series(float("nan"), index=df.index)
    if cohort_mpp is not None:
        mpp = mpp.fillna(float(cohort_mpp))
    return mpp


def _check_rows_against_schema(df: pd.DataFrame, path: Path, labels_required: bool = True) -> None:
    schema = load_schema("sheet")
    optional = OPTIONAL_COLUMNS
    if not labels_required:  # a predict cohort: an empty label is no label
        schema["required"] = [c for c in schema["required"] if c != "label"]
        optional = (*OPTIONAL_COLUMNS, "label")
    validator = jsonschema.Draft202012Validator(schema)
    for i, record in enumerate(df.to_dict(orient="records")):
        row = {k: _clean(v) for k, v in record.items() if not (k in optional and v in ("", None))}
        row = {k: v for k, v in row.items() if v is not None or k in OPTIONAL_COLUMNS}
        err = next(iter(sorted(validator.iter_errors(row), key=lambda e: e.path)), None)
        if err is not None:
            col = _key(list(err.absolute_path))
            raise ConfigError(
                f"{path}: line {_sheet_line(df, i)} (slide_id {record['slide_id']!r}): {col}"
                + (" " if _is_pattern_rule(err) else ": ")
                + _error_message(err)
            )


def _near_label(value: str, classes: list[str]) -> str | None:
    """``'Lesion' -> 'lesion'`` for a label that differs from a class only in case or
    surrounding spaces, else the class :func:`difflib.get_close_matches` finds, as ``'x' -> 'y'``."""
    folded = {c.strip().casefold(): c for c in classes}
    match = folded.get(str(value).strip().casefold())
    if match is None:
        near = difflib.get_close_matches(str(value), classes, n=1, cutoff=0.75)
        match = near[0] if near else None
    return None if match is None else f"{value!r} -> {match!r}"


def _other_suffix(full: Path) -> Path | None:
    """A file beside the missing ``full`` with its name but another suffix (``S1.tif`` for
    ``S1.tiff``, ``S1.SVS`` for ``S1.svs``), if there is exactly one."""
    try:
        same = [q for q in full.parent.glob(f"{full.stem}.*") if q.is_file() and q != full]
    except OSError:
        return None
    if len(same) != 1:
        return None
    return same[0]


def _check_slides_and_labels(df: pd.DataFrame, path: Path, classes: list[str]) -> None:
    """Unique slide ids, labels among ``classes``, one label per patient."""
    dup = df["slide_id"][df["slide_id"].duplicated()]
    if not dup.empty:
        lines = [str(_sheet_line(df, i)) for i in df.index[df["slide_id"] == dup.iloc[0]]]
        raise ConfigError(f"{path}: duplicate slide_id {dup.iloc[0]!r} (lines {', '.join(lines)})")

    bad_label = ~df["label"].isin(classes) & df["label"].ne("")  # "" only in predict cohorts
    if bad_label.any():
        bad = [
            f"line {_sheet_line(df, i)} (slide_id {df.at[i, 'slide_id']!r}): "
            f"label {df.at[i, 'label']!r}"
            for i, is_bad in enumerate(bad_label)
            if is_bad
        ]
        hints = sorted({h for v in df.loc[bad_label, "label"] if (h := _near_label(v, classes))})
        raise ConfigError(
            f"{path}: {bad[0] if len(bad) == 1 else f'{len(bad)} labels'} "
            f"{'is' if len(bad) == 1 else 'are'} not one of the classes {classes} of the "
            "configuration (its `classes:` list; without one, the demo's [normal, lesion])"
            + (f"; did you mean {', '.join(hints)}?" if hints else "")
            + ("".join(f"\n  {line}" for line in listed(bad)) if len(bad) > 1 else "")
        )

    labels_per_patient = df[df["label"].ne("")].groupby("patient_id")["label"].unique()
    conflicting = labels_per_patient[labels_per_patient.map(len) > 1]
    if not conflicting.empty:
        pid = conflicting.index[0]
        raise ConfigError(
            f"{path}: patient {pid!r} has conflicting labels {sorted(conflicting.iloc[0])}; "
            "all slides of a patient must share one label"
        )


def sheet_slide_path(path: str, base: str | Path) -> Path:
    """A sheet's slide ``path``, relative ones against ``base`` (the working directory)."""
    return Path(path) if Path(path).is_absolute() else Path(base) / path


MAX_LISTED = 10  # files or slides named in one error message; the rest are counted


def listed(lines: list[str], most: int = MAX_LISTED) -> list[str]:
    """The first ``most`` of ``lines``, plus a line counting the rest when there are more."""
    more = len(lines) - most
    return lines[:most] + ([f"  ... and {more} more"] if more > 0 else [])


def _check_slide_files(df: pd.DataFrame, path: Path, base: Path) -> None:
    """Every slide file (``path``) and lesion mask (the ``lesion_mask`` cells the workflow reads,
    :func:`gigamil.layout.lesion_masks`) exists; else one :class:`ConfigError` listing each
    missing file (up to :data:`MAX_LISTED`) with its line in the sheet and, for a relative path,
    where it was looked for."""
    masks = lesion_masks({}, df)
    ids = df["slide_id"].tolist()
    files = [(i, s, "slide file", p) for i, (s, p) in enumerate(zip(ids, df["path"], strict=True))]
    files += [(i, s, "lesion mask", masks[s]) for i, s in enumerate(ids) if s in masks]
    missing: list[str] = []
    for i, slide_id, what, p in files:
        full = sheet_slide_path(p, base)
        if not full.exists():
            where = "" if Path(p).is_absolute() else f" (looked for {full.resolve()})"
            other = _other_suffix(full)
            where += f"; did you mean {other.name}?" if other is not None else ""
            missing.append(
                f"  line {_sheet_line(df, i)} (slide_id {slide_id!r}): {what} {p} not found{where}"
            )
    if missing:
        raise ConfigError(
            f"{path}: {len(missing)} file(s) not found (relative paths are read from the "
            "working directory: snakemake's --directory, else where it runs):\n"
            + "\n".join(listed(missing))
        )


def load_cohorts(
    config: Mapping[str, Any], base_dir: str | Path = ".", check_content: bool = True
) -> dict[str, pd.DataFrame]:
    """Load every cohort sheet of a validated config, keyed by cohort name, and run
    :func:`check_leakage` (``check_content`` False skips its same-content comparison, which reads
    2 MiB of every slide: the workflow's job processes leave it to the main process)."""
    sheets: dict[str, pd.DataFrame] = {}
    for name, cohort in config["cohorts"].items():
        sheets[name] = load_sheet(
            Path(base_dir) / cohort["sheet"]
            if not Path(cohort["sheet"]).is_absolute()
            else cohort["sheet"],
            cohort=name,
            classes=list(config["classes"]),
            cohort_mpp=cohort.get("mpp"),
            check_files=not cohort.get("demo", False),
            base_dir=base_dir,
            labels_required=cohort.get("role", "train") != ROLE_PREDICT,
        )
    check_leakage(config, sheets, base_dir, check_content=check_content)
    check_classes_trained(config, sheets)
    return sheets


def check_classes_trained(config: Mapping[str, Any], sheets: Mapping[str, pd.DataFrame]) -> None:
    """ConfigError if a class of ``classes`` has no slide in the train cohorts: the models would
    get an output for a class they never see (and, with three outputs instead of two, no logit
    calibration). Without train cohorts (only predicting) there is nothing to check."""
    train = [n for n in sheets if config["cohorts"][n].get("role", "train") == "train"]
    if not train:
        return
    seen = {str(v) for n in train for v in sheets[n]["label"]}
    absent = [str(c) for c in config["classes"] if str(c) not in seen]
    if absent:
        raise ConfigError(
            f"classes: {', '.join(map(repr, absent))} has no slide in the train cohort(s) "
            f"{', '.join(train)} (their labels: {', '.join(sorted(seen))}); remove it from "
            "classes or add slides with that label"
        )


def _first(ids: pd.Series | set[str], n: int = 3) -> str:
    return ", ".join(sorted(map(str, ids))[:n])


FINGERPRINT_BYTES = 1 << 20


def slide_fingerprint(path: Path) -> tuple[int, str] | None:
    """``(size in bytes, sha256 of the first and last MiB)`` of a file; None if it is missing
    (e.g. generated later, like the demo cohort) or empty.

    Two slide files with the same fingerprint are taken to be copies of one slide. Hashing whole
    gigapixel files (GBs each) at every workflow start would take minutes; a copy, a hard link or
    a re-download has the same size and the same head and tail (where TIFF headers and tile
    offsets live), while two different scans practically never do.
    """
    try:
        size = path.stat().st_size
        if size == 0:  # not a slide (the reader says so); nothing to compare
            return None
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            digest.update(fh.read(FINGERPRINT_BYTES))
            if size > FINGERPRINT_BYTES:
                fh.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
                digest.update(fh.read(FINGERPRINT_BYTES))
    except FileNotFoundError:  # generated later (demo cohorts); checked when it exists
        return None
    return size, digest.hexdigest()


def _file_size(path: str) -> int | None:
    try:
        return Path(path).stat().st_size or None  # empty: not a slide (the reader says so)
    except OSError:  # generated later (demo cohorts); checked when it exists
        return None


def _check_same_content(allr: pd.DataFrame) -> None:
    """ConfigError if two rows (of one cohort or of two) hold files with the same
    :func:`slide_fingerprint`. Only files whose byte size another file shares are read: files
    of different sizes differ, so a cohort of distinct scans costs one ``stat`` per slide."""
    sizes = pd.Series([_file_size(p) for p in allr["_path"]], index=allr.index, dtype=object)
    same_size = sizes.notna() & sizes.duplicated(keep=False)
    candidates = allr[same_size]
    prints = pd.Series(
        [slide_fingerprint(Path(p)) for p in candidates["_path"]], index=candidates.index
    )
    known = prints.notna()
    for _, group in candidates[known].groupby(prints[known].astype(str)):
        if len(group) < 2:
            continue
        pairs = [
            f"{c}/{s} ({Path(p).name})"
            for c, s, p in group[["_cohort", "slide_id", "_path"]].itertuples(index=False)
        ]
        where = (
            "in different cohorts: copies of one slide; a slide may belong to one cohort only"
            if group["_cohort"].nunique() > 1
            else "in one cohort: copies of one slide, which would be trained on and tested as two; "
            "list each slide once"
        )
        raise ConfigError(
            f"slides {', '.join(pairs[:3])} have the same content (size and first/last MiB) {where}"
        )


def train_patient_overlap(
    config: Mapping[str, Any], sheets: Mapping[str, pd.DataFrame], cohort: str
) -> list[str]:
    """Sorted patient ids of ``cohort`` that are also in a train cohort (empty for a train
    cohort itself). :func:`check_leakage` lets such patients into an external cohort only with
    ``allow_patient_overlap``; the ensemble's summary records them."""
    if config["cohorts"][cohort].get("role", "train") == "train":
        return []
    train = {
        str(p)
        for name, df in sheets.items()
        if config["cohorts"][name].get("role", "train") == "train"
        for p in df["patient_id"]
    }
    return sorted(train & set(map(str, sheets[cohort]["patient_id"])))


def check_leakage(
    config: Mapping[str, Any],
    sheets: Mapping[str, pd.DataFrame],
    base_dir: str | Path = ".",
    check_content: bool = True,
) -> None:
    """Identity and leakage across cohorts, before any job runs; ConfigError naming the ids:

    - a slide_id in two cohorts (per-slide results are keyed by slide_id, so ids must be unique
      across cohorts), or two slide_ids that differ only in case (one file on macOS);
    - the same slide file in two rows, of two cohorts or of one: the same resolved path, or the
      same content (same :func:`slide_fingerprint`: a copy of a slide under another name or
      directory; skipped with ``check_content`` False);
    - a patient with different labels in different cohorts (empty labels of a predict cohort
      are no labels);
    - a patient of a train cohort in an external cohort, unless that cohort sets
      ``allow_patient_overlap: true`` (then a warning is logged). In a ``predict`` cohort such a
      patient is only a warning: no metrics are computed there, but the fold models have seen
      the patient's other slides.
    """
    rows = []
    for name, df in sheets.items():
        paths = [str(sheet_slide_path(p, base_dir).resolve()) for p in df["path"].astype(str)]
        rows.append(df.assign(_cohort=name, _path=paths))
    if not rows:
        return
    allr = pd.concat(rows, ignore_index=True)
    for col, what in (("slide_id", "slide_id"), ("_path", "slide file")):
        per = allr.groupby(col)["_cohort"].nunique()
        dup = per[per > 1].index
        if len(dup):
            where = sorted(allr.loc[allr[col] == dup[0], "_cohort"].unique())
            raise ConfigError(
                f"{what} {dup[0]!r} is in cohorts {', '.join(where)} ({len(dup)} such: "
                f"{_first(dup)}); a slide may belong to one cohort only"
            )
    ids = allr["slide_id"].astype(str)
    spellings = ids.groupby(ids.str.casefold()).unique()
    clash = spellings[spellings.map(len) > 1]
    if len(clash):
        names = sorted(clash.iloc[0])
        where = sorted(allr.loc[ids.isin(names), "_cohort"].unique())
        raise ConfigError(
            f"slide_ids {', '.join(map(repr, names))} (cohort {', '.join(where)}) differ only in "
            f"case ({len(clash)} such): on a case-insensitive file system (macOS, Windows) their "
            "result files, e.g. results/patches/<cohort>/<slide_id>.zarr, would be one file; "
            "rename one"
        )
    twice = allr[allr["_path"].duplicated(keep=False)]
    if not twice.empty:  # within one cohort (across cohorts: the check above)
        first = twice[twice["_path"] == twice["_path"].iloc[0]]
        raise ConfigError(
            f"cohort {first['_cohort'].iloc[0]}: slide file {first['path'].iloc[0]!r} is listed "
            f"{len(first)} times (slide_ids {', '.join(map(str, first['slide_id']))}); one slide "
            "may have one row only (a slide in two folds would be trained on and tested)"
        )
    if check_content:
        _check_same_content(allr)
    labels = allr[allr["label"].astype(str).ne("")].groupby("patient_id")["label"].nunique()
    mixed = labels[labels > 1].index
    if len(mixed):
        found = sorted(allr.loc[allr["patient_id"] == mixed[0], "label"].astype(str).unique())
        raise ConfigError(
            f"patient {mixed[0]!r} has labels {found} in different cohorts ({len(mixed)} such: "
            f"{_first(mixed)}); a patient has one label"
        )
    roles = {name: config["cohorts"][name].get("role", "train") for name in sheets}
    for name in sheets:
        shared = train_patient_overlap(config, sheets, name)  # empty for a train cohort
        if not shared:
            continue
        if roles[name] == ROLE_PREDICT:
            log.warning(
                "cohort %s: %d patient(s) also in a train cohort (%s): the fold models have seen "
                "their other slides (a predict cohort gets no metrics)",
                name,
                len(shared),
                _first(shared),
            )
            continue
        msg = (
            f"cohort {name}: {len(shared)} patient(s) also in a train cohort ({_first(shared)}): "
            "the fold models have seen them, so its external metrics would be optimistic"
        )
        if config["cohorts"][name].get("allow_patient_overlap", False):
            log.warning("%s (allowed by cohorts.%s.allow_patient_overlap)", msg, name)
        else:
            raise ConfigError(
                f"{msg}; remove them, or set cohorts.{name}.allow_patient_overlap: true"
            )
