"""The results layout: every path the workflow writes under ``results/`` and ``logs/``.

The .smk files and the Snakemake scripts build their paths here and nowhere else. Every function
is plain string formatting, so passing a wildcard such as ``"{cohort}"`` for an argument gives the
pattern a rule declares. Paths are relative to the Snakemake working directory.

Beside the paths live the functions that decide which files exist for a configuration (lesion
masks, localisation inputs, heatmap slides, the final targets of rule all) and the small helpers
the scripts share (the slides' ``store`` column, attention-file discovery, localisation inputs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gigamil.errors import ConfigError, GigamilError, nearest_name

RESULTS = "results"
LOGS = "logs"
DEMO_DIR = f"{RESULTS}/demo"
LESION_MASK_DIR = f"{DEMO_DIR}/lesion_masks"
PER_PATIENT = "per_patient_predictions.csv"  # and an ensemble's PATIENT_PREDICTIONS are
PATIENT_PREDICTIONS = "patient_predictions.csv"  # targets, so that an upgrade writes them
ENSEMBLE_FILES = ("summary.json", PATIENT_PREDICTIONS)

# ----------------------------------------------------------------------------- logs


def log_file(*parts: str) -> str:
    """logs/{parts...}.log, e.g. ``log_file("tissue_mask", "{cohort}", "{slide_id}")``."""
    return f"{LOGS}/{'/'.join(parts)}.log"


def benchmark_file(*parts: str) -> str:
    """logs/benchmarks/{parts...}.tsv."""
    return f"{LOGS}/benchmarks/{'/'.join(parts)}.tsv"


# ----------------------------------------------------------------------------- demo


def demo_sheet() -> str:
    """The sheet the demo generator writes."""
    return f"{DEMO_DIR}/sheet.csv"


def demo_slide(slide_id: str) -> str:
    """One demo slide (pyramidal TIFF)."""
    return f"{DEMO_DIR}/slides/{slide_id}.tiff"


def demo_tiles_table() -> str:
    """The real-tissue demo's table of placed tiles (slide_id, row, col, label, file, sha256)."""
    return f"{DEMO_DIR}/tiles.csv"


def demo_lesion_mask(slide_id: str) -> str:
    """The ground-truth lesion mask PNG of a demo slide."""
    return f"{LESION_MASK_DIR}/{slide_id}.png"


def demo_lesion_meta(slide_id: str) -> str:
    """The JSON sidecar (``downsample``) of a demo lesion mask."""
    return f"{LESION_MASK_DIR}/{slide_id}.json"


# ----------------------------------------------------------------------------- preprocessing


def mask_dir(cohort: str) -> str:
    """results/masks/{cohort}."""
    return f"{RESULTS}/masks/{cohort}"


def tissue_mask(cohort: str, slide_id: str) -> str:
    """The tissue mask PNG of a slide."""
    return f"{mask_dir(cohort)}/{slide_id}.png"


def tissue_qc(cohort: str, slide_id: str) -> str:
    """The tissue mask QC overlay of a slide."""
    return f"{mask_dir(cohort)}/{slide_id}.qc.png"


def tissue_qc_jpg(cohort: str, slide_id: str) -> str:
    """The report's JPEG copy of a slide's tissue-mask QC overlay (rule qc_report_copy)."""
    return f"{mask_dir(cohort)}/{slide_id}.qc.jpg"


def tissue_json(cohort: str, slide_id: str) -> str:
    """The tissue mask's JSON sidecar (mask resolution and statistics)."""
    return f"{mask_dir(cohort)}/{slide_id}.json"


def store_path(cohort: str, slide_id: str) -> str:
    """The zarr patch store of a slide."""
    return f"{RESULTS}/patches/{cohort}/{slide_id}.zarr"


def feature_store(encoder_id: str, cohort: str, slide_id: str) -> str:
    """The cached features of a slide under a frozen encoder (gigamil.data.features)."""
    return f"{RESULTS}/features/{encoder_id}/{cohort}/{slide_id}.zarr"


def bag_path(cohort: str, slide_id: str, encoder_id: str | None = None) -> str:
    """What training and prediction read for a slide: its feature store when ``encoder_id``
    (the frozen encoder's features are cached), else its patch store."""
    if encoder_id is None:
        return store_path(cohort, slide_id)
    return feature_store(encoder_id, cohort, slide_id)


