"""File layout of the evaluation stages, for the Snakemake rules (splits/train/evaluate/heatmaps).

Plain functions of the validated config and the loaded sheets, so the .smk files hold only rules
(and one-line lambdas) and the logic that decides which files exist is tested here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from gigamil.errors import ConfigError

LESION_MASK_DIR = "results/demo/lesion_masks"


def folds_csv(experiment: str) -> str:
    """results/splits/{experiment}/folds.csv."""
    return f"results/splits/{experiment}/folds.csv"


def model_dir(experiment: str, fold: int | str) -> str:
    """Directory of one fold's model.pt, last.pt and train_log.csv."""
    return f"results/models/{experiment}/fold{fold}"


def prediction_csv(experiment: str, fold: int | str, cohort: str) -> str:
    """Predictions of fold model ``fold`` on ``cohort``."""
    return f"results/predictions/{experiment}/fold{fold}/{cohort}.csv"


def attention_dir(experiment: str, fold: int | str, cohort: str) -> str:
    """Per-slide attention arrays of fold model ``fold`` on ``cohort``."""
    return f"results/predictions/{experiment}/fold{fold}/attention/{cohort}"


def attention_pattern(experiment: str) -> str:
    """Attention file pattern with {fold}, {cohort} and {slide_id} placeholders."""
    return f"{attention_dir(experiment, '{fold}', '{cohort}')}/{{slide_id}}.npy"


def eval_dir(experiment: str) -> str:
    """results/eval/{experiment}."""
    return f"results/eval/{experiment}"


def heatmap_dir(experiment: str, cohort: str, slide_id: str) -> str:
    """Directory of one slide's heatmap outputs."""
    return f"results/heatmaps/{experiment}/{cohort}/{slide_id}"


def lesion_masks(cohort_cfg: Mapping[str, Any], sheet: pd.DataFrame) -> dict[str, str]:
    """{slide_id: lesion mask PNG} of a cohort with ground-truth lesion masks.

    Demo cohorts (``demo: true``) have the generator's masks in results/demo/lesion_masks; any
    other sheet may give masks in an optional ``lesion_mask`` column (a PNG covering the whole
    slide with a JSON sidecar giving its ``downsample``); otherwise there are none.
    """
    if cohort_cfg.get("demo"):
        return {s: f"{LESION_MASK_DIR}/{s}.png" for s in sheet["slide_id"]}
    if "lesion_mask" in sheet.columns:
        pairs = zip(sheet["slide_id"], sheet["lesion_mask"], strict=True)
        return {s: m for s, m in pairs if isinstance(m, str) and m.strip()}
    return {}


def mask_files(cohort_cfg: Mapping[str, Any], sheet: pd.DataFrame) -> list[str]:
    """Lesion mask PNGs of a cohort plus, for a demo cohort, their JSON sidecars."""
    masks = list(lesion_masks(cohort_cfg, sheet).values())
    if cohort_cfg.get("demo"):
        masks += [m.removesuffix(".png") + ".json" for m in masks]
    return masks


def localization_inputs(
    config: Mapping[str, Any],
    sheets: Mapping[str, pd.DataFrame],
    train_cohorts: Sequence[str],
    folds: Sequence[int],
    store_path: Any,
) -> list[str]:
    """Stores, lesion masks and attention directories the localisation AUC reads."""
    files: list[str] = []
    for c in train_cohorts:
        masks = lesion_masks(config["cohorts"][c], sheets[c])
        if not masks:
            continue
        files += [store_path(c, s) for s in masks]
        files += mask_files(config["cohorts"][c], sheets[c])
        files += [attention_dir(config["experiment"], k, c) for k in folds]
    return files


def localization_masks(
    config: Mapping[str, Any], sheets: Mapping[str, pd.DataFrame], train_cohorts: Sequence[str]
) -> dict[str, dict[str, str]]:
    """{cohort: {slide_id: mask}} of the train cohorts that have lesion masks."""
    out = {}
    for c in train_cohorts:
        masks = lesion_masks(config["cohorts"][c], sheets[c])
        if masks:
            out[c] = masks
    return out


def heatmap_slides(
    wanted: str | Sequence[str], sheets: Mapping[str, pd.DataFrame], cohorts: Sequence[str]
) -> list[tuple[str, str]]:
    """(cohort, slide_id) pairs whose heatmaps are drawn.

    Args:
        wanted: ``heatmaps.slides``: "all", "none" or a list of slide_ids.
        cohorts: the cohorts predicted by the fold models (train and external).

    Raises:
        ConfigError: a listed slide_id is in none of the cohorts.
    """
    pairs = [(c, s) for c in cohorts for s in sheets[c]["slide_id"]]
    if wanted == "all":
        return pairs
    if wanted == "none":
        return []
    if isinstance(wanted, str):
        wanted = [wanted]
    unknown = sorted(set(wanted) - {s for _, s in pairs})
    if unknown:
        raise ConfigError(f"heatmaps.slides: slide_id {unknown[0]!r} is in no cohort sheet")
    keep = set(wanted)
    return [(c, s) for c, s in pairs if s in keep]


def eval_targets(
    config: Mapping[str, Any],
    sheets: Mapping[str, pd.DataFrame],
    train_cohorts: Sequence[str],
    external_cohorts: Sequence[str],
) -> list[str]:
    """The final evaluation outputs (for rule all): CV summary, ensembles, heatmaps."""
    exp = config["experiment"]
    targets = [f"{eval_dir(exp)}/summary.json"]
    if config["ensemble"]["enabled"]:
        cohorts = list(train_cohorts) + list(external_cohorts)
        targets += [f"{eval_dir(exp)}/ensemble/{c}/summary.json" for c in cohorts]
    pairs = heatmap_slides(
        config["heatmaps"]["slides"], sheets, list(train_cohorts) + list(external_cohorts)
    )
    targets += [f"{heatmap_dir(exp, c, s)}/overlay.png" for c, s in pairs]
    return targets
