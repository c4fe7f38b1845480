"""Fold-level prediction: :func:`predict_slides` (rule predict_fold, ``gigamil predict``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gigamil.config import check_slide_id
from gigamil.data.bags import ZarrBag, store_stain_normalization, swapped_store
from gigamil.data.features import FeatureBag, check_encoder_weights, open_bag
from gigamil.errors import GigamilError
from gigamil.evaluate.patch_score import patch_logit_file
from gigamil.fileutil import atomic_save_npy, atomic_write_csv, zarr_attributes
from gigamil.logutil import current_context, log_context
from gigamil.settings import TrainingConfig
from gigamil.train.accel import prepare_model
from gigamil.train.checkpoint import load_model
from gigamil.train.fold_data import (
    MPP_TOLERANCE,
    check_columns,
    preprocessing_warning,
    resolve_device,
    shared_store,
    store_mpp,
)
from gigamil.train.learning import LEARNED_COLUMN, model_learned
from gigamil.train.logit_calibration import apply_calibration
from gigamil.train.loop import bag_probabilities
from gigamil.train.model_info import MODEL_COLUMN, file_sha256
from gigamil.train.monitor import non_finite_message

log = logging.getLogger(__name__)


def _predict_bag(
    model: torch.nn.Module,
    bag: ZarrBag | FeatureBag,
    n_classes: int,
    chunk: int | None,
    calibration: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Class probabilities (float64), attention and patch logits (float32, (N,); None for an
    attention model without ``instance_logits``) of one bag (:meth:`MILModel.forward_patches`),
    the logits mapped by model.pt's ``logit_calibration``; NaN and empty for an empty bag."""
    if len(bag) == 0:
        return np.full(n_classes, np.nan), np.zeros(0, np.float32), np.zeros(0, np.float32)
    with torch.inference_mode():  # a MILModel or ReplicateEnsemble (load_model)
        logits, att, patch = model.forward_patches(bag, None, chunk)  # type: ignore[operator]
        logits = apply_calibration(logits, calibration)
    prob = bag_probabilities(logits).cpu().numpy().astype(np.float64)
    patch = None if patch is None else patch.float().cpu().numpy().astype(np.float32)
    return prob, att.float().cpu().numpy().astype(np.float32), patch


def _save_arrays(path: Path, attention: np.ndarray, patch: np.ndarray | None) -> None:
    """The attention at ``path`` and the patch logits (if any) beside it, never cut short."""
    atomic_save_npy(path, attention)
    if patch is not None:
        atomic_save_npy(patch_logit_file(path), patch)


def _check_kind(slide_id: str, bag: ZarrBag | FeatureBag, features: dict | None) -> None:
    """The model reads what the bag holds: patches, or features of the model's encoder."""
    if features is None and isinstance(bag, FeatureBag):
        raise GigamilError(
            f"slide {slide_id}: {bag.path} is a feature store but the model encodes patches; "
            "give it the patch store"
        )
    if features is not None and not isinstance(bag, FeatureBag):
        raise GigamilError(
            f"slide {slide_id}: the model was trained on cached features of encoder "
            f"{features['encoder_id']}; give it that feature store, not the patch store {bag.path} "
            "(for a new slide: gigamil features STORE --config CONFIG.yaml --out FEATURES.zarr, "
            "with the config the model was trained with)"
        )
    if features is not None and bag.encoder_id != features["encoder_id"]:  # type: ignore[union-attr]
        raise GigamilError(
            f"slide {slide_id}: {bag.path} holds features of encoder {bag.encoder_id} but the "  # type: ignore[union-attr]
            f"model was trained on those of {features['encoder_id']} (the id hashes the encoder, "
            "its weights' checksum and the patch settings: one of them differs); extract "
            "them again with the model's configuration (gigamil features STORE --config "
            f"CONFIG.yaml --out FEATURES.zarr; in the workflow, delete {Path(bag.path).parent} "
            "and run snakemake again)"
        )
    check_encoder_weights(slide_id, bag, features)  # the same id: the same weights?


def _check_mpp(slide_id: str, bag: ZarrBag | FeatureBag, model_mpp: float | None) -> None:
    mpp = store_mpp(bag)
    if mpp is None and model_mpp is not None:  # e.g. a store written by another tool
        log.warning(
            "slide %s: its store records no µm/px; not checked against the model's %g µm/px",
            slide_id,
            model_mpp,
        )
    if mpp is None or model_mpp is None:
        return
    if abs(mpp - model_mpp) > MPP_TOLERANCE * model_mpp:
        raise GigamilError(
            f"slide {slide_id}: patches are at {mpp:g} µm/px but the model was trained at "
            f"{model_mpp:g} µm/px; extract this cohort with a preprocessing.patches.mpp within "
            f"1 % of it, e.g. the training config's (a single slide: gigamil patches --mpp "
            f"{model_mpp:g})"
        )