def qc_csv(cohort: str) -> str:
    """The per-cohort QC table."""
    return f"{RESULTS}/qc/{cohort}.csv"


def qc_html(cohort: str) -> str:
    """The per-cohort QC table as an HTML page (for the report)."""
    return f"{RESULTS}/qc/{cohort}.html"


QC_THUMBNAILS_IN_REPORT = 8
"""Tissue-mask QC thumbnails per cohort shown in the HTML report (all are on disk)."""


def qc_sample(slide_ids: Sequence[str], n: int = QC_THUMBNAILS_IN_REPORT) -> list[str]:
    """``n`` slide ids spread evenly over ``slide_ids`` (in the order given: the workflow gives
    them sorted, so sorting the sheet changes no sample; all when there are fewer): the slides
    whose QC thumbnails the report shows."""
    ids = list(slide_ids)
    if len(ids) <= n:
        return ids
    return [ids[round(i * (len(ids) - 1) / (n - 1))] for i in range(n)] if n > 1 else ids[:n]


def with_stores(slides: pd.DataFrame, encoder_id: str | None = None) -> pd.DataFrame:
    """``slides`` (``cohort``, ``slide_id``, ...) plus the ``store`` column the trainer reads
    (feature stores of ``encoder_id`` when given, see :func:`bag_path`)."""
    pairs = zip(slides["cohort"], slides["slide_id"], strict=True)
    return slides.assign(store=[bag_path(c, s, encoder_id) for c, s in pairs])


# ----------------------------------------------------------------------------- folds and models


def folds_csv(experiment: str) -> str:
    """results/splits/{experiment}/folds.csv."""
    return f"{RESULTS}/splits/{experiment}/folds.csv"


def model_dir(experiment: str, fold: int | str) -> str:
    """Directory of one fold's model.pt, last.pt and train_log.csv."""
    return f"{RESULTS}/models/{experiment}/fold{fold}"


def training_curves(experiment: str, fold: int | str) -> str:
    """The training-curve plot of one fold (from its train_log.csv)."""
    return f"{model_dir(experiment, fold)}/training_curves.png"


def prediction_csv(experiment: str, fold: int | str, cohort: str) -> str:
    """Predictions of fold model ``fold`` on ``cohort``."""
    return f"{RESULTS}/predictions/{experiment}/fold{fold}/{cohort}.csv"


def attention_dir(experiment: str, fold: int | str, cohort: str) -> str:
    """Per-slide attention arrays of fold model ``fold`` on ``cohort``."""
    return f"{RESULTS}/predictions/{experiment}/fold{fold}/attention/{cohort}"


def attention_file(experiment: str, fold: int | str, cohort: str, slide_id: str) -> str:
    """The attention array (.npy) of fold model ``fold`` on one slide."""
    return f"{attention_dir(experiment, fold, cohort)}/{slide_id}.npy"


def attention_files(dirs: Iterable[str | Path], slide_id: str) -> list[Path]:
    """The attention arrays of ``slide_id`` present in ``dirs`` (one per fold model): a
    train-cohort slide's of its test fold's model, an external one's of every fold model.

    Raises:
        GigamilError: no directory holds the slide's attention, or one whose fold's predictions
            list the slide lacks it (:func:`gigamil.evaluate.predictions.check_attention_present`).
    """
    from gigamil.evaluate.predictions import check_attention_present

    files = [Path(d) / f"{slide_id}.npy" for d in dirs]
    check_attention_present(files, slide_id)
    found = [f for f in files if f.is_file()]
    if not found:
        where = files[0].parent if files else "no attention directory"
        raise GigamilError(
            f"slide {slide_id}: no fold model predicted it (no attention in {where})"
        )
    return found


# ----------------------------------------------------------------------------- evaluation


def eval_dir(experiment: str) -> str:
    """results/eval/{experiment}."""
    return f"{RESULTS}/eval/{experiment}"


def ensemble_dir(experiment: str, cohort: str) -> str:
    """results/eval/{experiment}/ensemble/{cohort}."""
    return f"{eval_dir(experiment)}/ensemble/{cohort}"


def heatmap_dir(experiment: str, cohort: str, slide_id: str) -> str:
    """Directory of one slide's heatmap outputs."""
    return f"{RESULTS}/heatmaps/{experiment}/{cohort}/{slide_id}"


