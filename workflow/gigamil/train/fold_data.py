"""The opened bags of one fold (:class:`FoldData`) and the checks on them: columns, labels,
patch size, µm/px and stain normalisation agreeing across slides, cached features, the other
preprocessing the stores record (:func:`store_preprocessing`), a fold's slides
(:func:`check_fold_slides`: no slide twice, no shared store, no patient on both sides); the device
setting (:func:`resolve_device`). Used by :func:`gigamil.train.run.train_fold` and
:mod:`gigamil.train.predict`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from gigamil import layout
from gigamil.data.bags import ZarrBag, store_stain_normalization, swapped_store
from gigamil.data.features import FeatureBag, open_bag
from gigamil.errors import ConfigError, GigamilError
from gigamil.evaluate.predictions import shown
from gigamil.settings import TissueConfig
from gigamil.splits import labels_per_patient
from gigamil.train.loop import BagItem

# the fold's warnings keep the logger name they had in gigamil.train.run
log = logging.getLogger("gigamil.train.run")

REQUIRED_COLUMNS = ("cohort", "slide_id", "patient_id", "label", "store")
# decoded patches of a fold's bags kept in memory after their first read (a demo fold: 12 MB)
DECODED_BAGS_BYTES = 2**30


def resolve_device(name: str, key: str = "training.device") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``key``: the setting or option named in the
    error when ``cuda`` is asked for without a CUDA device (e.g. ``--device``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: cuda requested but no CUDA device is available")
    return torch.device(name)


def check_columns(df: pd.DataFrame, what: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        need = ", ".join(REQUIRED_COLUMNS)
        raise GigamilError(f"{what}: missing columns {missing} (need {need})")


def _label_index(label: Any, classes: Sequence[str], slide_id: str) -> int:
    names = [str(c) for c in classes]
    if str(label) not in names:
        raise ConfigError(f"slide {slide_id}: label {label!r} is not one of classes {names}")
    return names.index(str(label))


def _no_patches_hint(slides: pd.DataFrame) -> str:
    """Where to see why ``slides`` have no patches: their cohorts' QC tables, which say whether
    no tissue was found or no patch reached ``preprocessing.patches.min_tissue``."""
    cohorts = sorted(set(slides["cohort"].astype(str))) if "cohort" in slides else []
    tables = ", ".join(map(layout.qc_csv, cohorts)) or layout.qc_csv("<cohort>")
    return (
        "no tissue found, or no patch reaches preprocessing.patches.min_tissue at this "
        f"patch_px: the QC table says which, {tables}"
    )


def _lacking_class_message(train: pd.DataFrame, classes: Sequence[str], seen: set[int]) -> str:
    """Why a fold cannot train: the classes without a training slide with patches and, when the
    fold has training slides of them, those slides (they have no patches: no tissue)."""
    lacking = [str(c) for i, c in enumerate(classes) if i not in seen]
    rows = train.loc[train["label"].astype(str).isin(lacking)]
    empty = rows["slide_id"].astype(str).tolist()
    why = (
        f"; its training slide(s) {', '.join(empty[:10])} of that class have no patches "
        f"({_no_patches_hint(rows)}): remove them from the sheet, or check their tissue masks "
        "and patch settings"
        if empty
        else ""
    )
    return (
        f"no training slide (with patches) of class {', '.join(map(repr, lacking))}{why}; a "
        f"fold must train on every class ({', '.join(map(str, classes))})"
    )


def _open_bags(
    df: pd.DataFrame, classes: Sequence[str], what: str, feed: Feed | None = None
) -> list[BagItem]:
    """Open every store; bags without instances (no tissue) are skipped with a warning."""
    feed = feed or Feed()
    items = []
    for row in df.itertuples(index=False):
        label = _label_index(row.label, classes, row.slide_id)
        bag = open_bag(row.store, workers=feed.workers, pin_memory=feed.pin_memory)
        if len(bag) == 0:
            log.warning("%s: slide %s has no patches (no tissue); skipped", what, row.slide_id)
            continue
        items.append(BagItem(str(row.slide_id), bag, label))
    return items


def _keep_decoded(items: list[BagItem], budget: int | None = None) -> list[BagItem]:
    """The items with their patch bags kept in memory once read (decoded uint8 pixels; not
    feature bags), in order, while their pixels total at most ``budget`` bytes (default
    :data:`DECODED_BAGS_BYTES`): every epoch after the first then reads no store (except for
    bags subsampled by ``training.max_instances_per_bag``, which read their rows each epoch).
    The same pixels as read from the store each time."""
    budget = DECODED_BAGS_BYTES if budget is None else budget
    out, total, kept = [], 0, 0
    for it in items:
        bag = it.bag
        if isinstance(bag, ZarrBag) and total + bag.nbytes <= budget:
            total, kept = total + bag.nbytes, kept + 1
            bag = bag.with_cache(bag.nbytes)
        out.append(BagItem(it.slide_id, bag, it.label))
    if kept:
        log.info("%d bag(s) kept in memory once decoded (%.0f MB)", kept, total / 2**20)
    return out


def _patch_px(items: Sequence[BagItem]) -> int:
    shapes = {it.bag.patch_shape for it in items}
    if len(shapes) != 1:
        first = {}  # one slide of each shape, to find the stores cut at other settings
        for it in items:
            first.setdefault(it.bag.patch_shape, it.slide_id)
        raise GigamilError(
            "patch stores have different patch shapes "
            f"{', '.join(f'{s} (e.g. slide {i})' for s, i in sorted(first.items()))}; "
            "extract all slides with the same preprocessing.patches settings"
        )
    return int(next(iter(shapes))[0])


class Feed(NamedTuple):
    """How bags are read: ``workers`` decoding threads, chunks in pinned memory or not."""

    workers: int = 1
    pin_memory: bool = False

    @classmethod
    def for_device(cls, device: torch.device, threads: int) -> Feed:
        """``threads`` decoding workers; pinned memory when the model runs on CUDA."""
        return cls(max(1, int(threads)), device.type == "cuda")


MPP_TOLERANCE = 0.01  # relative: patches of two slides (or slide and model) must agree to 1 %


def store_mpp(bag: ZarrBag | FeatureBag) -> float | None:
    """The µm/px of a store's patches (``effective_mpp``, else ``target_mpp``); None if the
    store does not say (a positive number is required)."""
    for key in ("effective_mpp", "target_mpp"):
        value = bag.attrs.get(key)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None


def _patch_mpp(items: Sequence[BagItem]) -> float | None:
    """The common µm/px of the fold's patches (median); GigamilError when two stores differ by
    more than 1 % (training on a mix of resolutions is an error, not a silent average)."""
    known = {it.slide_id: m for it in items if (m := store_mpp(it.bag)) is not None}
    if not known:
        return None
    lo = min(known, key=known.__getitem__)
    hi = max(known, key=known.__getitem__)
    if known[hi] > known[lo] * (1 + MPP_TOLERANCE):
        raise GigamilError(
            f"patch stores at different resolutions: slide {lo} at {known[lo]:g} µm/px, slide "
            f"{hi} at {known[hi]:g} µm/px; extract all slides with the same "
            "preprocessing.patches.mpp"
        )
    return float(np.median(list(known.values())))


def _stain_normalization(items: Sequence[BagItem]) -> str | None:
    """The stain normalisation of the fold's patches (:func:`store_stain_normalization`; None
    when no store says); GigamilError when two stores differ (normalised and scanned colours
    in one training set)."""
    known = {it.slide_id: s for it in items if (s := store_stain_normalization(it.bag))}
    if len(set(known.values())) > 1:
        by: dict[str, str] = {}
        for sid, s in sorted(known.items()):
            by.setdefault(s, sid)  # the first slide of each
        shown = ", ".join(f"slide {sid} {s!r}" for s, sid in sorted(by.items()))
        raise GigamilError(
            f"patch stores with different stain normalisations ({shown}); extract all slides "
            "with the same preprocessing.patches.stain_normalization"
        )
    return next(iter(known.values()), None)


def store_preprocessing(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing a store's attributes record besides patch size, µm/px and stain
    normalisation, by config key: ``preprocessing.patches.min_tissue``, ``.stride_px`` (the
    stride used: patch_px without overlap; another stride changes the bag and its grid), ``.codec``
    and (JPEG only) ``.jpeg_quality``, and the ``preprocessing.tissue`` settings of a tissue mask gigamil
    computed (its ``mask_params``; a hand-drawn mask records none). A feature store records its
    patch store's (older ones its codec only). Keys a store does not record are left out."""
    mask = attrs.get("mask_params") or {}
    tissue = {
        f"preprocessing.tissue.{f.name}": mask.get(f.name) for f in dataclasses.fields(TissueConfig)
    }
    patches = {
        f"preprocessing.patches.{k}": attrs.get(k)
        for k in ("min_tissue", "stride_px", "codec", "jpeg_quality")
    }
    return {k: v for k, v in {**patches, **tissue}.items() if v is not None}