def _check_stain_normalization(slide_id: str, bag: ZarrBag | FeatureBag, model: str | None) -> None:
    store = store_stain_normalization(bag)
    if store is None or model is None or store == model:
        return
    raise GigamilError(
        f"slide {slide_id}: patches with stain normalisation {store!r} but the model was "
        f"trained on {model!r} ones; extract this cohort with "
        f"preprocessing.patches.stain_normalization: {model} (a single slide: gigamil patches "
        f"--stain-normalization {model})"
    )


def _open_slide(row: Any, ckpt: dict, threads: int, dev: torch.device) -> ZarrBag | FeatureBag:
    """The bag of one slide (``row`` of the slides table) for the model of ``ckpt``: checked
    to hold what the model reads, at its patch size and resolution; a bag without patches is
    logged (its probabilities will be NaN)."""
    bag = open_bag(row.store, workers=threads, pin_memory=dev.type == "cuda")
    _check_kind(row.slide_id, bag, ckpt.get("features"))
    size = None  # the patch size mismatch, if any
    if len(bag) and bag.patch_shape[0] != int(ckpt["patch_px"]):
        px = int(ckpt["patch_px"])
        size = (
            f"{bag.patch_shape[0]} px but the model was trained on {px} px (patch_px: {px}; "
            f"gigamil patches --patch-px {px})"
        )
    try:  # both mismatches in one message (a store cut at other settings has both)
        _check_mpp(row.slide_id, bag, ckpt.get("patch_mpp"))
    except GigamilError as exc:
        if size:
            raise GigamilError(f"{exc}; and they are {size}") from None
        raise
    if size:
        raise GigamilError(f"slide {row.slide_id}: patches are {size}")
    _check_stain_normalization(row.slide_id, bag, ckpt.get("stain_normalization"))
    recorded = bag.attrs.get("slide_id")
    if recorded is not None and str(recorded) != str(row.slide_id):
        log.warning(
            "slide %s: its store %s was extracted from slide %s; check the slides table",
            row.slide_id,
            row.store,
            recorded,
        )
    if len(bag) == 0:
        log.warning("slide %s has no patches; predicted probabilities are NaN", row.slide_id)
    return bag


def _open_slides(slides: pd.DataFrame, ckpt: dict, threads: int, dev: torch.device) -> list:
    """Every slide's bag, checked (_open_slide) before the first prediction: a bad store later
    in the table stops the run before any attention file is written, not after some."""
    return [_open_slide(row, ckpt, threads, dev) for row in slides.itertuples(index=False)]


def _check_labels(slides: pd.DataFrame, classes: list[str], model_path: Path) -> None:
    """GigamilError for a label that is not one of the model's classes (an empty label: a
    slide to predict without one, ``role: predict``)."""
    from gigamil.sheets import near_label

    labels = {str(v) for v in slides["label"].fillna("")} - {""}
    if unknown := sorted(labels - set(classes)):
        hints = [h for v in unknown if (h := near_label(v, classes))]
        raise GigamilError(
            f"slides to predict: label(s) {unknown} are not among the classes {classes} of "
            f"{model_path}; fix the sheet's labels, or leave the column empty"
            + (f" (did you mean {', '.join(hints)}?)" if hints else "")
        )


