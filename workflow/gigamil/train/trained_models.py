"""Fold models trained elsewhere (config key ``trained_models``): a folder of ``fold<k>/model.pt``
files, e.g. a copy of another project's ``results/models/{experiment}``, that predict this
project's external and predict cohorts instead of models it trains itself.

:func:`fold_models` finds the files (every Snakemake process: the folds are the rules' inputs);
:func:`check_trained_models` (:func:`check_with_config` for a whole configuration) reads each
header once, before any job, and refuses a model this configuration cannot feed (other classes,
patch size, µm/px, stain normalisation, cached features), a damaged or unfinished file and one
model in two folds; :func:`training_patients` and :func:`check_patient_overlap` keep the models'
training patients out of external cohorts, as a train cohort's are in the training project;
:func:`models_pool` gives the pool the heatmaps are labelled for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from gigamil.errors import ConfigError, GigamilError
from gigamil.train.checkpoint import DIGEST_KEY, FINISHED
from gigamil.train.fold_data import MPP_TOLERANCE, store_preprocessing
from gigamil.train.model_info import file_sha256, model_header_of
from gigamil.train.trained_checks import KEY, check_not_a_copy, fold_warnings, mixed_pools

FOLD_DIR = re.compile(r"fold(\d+)")


def _where(root: Path) -> str:
    """``root``, with its absolute path when given relative (relative to the run's directory)."""
    return str(root) if root.is_absolute() else f"{root} ({root.resolve()})"


def _layout_hint(root: Path, own: Path | None) -> str:
    """Where the fold folders are when ``root`` is one level off: a model.pt or a fold folder
    (give the folder above), ``results/models`` (give one experiment's folder, not this
    project's own ``own``), else what the folder holds."""
    if root.is_file():
        return f"; {root} is a file: give the folder holding the fold folders, {root.parent.parent}"
    if FOLD_DIR.fullmatch(root.name):
        return f"; give the folder holding the fold folders, {root.parent}"
    mine = own.resolve() if own is not None else None
    below = sorted({p.parent.parent for p in root.glob("*/fold*/model.pt")})
    below = [p for p in below if p.resolve() != mine]
    if below:
        return f"; it holds experiments' folders: give one of them, e.g. {below[0]}"
    held = sorted(p.name for p in root.iterdir())
    return (
        f"; it holds {', '.join(held[:5])}{' ...' if len(held) > 5 else ''}"
        if held
        else "; it is empty"
    )


def same_spelling(directory: str | Path) -> Path:
    """One spelling of ``directory`` however the config writes it: relative to the working
    directory when inside it, else absolute (``os.path.abspath``: ``.`` and ``..`` removed,
    symbolic links kept). The model.pt paths are rule predict_fold's inputs, and Snakemake
    reruns a job whose input paths change: ``shared/m``, ``./shared/m`` and its absolute path
    must not re-predict every slide."""
    absolute = Path(os.path.abspath(directory))
    here = Path.cwd()  # absolute already (the physical path: os.getcwd)
    return absolute.relative_to(here) if absolute.is_relative_to(here) else absolute


def fold_models(directory: str | Path, own_models: str | Path | None = None) -> dict[int, Path]:
    """``{fold: directory/fold<fold>/model.pt}`` for every such file, sorted by fold
    (``directory`` spelled by :func:`same_spelling`).

    ``own_models``: this project's own models folder (``results/models/{experiment}``), which
    ``directory`` must not be (its rule train_fold would write there).

    Raises:
        ConfigError: ``directory`` is missing, is this project's models folder, holds no
            ``fold<k>/model.pt`` (naming the folder to give instead when it is one level off,
            else what it holds), or holds two folders of one fold number (``fold1/`` and
            ``fold01/``).
    """
    root = same_spelling(directory)
    own = None if own_models is None else Path(own_models)
    if own is not None and root.resolve() == own.resolve():
        raise ConfigError(
            f"{KEY}: {root} is this experiment's own models folder, where rule train_fold "
            "writes; copy the models elsewhere (e.g. shared/<name>) and give that folder"
        )
    if not root.exists():
        raise ConfigError(f"{KEY}: {_where(root)} does not exist")
    found: dict[int, Path] = {}
    for path in sorted(root.glob("fold*/model.pt")):
        match = FOLD_DIR.fullmatch(path.parent.name)
        if match and int(match.group(1)) in found:  # fold1/ and fold01/
            raise ConfigError(
                f"{KEY}: {found[int(match.group(1))].parent} and {path.parent} are both fold "
                f"{int(match.group(1))}; keep one"
            )
        if match:
            found[int(match.group(1))] = path
    if not found:
        raise ConfigError(
            f"{KEY}: no fold<k>/model.pt under {_where(root)} (give a copy of a project's "
            f"results/models/<experiment> folder){_layout_hint(root, own)}"
        )
    return dict(sorted(found.items()))


def _header(path: Path) -> dict[str, Any]:
    """:func:`gigamil.train.model_info.model_header_of` of a finished model.pt, its verified
    ``sha256`` kept (two folds holding one model are found by it)."""
    try:
        header = model_header_of(
            path,
            damaged_hint="nothing here writes trained_models' files again: ask the sender for a "
            "fresh copy (compare its sha256 with theirs)",
        )
    except GigamilError as exc:
        raise ConfigError(f"{KEY}: {exc}") from None
    if header.get(FINISHED) is False:
        raise ConfigError(
            f"{KEY}: {path}: its training has not finished (the best epoch so far, without "
            "its calibration); finish it in the project that trains it"
        )
    # the digest load_checkpoint verified (and removed), read again without the weights
    header[DIGEST_KEY] = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(
        DIGEST_KEY
    )
    return header


def _mismatches(
    header: Mapping[str, Any],
    classes: Sequence[str],
    patches: Mapping[str, Any],
    encoder_id: str | None,
) -> list[str]:
    """What the configuration must change to feed the model of ``header``, one item each."""
    found = []
    if list(header["classes"]) != list(classes):
        found.append(
            f"classes: [{', '.join(map(str, header['classes']))}] (the model's output order; "
            f"here [{', '.join(map(str, classes))}])"
        )
    if int(header["patch_px"]) != int(patches["patch_px"]):
        found.append(
            f"preprocessing.patches.patch_px: {header['patch_px']} (here {patches['patch_px']})"
        )
    mpp = header.get("patch_mpp")
    if mpp is not None and abs(float(patches["mpp"]) - mpp) > MPP_TOLERANCE * mpp:
        found.append(f"preprocessing.patches.mpp: {mpp:g} (here {patches['mpp']:g})")
    stain = header.get("stain_normalization")
    if stain is not None and stain != patches.get("stain_normalization"):
        found.append(
            f"preprocessing.patches.stain_normalization: {stain} "
            f"(here {patches.get('stain_normalization')})"
        )
    features = header.get("features")
    wanted = None if features is None else features["encoder_id"]
    if wanted != encoder_id:
        found.append(
            "the model section of the configuration the models were trained with: they read "
            + (
                f"cached features of encoder {wanted} (training.strategy: frozen)"
                if wanted
                else "patches (their encoder is in model.pt)"
            )
            + (
                f", but this configuration caches features of encoder {encoder_id}"
                if encoder_id
                else ", but this configuration reads patches"
            )
        )
    return found


def _unlearned(path: Path, fold: int, header: Mapping[str, Any]) -> list[str]:
    """A warning per model of ``header`` whose recorded training loss ended near chance
    (model.pt's ``learning``, :func:`gigamil.train.learning.learning_record`)."""
    from gigamil.train.learning import recorded_verdicts, verdict_phrase

    return [
        f"{KEY}: {path} (fold {fold}"
        + ("" if member is None else f", replicate{member}")
        + f") {verdict_phrase(record)}: its predictions mean nothing (README, 'When a fold "
        "does not learn'); ask the sender to train it again"
        for member, record in recorded_verdicts(header)
        if record["learned"] is False  # None: not judged
    ]


def check_trained_models(  # noqa: PLR0913 - the configuration's parts it checks
    models: Mapping[int, Path],
    classes: Sequence[str],
    patches: Mapping[str, Any],
    encoder_id: str | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    n_folds: int | None = None,
) -> list[str]:
    """Check that this configuration can predict with every fold model of ``models``
    (:func:`fold_models`) and return the warnings.
    Args:
        classes: the configuration's ``classes``.
        patches: its ``preprocessing.patches`` section (``patch_px``, ``mpp`` in µm/px,
            ``stain_normalization``).
        encoder_id: the feature cache the configuration's prediction reads
            (:func:`gigamil.data.feature_spec.config_encoder_id`), None for patch stores.
        preprocessing: its settings by dotted key (``{"preprocessing.patches.min_tissue":
            0.5, ...}``), compared with what the models' training patches recorded
            (``model.pt``'s ``preprocessing``): a difference is a warning, as in ``gigamil
            predict``.
        n_folds: its ``cv.folds``: another number of models found is a warning.

    Returns:
        Warnings: missing fold numbers (or other than ``n_folds``), models that recorded
        they did not learn (:func:`_unlearned`), preprocessing differences.

    Raises:
        ConfigError: a file that does not load as a finished model.pt, one model in two fold
            folders, or a model whose classes, patch size, µm/px, stain normalisation or input
            (patches or cached features) differ from the configuration, naming the settings
            to use.
    """
    warnings = fold_warnings(models, n_folds)
    differ: dict[str, set[str]] = {}
    digests: dict[str, int] = {}
    pools: dict[str, list[int]] = {}  # the heatmaps call the mean of the folds' weights one kind
    for fold, path in models.items():
        header = _header(path)
        pools.setdefault(str((header.get("model_config") or {}).get("pool")), []).append(fold)
        found = _mismatches(header, classes, patches, encoder_id)
        if found:
            raise ConfigError(
                f"{KEY}: {path} (fold {fold}) cannot predict with this configuration; set "
                + "; ".join(found)
            )
        check_not_a_copy(digests, header[DIGEST_KEY] or file_sha256(path), path, fold)
        warnings += _unlearned(path, fold, header)
        for key, value in (header.get("preprocessing") or {}).items():
            if preprocessing and key in preprocessing and preprocessing[key] != value:
                differ.setdefault(key, set()).add(f"{value!r} (here {preprocessing[key]!r})")
    warnings += [
        f"{KEY}: the models' training patches had {key} {' / '.join(sorted(values))}: "
        "patches cut otherwise may be scored differently"
        for key, values in differ.items()
    ]
    return warnings + mixed_pools(pools)


def check_with_config(
    models: Mapping[int, Path], config: Mapping[str, Any], encoder_id: str | None = None
) -> list[str]:
    """:func:`check_trained_models` of a whole validated configuration (its ``classes``,
    ``preprocessing`` and ``cv.folds``; ``encoder_id``: its feature cache,
    :func:`gigamil.data.feature_spec.config_encoder_id`, which the caller computes)."""
    return check_trained_models(
        models,
        config["classes"],
        config["preprocessing"]["patches"],
        encoder_id,
        config_preprocessing(config["preprocessing"]),
        n_folds=config["cv"]["folds"],
    )


def training_patients(models: Mapping[int, Path]) -> tuple[set[str], list[int]]:
    """The patient ids the fold models trained or validated on (model.pt's ``training_slides``),
    and the folds whose model.pt does not record them (written before 2026-12-05), read
    without the weights (``torch.load(mmap=True)``)."""
    patients: set[str] = set()
    unrecorded = []
    for fold, path in models.items():
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001, S112 - check_trained_models names the problem
            continue
        seen = ckpt.get("training_slides")
        if not seen:
            unrecorded.append(fold)
        patients.update(map(str, (seen or {}).get("patient_ids", ())))
    return patients, unrecorded


def patient_overlap(trained: set[str], patients: Iterable[Any]) -> list[str]:
    """The ids of ``patients`` that the models trained on (``trained``:
    :func:`training_patients`), compared as text, sorted."""
    return sorted(trained & set(map(str, patients)))


def check_patient_overlap(
    cohorts: Mapping[str, Mapping[str, Any]],
    patients_of: Mapping[str, Sequence[Any]],
    trained: set[str],
    unrecorded: Sequence[int] = (),
) -> list[str]:
    """The models' training patients in this project's cohorts, as the workflow's own leakage
    check treats a train cohort's (``cohorts``: the config's section; ``patients_of``: each
    cohort's patient ids; ``trained``: :func:`training_patients`): a warning for a ``predict``
    cohort or with ``allow_patient_overlap``, else ConfigError (an ``external`` cohort's
    metrics would be optimistic). Patient ids are compared as text, so ids of another lab that
    happen to be equal are found too: the message says how to allow them. ``unrecorded``:
    folds whose model.pt records no patients (:func:`training_patients`): a warning when an
    external cohort cannot be checked against them."""
    warnings = []
    if unrecorded and any(c["role"] == "external" for c in cohorts.values()):
        warnings.append(
            f"{KEY}: the model.pt of fold(s) {', '.join(map(str, unrecorded))} records no "
            "training patients (written before 2026-12-05): whether the external cohorts hold "
            "patients they trained on is not checked for them"
        )
    for name, cohort in cohorts.items():
        if cohort["role"] == "train":  # (no train cohort beside trained_models)
            continue
        shared = patient_overlap(trained, patients_of[name])
        if not shared:
            continue
        msg = (
            f"cohort {name}: {len(shared)} patient id(s) that the trained_models fold models "
            f"trained on ({', '.join(shared[:5])}{' ...' if len(shared) > 5 else ''})"
        )
        if cohort["role"] == "predict":
            warnings.append(f"{msg}: they have seen these patients' slides (no metrics here)")
        elif cohort.get("allow_patient_overlap"):
            warnings.append(f"{msg} (allowed by cohorts.{name}.allow_patient_overlap)")
        else:
            raise ConfigError(
                f"{msg}: its metrics would be optimistic; remove them, or, if these ids name "
                f"other patients (ids are compared as text), set cohorts.{name}."
                "allow_patient_overlap: true (its summary.json then records them)"
            )
    return warnings


def config_preprocessing(preprocessing: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a (validated) ``preprocessing`` section that model.pt's
    ``preprocessing`` records, by dotted key (:func:`gigamil.train.fold_data.store_preprocessing`
    of the stores this section cuts: the stride used, the JPEG quality only for JPEG)."""
    patches = preprocessing["patches"]
    return store_preprocessing(
        {
            "min_tissue": patches["min_tissue"],
            "stride_px": patches["stride_px"] or patches["patch_px"],
            "codec": patches["codec"],
            "jpeg_quality": patches["jpeg_quality"] if patches["codec"] == "jpeg" else None,
            "mask_params": dict(preprocessing["tissue"]),
        }
    )


def models_pool(models: Mapping[int, Path]) -> str:
    """The ``model.pool`` of the first fold model (what its attention files hold), read
    without loading its weights (``torch.load(mmap=True)``)."""
    path = next(iter(models.values()))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return str(ckpt["model_config"].get("pool", "abmil"))
    except Exception as exc:  # noqa: BLE001 - check_trained_models names the problem
        raise ConfigError(f"{KEY}: {path}: not a readable model.pt ({exc})") from None