def _preprocessing(items: Sequence[BagItem]) -> dict[str, Any]:
    """:func:`store_preprocessing` of the fold's stores: the keys on which every store that
    records them agrees (model.pt's ``preprocessing``; ``gigamil predict`` compares a new
    slide's store with it)."""
    values: dict[str, list] = {}
    for it in items:
        for key, value in store_preprocessing(it.bag.attrs).items():
            values.setdefault(key, []).append(value)
    return {k: v[0] for k, v in values.items() if all(x == v[0] for x in v)}


def preprocessing_warning(
    stores: Mapping[str, Mapping[str, Any]],
    recorded: Mapping[str, Any] | None,
    patch_px: int | None = None,
) -> str | None:
    """Why the stores of slides to predict (``stores``: slide_id → the store's attributes) hold
    other patches than the model learnt on: each key of :func:`store_preprocessing` whose value differs from
    ``recorded`` (model.pt's ``preprocessing``), with the slides' values and up to five slides of
    each; None when none differs, or the model (older than the record) or a store does not say.
    ``patch_px``: the model's patch size; a store of another (an error of its own, named when
    the slide is predicted) is not compared, as its stride differs with the size.
    """
    if not recorded:
        return None
    differ: dict[str, dict[str, list[str]]] = {}
    for slide_id, attrs in stores.items():
        if patch_px is not None and attrs.get("patch_px") not in (None, patch_px):
            continue
        for key, value in store_preprocessing(attrs).items():
            if key in recorded and value != recorded[key]:
                differ.setdefault(key, {}).setdefault(repr(value), []).append(str(slide_id))
    if not differ:
        return None
    parts = []
    for key, by_value in differ.items():
        values = "; ".join(
            f"{value} ({len(ids)} slide(s): {shown(ids)})" for value, ids in by_value.items()
        )
        parts.append(f"{key} {values} where the training patches had {recorded[key]!r}")
    n = len({s for by_value in differ.values() for ids in by_value.values() for s in ids})
    return (
        f"{n} of the {len(stores)} slides to predict were cut with other preprocessing than the "
        f"model's training patches: {'; '.join(parts)}. Their patches differ from those the "
        "model learnt on, which can shift its predictions: cut them with the preprocessing of "
        "the config the model was trained with (gigamil mask / gigamil patches --config "
        "CONFIG.yaml)"
    )