def predict_slides(  # noqa: PLR0913 - public API (scripts, CLI, tests)
    model_path: Path,
    slides: pd.DataFrame,
    out_csv: Path | None,
    attention_dir: Path,
    device: str = "auto",
    threads: int = 1,
    max_instances_per_forward_pass: int | None = TrainingConfig.max_instances_per_forward_pass,
    require_unseen: bool = False,
) -> pd.DataFrame:
    """Predict every slide with the model of ``model_path`` (eval mode, inference mode).

    Slides the model trained or validated on (or of patients it trained on) are a warning;
    with ``require_unseen`` (the slides are declared its test slides, ``gigamil predict
    --folds``) a slide it trained or validated on is a GigamilError before any prediction.

    ``threads``: torch's CPU threads and the threads decoding patch chunks (ahead of the model;
    on CUDA into pinned memory, copied asynchronously). Returns the table (slide_id, patient_id, cohort, label, prob_<class>..., pred, model_learned:
    :func:`gigamil.train.learning.model_learned`, empty when not recorded, model_sha256: the
    model.pt file's SHA-256, as ``sha256sum`` gives it) and writes it
    to ``out_csv`` unless that is None (rule predict_fold writes it once, with the fold, through
    :func:`gigamil.evaluate.predictions.write_fold_predictions`). Writes
    ``attention_dir/{slide_id}.npy`` (float32 (N,), softmax attention in the store's row order;
    a feature store has the rows of its patch store) and ``attention_dir/patch_logits/``. ``slides.store`` is a patch store, or a
    feature store of the encoder of a model trained on cached features. A slide without patches gets NaN probabilities, an empty ``pred`` and an
    empty attention array (there is nothing to classify; no guess is made). A slide with
    instances whose probabilities or attention are not finite (NaN weights, NaN or inf
    features) is an error naming the slide and the model, never a row of NaN.

    Logs one line per slide (``slide 3/12 s1: 812 patches, P(lesion) 0.973 -> lesion (2.1 s)``),
    in the caller's :func:`gigamil.logutil.log_context` (default ``<model dir> predict <cohort>``, e.g. ``fold2 predict ext``).
    """
    cohorts = set(map(str, slides["cohort"])) if "cohort" in slides else set()
    name = f"{Path(model_path).parent.name} predict"
    if len(cohorts) == 1:
        name += f" {next(iter(cohorts))}"
    with log_context(current_context() or name):
        return _predict_slides(
            model_path,
            slides,
            out_csv,
            attention_dir,
            device,
            threads,
            max_instances_per_forward_pass,
            require_unseen,
        )