def heatmap_jpg(experiment: str, cohort: str, slide_id: str, figure: str) -> str:
    """The report's JPEG copy of a slide's ``figure`` (overlay or gallery), named by slide so
    that the report, which lists its items by file name, keeps a slide's two together; the
    heatmap job writes it last, so rule all asks for it."""
    return f"{heatmap_dir(experiment, cohort, slide_id)}/{slide_id}.{figure}.jpg"


def lesion_masks(cohort_cfg: Mapping[str, Any], sheet: pd.DataFrame) -> dict[str, str]:
    """{slide_id: lesion mask PNG} of a cohort with ground-truth lesion masks, sorted by slide_id
    (rule params and inputs built from it do not change when the sheet's rows are sorted).

    Demo cohorts (``demo: true``) have the generator's masks in results/demo/lesion_masks; any
    other sheet may give masks in an optional ``lesion_mask`` column (a PNG covering the whole
    slide, optionally with a JSON sidecar giving its ``downsample``); otherwise there are none.
    """
    if cohort_cfg.get("demo"):
        return {s: demo_lesion_mask(s) for s in sorted(sheet["slide_id"])}
    if "lesion_mask" in sheet.columns:
        pairs = sorted(zip(sheet["slide_id"], sheet["lesion_mask"], strict=True))
        return {s: m for s, m in pairs if isinstance(m, str) and m.strip()}
    return {}


def mask_files(cohort_cfg: Mapping[str, Any], sheet: pd.DataFrame) -> list[str]:
    """Lesion mask PNGs of a cohort plus their JSON sidecars (the downsample the evaluation reads):
    a demo cohort's, another's where one exists (editing or adding one reruns the evaluation)."""
    from gigamil.evaluate.lesion_mask import mask_sidecars

    masks = list(lesion_masks(cohort_cfg, sheet).values())
    return masks + mask_sidecars(masks, existing_only=not cohort_cfg.get("demo"))