def _features(items: Sequence[BagItem]) -> dict[str, Any] | None:
    """``{encoder_id, dim}`` when every bag is a feature store of one encoder, None when every
    bag is a patch store; GigamilError for a mix."""
    kinds = {isinstance(it.bag, FeatureBag) for it in items}
    if kinds == {False}:
        return None
    if kinds != {True}:
        raise GigamilError("some slides are patch stores and some feature stores; use one kind")
    ids = {(it.bag.encoder_id, it.bag.dim) for it in items}  # type: ignore[union-attr]
    if len(ids) != 1:
        raise GigamilError(
            f"feature stores of different encoders {sorted(i for i, _ in ids)}; "
            "extract every slide with the same encoder"
        )
    encoder, dim = next(iter(ids))
    # the weights that encoded them (recorded since 2026-12-07): one id, other weights when a
    # torch/timm upgrade changed a random-init or named encoder between two extractions
    prints = {it.bag.attrs.get("encoder_sha256") for it in items} - {None}
    if len(prints) > 1:
        raise GigamilError(
            f"the feature stores of encoder {encoder} were encoded by {len(prints)} different "
            "sets of weights (a torch, timm or torchvision upgrade between extractions?); "
            f"delete the feature stores of {encoder} and rerun to encode every slide again"
        )
    weights = {"encoder_sha256": next(iter(prints))} if prints else {}  # none: older stores
    return {"encoder_id": encoder, "dim": dim, **weights}