def seen_in_training(slides: pd.DataFrame, ckpt: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The slide ids of ``slides`` (columns cohort, slide_id, patient_id) that the model of
    ``ckpt`` trained or validated on (the same cohort and slide id), and those of the other
    slides whose patient it did (the same patient_id, in any cohort: patient ids name one
    patient across cohorts, as the workflow's leakage check has them); both empty for a model.pt
    written before gigamil recorded its ``training_slides``."""
    seen = ckpt.get("training_slides") or {}
    pairs = {(str(c), str(s)) for c, s in seen.get("slides", ())}
    patients = set(map(str, seen.get("patient_ids", ())))
    ids = slides["slide_id"].astype(str)
    keys = zip(slides["cohort"].astype(str), ids, strict=True)
    same = pd.Series([k in pairs for k in keys], index=slides.index, dtype=bool)
    of_patient = slides["patient_id"].astype(str).isin(patients)
    return ids[same].tolist(), ids[~same & of_patient].tolist()


def _warn_seen(
    slides: pd.DataFrame, ckpt: dict[str, Any], model_path: Path, strict: bool = False
) -> None:
    """Warn when slides to predict were training or validation slides of the model, or are of
    patients it trained on: their predictions are no test of the model (too good). ``strict``
    (the slides are its declared test slides): a slide it trained on is an error."""
    if "training_slides" not in ckpt:
        log.info(
            "%s does not record its training slides (an older gigamil): not checked", model_path
        )
        return
    same, patient = seen_in_training(slides, ckpt)
    if strict and same:
        raise GigamilError(_seen_test_slides(model_path, same, len(slides)))
    parts = [
        f"{len(v)} {what} ({', '.join(v[:5])}{', ...' if len(v) > 5 else ''})"
        for v, what in (
            (same, "training or validation slide(s)"),
            (patient, "slide(s) of patients it trained on"),
        )
        if v
    ]
    if parts:
        # patients are matched by id text: another institution's patient may share an id
        shared_ids = (
            " (patients are matched by patient_id: if these are another institution's patients "
            "who only share the ids, this does not apply)"
            if patient
            else ""
        )
        log.warning(
            "%s: of the %d slides to predict, %s of this model: their predictions are not a "
            "test of it (optimistic); evaluate on slides of other patients%s",
            model_path,
            len(slides),
            " and ".join(parts),
            shared_ids,
        )


def _check_slides(
    slides: pd.DataFrame, ckpt: dict[str, Any], model_path: Path, require_unseen: bool
) -> None:
    """Before any prediction: labels among the model's classes, safe and unique ids and
    stores, the slides the model has seen (warned, or with ``require_unseen`` refused) and
    stores cut with other preprocessing than the model's training patches (warned)."""
    _check_labels(slides, [str(c) for c in ckpt["classes"]], model_path)
    attrs = [zarr_attributes(store) or {} for store in slides["store"]]  # read once, for both
    _check_slide_ids(slides, attrs)
    _warn_seen(slides, ckpt, model_path, require_unseen)
    recorded = dict(zip(slides["slide_id"].astype(str), attrs, strict=True))
    if other := preprocessing_warning(recorded, ckpt.get("preprocessing"), int(ckpt["patch_px"])):
        log.warning("%s: %s", model_path, other)


def _seen_test_slides(model_path: Path, same: list[str], n: int) -> str:
    """The error for declared test slides the model trained or validated on."""
    listed = f"{', '.join(same[:5])}{', ...' if len(same) > 5 else ''}"
    return (
        f"{model_path}: {len(same)} of the {n} test slides ({listed}) were training or "
        "validation slides of this model, so their predictions would be scored as out-of-fold "
        "but are not: is it the model of this fold (--model foldK/model.pt with --fold K)?"
    )


def _check_slide_ids(slides: pd.DataFrame, attrs: list[dict[str, Any]]) -> None:
    """Before any work: the ids name the attention files, so each must be a safe file name
    and listed once (a second row would overwrite the first's attention file), and no store
    may stand in two rows (two slides given the same patches: one of them is predicted from
    another slide's tissue) or be cut from another listed slide (stores swapped). A store
    cut from a slide of another id not in the table is a warning (:func:`_open_slide`).
    ``attrs``: each row's store attributes."""
    for slide_id in slides["slide_id"]:
        check_slide_id(slide_id)
    ids = slides["slide_id"].astype(str)
    if ids.duplicated().any():
        raise GigamilError(
            f"slides to predict: slide {ids[ids.duplicated()].iloc[0]} is listed twice"
        )
    same = shared_store(slides)
    if same is not None:
        raise GigamilError(
            f"slides to predict: slides {', '.join(ids[same])} have the same store "
            f"{slides['store'][same].iloc[0]}: give each slide its own store"
        )
    recorded = [own.get("slide_id") for own in attrs]  # a store cut from another listed slide
    if problem := swapped_store(list(ids), list(slides["store"]), recorded):
        raise GigamilError(f"slides to predict: {problem}")


def probability_text(p: float) -> str:
    """A probability in a log line: three significant digits, and near 1 its distance from 1
    (``1 - 3.2e-05``: '%.3g' printed 0.99997 as "1", which reads as certainty)."""
    return f"1 - {1.0 - p:.1e}" if 0.9995 <= p < 1.0 else f"{p:.3g}"


def _predict_slides(  # noqa: PLR0913 - the arguments of predict_slides
    model_path: Path,
    slides: pd.DataFrame,
    out_csv: Path | None,
    attention_dir: Path,
    device: str,
    threads: int,
    max_instances_per_forward_pass: int | None,
    require_unseen: bool = False,
) -> pd.DataFrame:
    torch.set_num_threads(max(1, int(threads)))
    slides = slides if "label" in slides else slides.assign(label="")  # role: predict: none
    check_columns(slides, "slides to predict")
    model, ckpt = load_model(model_path, dev := resolve_device(device))
    prepare_model(model, dev)
    classes = [str(c) for c in ckpt["classes"]]
    _check_slides(slides, ckpt, model_path, require_unseen)
    bags = _open_slides(slides, ckpt, threads, dev)
    (attention_dir := Path(attention_dir)).mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (row, bag) in enumerate(zip(slides.itertuples(index=False), bags, strict=True), 1):
        t0 = time.monotonic()
        prob, att, patch = _predict_bag(
            model, bag, len(classes), max_instances_per_forward_pass, ckpt.get("logit_calibration")
        )
        finite = [np.isfinite(a).all() for a in (prob, att, [] if patch is None else patch)]
        if len(bag) and not all(finite):
            raise GigamilError(non_finite_message(model_path, model, row, len(bag), prob))
        pred = classes[int(prob.argmax())] if len(bag) else ""
        _save_arrays(attention_dir / f"{row.slide_id}.npy", att, patch)
        shown = int(prob.argmax()) if len(classes) > 2 and len(bag) else -1  # 2: the positive
        log.info(  # with more than two classes, the predicted one's probability
            "slide %d/%d %s: %d patches, P(%s) %s -> %s (%.1f s)",
            i,
            len(slides),
            row.slide_id,
            len(bag),
            classes[shown],
            probability_text(float(prob[shown])),
            pred or "none",
            time.monotonic() - t0,
        )
        rows.append(
            {
                "slide_id": row.slide_id,
                "patient_id": row.patient_id,
                "cohort": row.cohort,
                "label": row.label,
                **{f"prob_{c}": float(p) for c, p in zip(classes, prob, strict=True)},
                "pred": pred,
            }
        )
    ids = ["slide_id", "patient_id", "cohort", "label"]
    df = pd.DataFrame(rows, columns=[*ids, *(f"prob_{c}" for c in classes), "pred"])
    # the model's verdict and which file predicted (summary.json's folds_not_learned, models)
    df[LEARNED_COLUMN], df[MODEL_COLUMN] = model_learned(ckpt), file_sha256(model_path)
    if out_csv is not None:
        atomic_write_csv(df, out_csv)  # a kill mid-write leaves no file cut short
    return df
