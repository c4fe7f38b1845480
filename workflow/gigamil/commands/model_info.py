"""``gigamil model-info``: what a fold's model.pt (or a folder of fold models) is (classes, input
patches, encoder, what it was trained on, its file's sha256), the config.yaml keys a project
needs to predict with it, and, with ``--config``, whether that config can, as the workflow's
``trained_models`` checks say (:mod:`gigamil.train.model_info`,
:mod:`gigamil.train.trained_models`); a config that trains its own fold models is checked for
what the models take (classes, preprocessing), and told so."""

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
        "to use, warnings are printed; a config that trains its own fold models (a train "
        "cohort) is checked for its classes and preprocessing only",
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


def _check(models: dict, config_path: str) -> dict[str, Any]:
    """The workflow's trained_models checks of ``models`` against the config at
    ``config_path`` (GigamilError naming the setting to use): ``warnings``, and ``trains``: the
    config's train cohorts when it trains its own fold models (no ``trained_models``: the
    config refuses both), for which only the checks of what the models take apply (classes,
    preprocessing, cached features, cv.folds), not those of its cohorts' patients."""
    from gigamil.config import load_config
    from gigamil.data.feature_spec import config_encoder_id
    from gigamil.train.trained_models import (
        check_patient_overlap,
        check_with_config,
        training_patients,
    )

    config = load_config(config_path)
    warnings = check_with_config(models, config, config_encoder_id(config))
    cohorts = config["cohorts"]
    if not config.get("trained_models"):  # it trains its own fold models
        return {
            "warnings": warnings,
            "trains": [n for n, c in cohorts.items() if c["role"] == "train"],
        }
    trained, unrecorded = training_patients(models)
    found = check_patient_overlap(cohorts, _cohort_patients(config), trained, unrecorded)
    return {"warnings": warnings + found, "trains": []}


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
        check = report["check"]
        shown["check"] = {"config": config, "ok": True, "warnings": check["warnings"]}
        shown["check"]["trains_own_models"] = bool(check["trains"])
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
        _print_verdict(args.config, len(models), report["check"])
    return 0


def _print_verdict(config: str, n_models: int, check: dict[str, Any]) -> None:
    """The --config check's warnings and verdict: ``config`` can predict with the models, or,
    when it trains its own (``check["trains"]``: a trial was told it "can predict with" them,
    though such a config refuses trained_models), that the checks of what the models take
    passed and how another project predicts with them."""
    for warning in check["warnings"]:
        print(f"warning: {warning}")
    them = "this model" if n_models == 1 else f"these {n_models} fold models"
    warned = " (warnings above)" if check["warnings"] else ""
    if not check["trains"]:
        print(f"\n{config} can predict with {them}{warned}")
        return
    print(
        f"\n{config} trains its own fold models (cohorts: {', '.join(check['trains'])} has role: "
        "train), so the trained_models checks of its cohorts' patients do not apply; its "
        f"classes and preprocessing fit {them}{warned}. To predict with them elsewhere, copy "
        "the folder holding their fold<k>/model.pt (e.g. to shared/<name>) and give the copy "
        "as trained_models in a config whose cohorts have role: external or predict (README, "
        "'Sharing trained models')"
    )


def _fold_of(path: Path) -> int:
    """The fold of one model.pt, from its folder's name (``fold3/model.pt``: 3), else 0 (every
    single file was called fold 0 in the checks' messages)."""
    from gigamil.train.trained_models import FOLD_DIR

    match = FOLD_DIR.fullmatch(path.parent.name)
    return int(match.group(1)) if match else 0