def seen_slides(train: pd.DataFrame, val: pd.DataFrame) -> dict[str, list]:
    """``{"slides": [[cohort, slide_id], ...], "patient_ids": [...]}`` (sorted, unique) of the
    training and validation slides: what a model trained on them has seen (model.pt's
    ``training_slides``)."""
    cols = ["cohort", "slide_id", "patient_id"]
    both = pd.concat([train[cols], val[cols]]).astype(str)
    return {
        "slides": sorted({(c, s) for c, s in zip(both["cohort"], both["slide_id"], strict=True)}),
        "patient_ids": sorted(set(both["patient_id"])),
    }


@dataclass(frozen=True)
class FoldData:
    """The opened bags of one fold."""

    classes: list[str]
    train: list[BagItem]
    val: list[BagItem]
    patch_px: int
    patch_mpp: float | None = None
    features: dict[str, Any] | None = None  # {encoder_id, dim[, encoder_sha256]}: features
    stain_normalization: str | None = None  # of the patches (None: the stores do not say)
    # every training and validation slide given (with or without patches) and their patients:
    # model.pt records them so predict_slides can name slides of patients the model has seen
    seen: dict[str, list] | None = None
    preprocessing: dict[str, Any] | None = None  # :func:`_preprocessing`

    @classmethod
    def open(
        cls,
        train: pd.DataFrame,
        val: pd.DataFrame,
        classes: Sequence[str],
        feed: Feed | None = None,
    ) -> FoldData:
        """Open the fold's stores; ``feed``: how their chunks are read (one worker, no pinning
        by default)."""
        train_items = _open_bags(train, classes, "training", feed)
        val_items = _open_bags(val, classes, "validation", feed)
        if not train_items:
            raise GigamilError(
                f"no training slide has patches ({_no_patches_hint(train)}); nothing to train on"
            )
        both = train_items + val_items
        ids, stores = [it.slide_id for it in both], [it.bag.path for it in both]
        if problem := swapped_store(ids, stores, [it.bag.attrs.get("slide_id") for it in both]):
            raise GigamilError(f"slides to train on: {problem}")
        seen = {it.label for it in train_items}
        if len(seen) < len(classes):
            raise GigamilError(_lacking_class_message(train, classes, seen))
        items = _keep_decoded(train_items + val_items)
        train_items, val_items = items[: len(train_items)], items[len(train_items) :]
        return cls(
            list(classes),
            train_items,
            val_items,
            _patch_px(items),
            _patch_mpp(items),
            _features(items),
            _stain_normalization(items),
            seen_slides(train, val),
            _preprocessing(items),
        )


def shared_store(slides: pd.DataFrame) -> pd.Series | None:
    """The rows (a bool mask) that give the first ``store`` standing in two or more rows of
    ``slides`` (paths compared resolved: two ids given one slide's patches), or None."""
    stores = slides["store"].map(lambda p: str(Path(p).resolve()))
    if not stores.duplicated().any():
        return None
    return stores == stores[stores.duplicated(keep=False)].iloc[0]


def check_fold_slides(train: pd.DataFrame, val: pd.DataFrame) -> None:
    """Refuse a fold that the workflow's folds (:func:`gigamil.splits.make_folds`) never give:
    a slide listed twice, two slides with the same ``store`` (when the tables have one: one
    slide's patches under two ids, e.g. a copied row), a patient in both the training and the
    validation slides (the validation would see the training patient), or a patient whose
    slides carry different labels.

    Raises:
        GigamilError: naming the slide or patient.
    """
    both = pd.concat([train.assign(_part="training"), val.assign(_part="validation")])
    ids = both["slide_id"].astype(str)
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        parts = " and ".join(sorted(set(both.loc[ids == dup, "_part"])))
        raise GigamilError(f"slide {dup} is listed twice ({parts} slides)")
    same = shared_store(both) if "store" in both else None
    if same is not None:
        raise GigamilError(
            f"slides {', '.join(ids[same])} have the same store {both['store'][same].iloc[0]}"
            f" ({' and '.join(sorted(set(both.loc[same, '_part'])))} slides): one slide's "
            "patches under two ids; give each slide its own store"
        )
    leak = both.groupby(both["patient_id"].astype(str))["_part"].nunique()
    if (leak > 1).any():
        raise GigamilError(
            f"patient {leak.idxmax()} has training and validation slides: the validation would "
            "score a patient the model trained on; give each patient's slides to one side"
        )
    labels_per_patient(both)  # the check of gigamil.splits.patient_table
