"""Checks of a ``trained_models`` folder's fold models as a set (:mod:`gigamil.train.trained_models`
checks each model.pt against the configuration): missing folds, one model in two fold folders,
models of two experiments."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gigamil.errors import ConfigError

KEY = "trained_models"


def fold_warnings(models: Mapping[int, Path], n_folds: int | None) -> list[str]:
    """Fold numbers missing below the highest found, or other folds than ``cv.folds`` says."""
    found = ", ".join(map(str, models))
    # below the highest found, and up to cv.folds: folds 0, 1, 3 of 6 lack 2, 4 and 5
    above = set(range(max(models) + 1, n_folds or 0))
    gaps = sorted((set(range(max(models) + 1)) - set(models)) | above)
    if gaps:
        check = (
            f" (cv.folds is {n_folds}: check that it is the number of folds the models were "
            "trained with)"
            if above
            else ""
        )
        return [
            f"{KEY}: no model.pt for fold(s) {', '.join(map(str, gaps))}: the ensembles average "
            f"the {len(models)} fold model(s) found (folds {found}){check}"
        ]
    if n_folds is not None and len(models) != n_folds:
        return [
            f"{KEY}: {len(models)} fold model(s) found (folds {found}) but cv.folds is {n_folds}: "
            "check that none is missing (the config the models were trained with says how many "
            "folds they had); the ensembles average the models found"
        ]
    return []


def check_not_a_copy(digests: dict[str, int], digest: str, path: Path, fold: int) -> None:
    """ConfigError when ``digest`` (model.pt's recorded sha256, else its file's: an older
    model.pt) is that of another fold's model (``digests``: digest → fold); records it."""
    if digest in digests:
        raise ConfigError(
            f"{KEY}: {path} is the same model as fold {digests[digest]}'s "
            "(one fold's file copied twice?): the ensembles would count it twice; put each "
            "fold's own model.pt in its folder"
        )
    digests[digest] = fold


def mixed_pools(pools: Mapping[str, list[int]]) -> list[str]:
    """A warning when the fold models differ in ``model.pool`` (``pools``: pool → folds)."""
    if len(pools) < 2:
        return []
    kinds = "; ".join(f"{p} folds {', '.join(map(str, f))}" for p, f in sorted(pools.items()))
    return [
        f"{KEY}: the fold models differ in model.pool ({kinds}): models of two experiments? "
        "The ensembles average them and the heatmaps call their mean weights one kind"
    ]