def localization_inputs(
    config: Mapping[str, Any],
    sheets: Mapping[str, pd.DataFrame],
    train_cohorts: Sequence[str],
    folds: Sequence[int],
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
    """{cohort: {slide_id: mask}} of the train cohorts that have lesion masks, by cohort name
    (rule aggregate_cv's params: the cohorts' order in config.yaml reruns nothing)."""
    masks = {c: lesion_masks(config["cohorts"][c], sheets[c]) for c in sorted(train_cohorts)}
    return {c: m for c, m in masks.items() if m}


LocalizationInput = tuple[str, list[str], str]
"""(patch store, attention .npy files of the fold models to average, lesion mask PNG)."""


def cv_localization(
    experiment: str, test_slides: pd.DataFrame, masks: Mapping[str, Mapping[str, str]]
) -> dict[str, LocalizationInput]:
    """Localisation inputs of the cross-validation: each slide with a lesion mask, scored with
    the attention of the fold model that had it as a test slide.

    Args:
        test_slides: the test rows of folds.csv (``cohort``, ``slide_id``, ``fold``).
        masks: ``{cohort: {slide_id: lesion mask}}`` (:func:`localization_masks`).
    """
    out = {}
    for row in test_slides.itertuples(index=False):
        mask = masks.get(row.cohort, {}).get(row.slide_id)
        if mask:
            attention = [attention_file(experiment, row.fold, row.cohort, row.slide_id)]
            out[row.slide_id] = (store_path(row.cohort, row.slide_id), attention, mask)
    return out


def ensemble_localization(
    experiment: str, cohort: str, folds: Sequence[int], masks: Mapping[str, Mapping[str, str]]
) -> dict[str, LocalizationInput]:
    """Localisation inputs of the ensemble on ``cohort``: each slide with a lesion mask, scored
    with the mean attention of every fold model (those that predicted it)."""
    out = {}
    for slide_id, mask in masks.get(cohort, {}).items():
        attention = [attention_file(experiment, k, cohort, slide_id) for k in folds]
        out[slide_id] = (store_path(cohort, slide_id), attention, mask)
    return out


def heatmap_slides(
    wanted: str | Sequence[str], sheets: Mapping[str, pd.DataFrame], cohorts: Sequence[str]
) -> list[tuple[str, str]]:
    """(cohort, slide_id) pairs whose heatmaps are drawn.

    Args:
        wanted: ``heatmaps.slides``: "all", "none" or a list of slide_ids.
        cohorts: the cohorts predicted by the fold models (train, external and predict).

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
    known = sorted({str(s) for _, s in pairs})
    unknown = sorted(set(map(str, wanted)) - set(known))
    if unknown:
        listed_ok = set(map(str, wanted))  # a slide already in the list is no suggestion
        near = nearest_name(unknown[0], [k for k in known if k not in listed_ok])
        raise ConfigError(
            f"heatmaps.slides: slide_id {unknown[0]!r} is in no cohort sheet"
            + (f" ({len(unknown)} such: {', '.join(unknown[:3])})" if len(unknown) > 1 else "")
            + (f"; did you mean {near}?" if near else "")
        )
    keep = set(wanted)
    return [(c, s) for c, s in pairs if s in keep]


def eval_targets(
    config: Mapping[str, Any],
    sheets: Mapping[str, pd.DataFrame],
    train_cohorts: Sequence[str],
    external_cohorts: Sequence[str],
    predict_cohorts: Sequence[str] = (),
) -> list[str]:
    """The final evaluation outputs (for rule all): CV summary and patient predictions, each
    fold's model.pt and training curves, subgroup metrics (``subgroups``; none of these without
    train cohorts), ensembles, heatmaps. A ``predict`` cohort (no labels) always gets its
    ensemble's predictions, whatever ``ensemble.enabled`` says: they are what it is there for.

    model.pt is a target of its own: a retraining (changed settings) killed mid-fold leaves the
    fold without model.pt (Snakemake deletes a failed job's outputs) but with the predictions
    of its previous model, which, as an intermediate file, Snakemake would not rebuild; the
    evaluation would then mix the old fold's predictions into the new ones without a word."""
    exp, targets = config["experiment"], []
    if train_cohorts:  # none with trained_models (fold models trained elsewhere predict)
        targets += [f"{eval_dir(exp)}/{f}" for f in ("summary.json", PER_PATIENT)]
        for k in range(config["cv"]["folds"]):
            targets += [f"{model_dir(exp, k)}/model.pt", training_curves(exp, k)]
        if config.get("subgroups"):
            targets.append(f"{eval_dir(exp)}/subgroups.csv")
    if config["ensemble"]["enabled"]:
        cohorts = list(train_cohorts) + list(external_cohorts)
        targets += [f"{ensemble_dir(exp, c)}/{f}" for c in cohorts for f in ENSEMBLE_FILES]
        if config.get("subgroups"):
            targets += [f"{ensemble_dir(exp, c)}/subgroups.csv" for c in external_cohorts]
    targets += [f"{ensemble_dir(exp, c)}/{f}" for c in predict_cohorts for f in ENSEMBLE_FILES]
    predicted = list(train_cohorts) + list(external_cohorts) + list(predict_cohorts)
    pairs = heatmap_slides(config["heatmaps"]["slides"], sheets, predicted)
    targets += [heatmap_jpg(exp, c, s, "overlay") for c, s in pairs]
    return targets


def report_categories(
    config: Mapping[str, Any], train: Sequence[str], external: Sequence[str], predict: Sequence[str]
) -> dict[str, str]:
    """The HTML report's categories, numbered in the order they are shown and without gaps:
    ``{"qc": "0. Quality control", "cv": "1. Cross-validation", "ensembles": "2. Ensembles",
    "heatmaps": "3. Heatmaps"}``; ``heatmaps`` is ``"2. Heatmaps"`` when no ensemble is in the
    report (ensembles of external cohorts, of ``role: predict`` cohorts, or of each train cohort
    when there are several; ``train``/``external``/``predict``: the cohorts of each role)."""
    shown = bool(predict) or (config["ensemble"]["enabled"] and (bool(external) or len(train) > 1))
    cv = ["Cross-validation"] * bool(train)  # none with trained_models: nothing trains
    titles = ["Quality control", *cv, *(["Ensembles"] * shown), "Heatmaps"]
    numbered = {t: f"{i}. {t}" for i, t in enumerate(titles)}
    return {
        "qc": numbered["Quality control"],
        "cv": numbered.get("Cross-validation", "Cross-validation"),
        "ensembles": numbered.get("Ensembles", "Ensembles"),  # (not shown: no rule of it runs)
        "heatmaps": numbered["Heatmaps"],
    }
