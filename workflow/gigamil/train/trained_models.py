"""Fold models trained elsewhere (config key ``trained_models``): a folder of ``fold<k>/model.pt``
files, e.g. a copy of another project's ``results/models/{experiment}``, that predict this
project's external and predict cohorts instead of models it trains itself.

:func:`fold_models` finds the files (every Snakemake process: the folds are the rules' inputs);
:func:`check_trained_models` reads each header once, before any job, and refuses a model this
configuration cannot feed (other classes, patch size, µm/px, stain normalisation, cached
features); :func:`models_pool` gives the pool the heatmaps are labelled for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from gigamil.errors import ConfigError, GigamilError
from gigamil.train.checkpoint import FINISHED, load_checkpoint
from gigamil.train.fold_data import MPP_TOLERANCE, store_preprocessing

KEY = "trained_models"
FOLD_DIR = re.compile(r"fold(\d+)")


def _layout_hint(root: Path) -> str:
    """Where the fold folders are when ``root`` is one level off: a model.pt or a fold folder
    (give the folder above), or ``results/models`` (give one experiment's folder)."""
    if root.is_file():
        return f"; give the folder holding the fold folders, {root.parent.parent}"
    if FOLD_DIR.fullmatch(root.name):
        return f"; give the folder holding the fold folders, {root.parent}"
    below = sorted({p.parent.parent.name for p in root.glob("*/fold*/model.pt")})
    if below:
        return f"; it holds experiments' folders: give one of them, e.g. {root / below[0]}"
    return ""


def fold_models(directory: str | Path, own_models: str | Path | None = None) -> dict[int, Path]:
    """``{fold: directory/fold<fold>/model.pt}`` for every such file, sorted by fold.

    ``own_models``: this project's own models folder (``results/models/{experiment}``), which
    ``directory`` must not be (its rule train_fold would write there).

    Raises:
        ConfigError: ``directory`` is missing, is this project's models folder, holds no
            ``fold<k>/model.pt`` (naming the folder to give instead when it is one level off),
            or holds two folders of one fold number (``fold1/`` and ``fold01/``).
    """
    root = Path(directory)
    if own_models is not None and root.resolve() == Path(own_models).resolve():
        raise ConfigError(
            f"{KEY}: {root} is this experiment's own models folder, which its training writes; "
            "give the other project's models a folder of their own, or another experiment name"
        )
    if not root.exists():
        raise ConfigError(f"{KEY}: {root} does not exist")
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
            f"{KEY}: no fold<k>/model.pt in {root} (a copy of a project's "
            f"results/models/<experiment> folder){_layout_hint(root)}"
        )
    return dict(sorted(found.items()))


def _header(path: Path) -> dict[str, Any]:
    """The checkpoint of ``path`` without its weights, its checksum verified."""
    try:
        ckpt = load_checkpoint(path)
    except GigamilError as exc:
        raise ConfigError(f"{KEY}: {exc}") from None
    if ckpt.get(FINISHED) is False:
        raise ConfigError(
            f"{KEY}: {path}: its training has not finished (the best epoch so far, without "
            "its calibration); finish it in the project that trains it"
        )
    missing = [k for k in ("model_config", "classes", "patch_px") if k not in ckpt]
    if missing:
        raise ConfigError(f"{KEY}: {path}: not a fold's model.pt (it lacks {missing})")
    return {k: v for k, v in ckpt.items() if k not in ("state_dict", "replicates")}


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
            f"classes: {list(header['classes'])} (the model's output order; here {list(classes)})"
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


def check_trained_models(
    models: Mapping[int, Path],
    classes: Sequence[str],
    patches: Mapping[str, Any],
    encoder_id: str | None = None,
    preprocessing: Mapping[str, Any] | None = None,
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

    Returns:
        Warnings: fold numbers missing below the highest, and preprocessing differences.

    Raises:
        ConfigError: a file that does not load as a finished model.pt, or a model whose
            classes, patch size, µm/px, stain normalisation or input (patches or cached
            features) differ from the configuration, naming the settings to use.
    """
    warnings = []
    gaps = sorted(set(range(max(models) + 1)) - set(models))
    if gaps:
        warnings.append(
            f"{KEY}: no model.pt for fold(s) {', '.join(map(str, gaps))}: the ensembles average "
            f"the {len(models)} fold model(s) found (folds {', '.join(map(str, models))})"
        )
    differ: dict[str, set[str]] = {}
    for fold, path in models.items():
        header = _header(path)
        found = _mismatches(header, classes, patches, encoder_id)
        if found:
            raise ConfigError(
                f"{KEY}: {path} (fold {fold}) cannot predict with this configuration; set "
                + "; ".join(found)
            )
        for key, value in (header.get("preprocessing") or {}).items():
            if preprocessing and key in preprocessing and preprocessing[key] != value:
                differ.setdefault(key, set()).add(f"{value!r} (here {preprocessing[key]!r})")
    for key, values in differ.items():
        warnings.append(
            f"{KEY}: the models' training patches had {key} {' / '.join(sorted(values))}: "
            "patches cut otherwise may be scored differently"
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
