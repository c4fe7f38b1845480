"""``gigamil model-info``: what a fold's model.pt (or a folder of fold models) is (classes, input
patches, encoder, what it was trained on, its file's sha256), the config.yaml keys a project
needs to predict with it, and, with ``--config``, whether that config can, as the workflow's
``trained_models`` checks say (:mod:`gigamil.train.model_info`,
:mod:`gigamil.train.trained_models`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

NAME = "model-info"
HELP = "what a model.pt (or a folder of fold models) is, and the config keys to predict with it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a fold's model.pt (e.g. results/models/demo/fold0/model.pt), or a folder of "
        "fold<k>/model.pt files (what trained_models names)",
    )
    parser.add_argument(
        "--config",
        metavar="CONFIG.yaml",
        help="check that this config can predict with the model(s), as the workflow does with "
        "trained_models before any job (classes, patches, feature cache, cv.folds, and its "
        "cohorts' sheets against the patients the models trained on): errors name the setting "
        "to use, warnings are printed",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the header(s) (everything but the weights), the config keys and the "
        "check's result as JSON",
    )


def _print_keys(fragment: dict) -> None:
    import yaml

    print(
        "\nconfig.yaml keys of a project predicting with it: replace these keys of its config "
        "(with trained_models: the folder holding fold<k>/model.pt; README, 'Sharing trained "
        "models'):"
    )
    classes = {"classes": fragment["classes"]}  # a list in one line, sections as blocks
    print(yaml.safe_dump(classes, default_flow_style=None, allow_unicode=True).rstrip())
    rest = {k: v for k, v in fragment.items() if k != "classes"}
    print(yaml.safe_dump(rest, sort_keys=False, allow_unicode=True).rstrip())


def _cohort_patients(config: dict) -> dict[str, list[str]]:
    """Each cohort's patient ids, from its sheet as the config names it (relative to the
    current directory, as in a run; no slide file read, labels not checked)."""
    from gigamil.sheet_csv import read_sheet_csv

    return {
        name: read_sheet_csv(Path(cohort["sheet"]), labels_required=False)["patient_id"].tolist()
        for name, cohort in config["cohorts"].items()
    }


def _check(models: dict, config_path: str) -> list[str]:
    """The workflow's trained_models checks of ``models`` against the config at
    ``config_path`` (GigamilError naming the setting to use): its warnings."""
    from gigamil.config import load_config
    from gigamil.data.feature_spec import config_encoder_id
    from gigamil.train.trained_models import (
        check_patient_overlap,
        check_with_config,
        training_patients,
    )

    config = load_config(config_path)
    warnings = check_with_config(models, config, config_encoder_id(config))
    trained, unrecorded = training_patients(models)
    return warnings + check_patient_overlap(
        config["cohorts"], _cohort_patients(config), trained, unrecorded
    )


def _report(path: Path, models: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Headers, file digests, folder warnings, the config keys and the --config check."""
    from gigamil.train.model_info import (
        config_fragment,
        file_sha256,
        folder_warnings,
        model_header_of,
    )

    headers = {fold: model_header_of(p) for fold, p in models.items()}
    digests = {fold: file_sha256(p) for fold, p in models.items()}
    n_folds = max(models) + 1 if path.is_dir() else None
    fragments = [config_fragment(h, n_folds) for h in headers.values()]
    return {
        "headers": headers,
        "digests": digests,
        "warnings": folder_warnings(models, digests) if path.is_dir() else [],
        "config": fragments[0],
        "differ": any(f != fragments[0] for f in fragments),
        "check": _check(models, args.config) if args.config else None,
    }


def _print_json(path: Path, report: dict[str, Any], config: str | None) -> None:
    import json

    from gigamil.train.model_info import json_safe

    headers = {k: {**h, "file_sha256": report["digests"][k]} for k, h in report["headers"].items()}
    shown: dict[str, Any] = (
        {"headers": {f"fold{k}": h for k, h in headers.items()}, "warnings": report["warnings"]}
        if path.is_dir()
        else {"header": next(iter(headers.values()))}  # fold3/model.pt: fold 3's
    )
    shown["config"] = report["config"]
    if config:
        shown["check"] = {"config": config, "ok": True, "warnings": report["check"]}
    print(json.dumps(json_safe(shown), indent=2, default=str, allow_nan=False))


def run(args: argparse.Namespace) -> int:
    from gigamil.train.model_info import describe_model
    from gigamil.train.trained_models import fold_models

    path = Path(args.model)
    models = fold_models(path) if path.is_dir() else {_fold_of(path): path}
    report = _report(path, models, args)
    if args.json:
        _print_json(path, report, args.config)
        return 0
    for fold, header in report["headers"].items():
        print("\n".join(describe_model(models[fold], header)))
        print(f"  file sha256: {report['digests'][fold]}")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    if report["differ"]:
        print("\nnote: the fold models differ in these keys; shown: the first fold's")
    _print_keys(report["config"])
    if args.config:
        for warning in report["check"]:
            print(f"warning: {warning}")
        them = "this model" if len(models) == 1 else f"these {len(models)} fold models"
        verdict = f"{args.config} can predict with {them}"
        print(f"\n{verdict}" + (" (warnings above)" if report["check"] else ""))
    return 0


def _fold_of(path: Path) -> int:
    """The fold of one model.pt, from its folder's name (``fold3/model.pt``: 3), else 0 (every
    single file was called fold 0 in the checks' messages)."""
    from gigamil.train.trained_models import FOLD_DIR

    match = FOLD_DIR.fullmatch(path.parent.name)
    return int(match.group(1)) if match else 0
