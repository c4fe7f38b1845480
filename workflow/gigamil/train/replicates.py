"""``training.replicates``: a deep ensemble of N models per fold, stored as one ``model.pt``.

With ``replicates: N`` > 1, :func:`gigamil.train.run.train_fold` trains the fold N times, member
``r`` with seed ``training.seed + r`` in ``<fold dir>/replicate{r}/`` (its own model.pt, last.pt
and train_log.csv: a killed job resumes the member it was training, and members already trained
are kept when N grows), each member calibrated on the fold's training and validation slides
(``training.logit_calibration``). :func:`combine_replicates` then writes the fold's ``model.pt``
(the members' weights and calibration maps under ``replicates``; loaded as a
:class:`~gigamil.models.ensemble.ReplicateEnsemble`) and its ``train_log.csv`` (the members' rows
with a ``replicate`` column). Why: on the real-tissue benchmark a single model's pooled
out-of-fold AUC varies by up to 0.2 between training seeds (docs/real_tissue.md); averaging
members cuts that spread (Lakshminarayanan et al. 2017).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError
from gigamil.settings import TrainingConfig
from gigamil.train.checkpoint import atomic_save, load_checkpoint, write_train_log

log = logging.getLogger(__name__)

MEMBER_KEYS = ("state_dict", "epoch", "metrics", "logit_calibration", "learning")
SHARED_KEYS = (
    "model_config",
    "classes",
    "patch_px",
    "patch_mpp",
    "features",
    "stain_normalization",
)


def _shared(ckpt: dict[str, Any], key: str) -> Any:
    """A shared key of a member's model.pt; a member trained before gigamil recorded the stain
    normalisation (no key) counts as ``none``, like its stores."""
    value = ckpt.get(key)
    return "none" if key == "stain_normalization" and value is None else value


def replicate_dir(out_dir: str | Path, replicate: int) -> Path:
    """The directory of member ``replicate`` (0-based) of a fold: ``out_dir/replicate{r}``."""
    return Path(out_dir) / f"replicate{int(replicate)}"


def replicate_config(training: TrainingConfig, replicate: int) -> TrainingConfig:
    """The training settings of member ``replicate``: seed ``training.seed + replicate`` and a
    single model (its resume signature is that of a one-model fold with that seed; member 0 of
    ``replicate_validation: rotate`` trains on the fold's own split, so its signature is that
    of ``fixed``)."""
    rotation = training.replicate_validation if replicate > 0 else "fixed"
    return dataclasses.replace(
        training,
        seed=int(training.seed) + int(replicate),
        replicates=1,
        replicate_validation=rotation,
    )


def rotated_validation(
    train: pd.DataFrame, val: pd.DataFrame, replicate: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Member ``replicate``'s (training, validation) slides under ``training.
    replicate_validation: rotate`` (cross-validation bagging: Krogh & Vedelsby 1995).

    ``train``/``val``: the fold's slide tables (``slide_id``, ``patient_id``, ``label``; other
    columns kept). Member 0 keeps the fold's split. For member r > 0 the fold's non-test
    patients of each class (a patient's class: its slides' labels) are put in one cycle: the
    fold's validation patients first, then the training patients in an order drawn with
    ``seed``; member r validates on the ``k`` patients that follow the first ``r * k`` of the
    cycle, ``k`` the number of that class's validation patients. With 1 / k members per class
    cycle every patient validates once, so the members together train on all of them. No
    validation slides (``val`` empty): the split is returned unchanged."""
    if replicate == 0 or val.empty:
        return train, val
    pool = pd.concat([val, train], ignore_index=True)
    patient_class = pool.groupby("patient_id", sort=False)["label"].agg(
        lambda s: "|".join(sorted(map(str, set(s))))
    )
    val_patients = set(val["patient_id"])
    rng = np.random.default_rng([int(seed), 7919])
    chosen: list[str] = []
    for cls in sorted(set(patient_class)):
        members = patient_class.index[patient_class == cls]
        first = [p for p in members if p in val_patients]
        rest = [p for p in members if p not in val_patients]
        cycle = first + [rest[i] for i in rng.permutation(len(rest))]
        k = len(first)
        if k == 0 or k >= len(cycle):  # no validation patient of this class, or no other one
            chosen += first
            continue
        start = (replicate * k) % len(cycle)
        chosen += [cycle[(start + i) % len(cycle)] for i in range(k)]
    is_val = pool["patient_id"].isin(chosen)
    order = {s: i for i, s in enumerate([*train["slide_id"], *val["slide_id"]])}
    new_train = pool[~is_val].sort_values("slide_id", key=lambda c: c.map(order))
    new_val = pool[is_val].sort_values("slide_id", key=lambda c: c.map(order))
    return new_train.reset_index(drop=True), new_val.reset_index(drop=True)


def combine_replicates(
    member_dirs: Sequence[str | Path], seeds: Sequence[int], out_dir: str | Path
) -> Path:
    """Write ``out_dir/model.pt`` from the members' model.pt files (``member_dirs``, in replicate
    order, trained with training seeds ``seeds``) and ``out_dir/train_log.csv`` from their logs; returns the model.pt path.

    model.pt holds the members' shared header (model configuration, classes, patch size and
    µm/px, ...) and ``replicates``: per member ``seed``, ``epoch``, ``metrics``,
    ``state_dict``, ``logit_calibration`` and ``learning`` (its training loss against chance,
    :func:`gigamil.train.learning.learning_record`). Raises :class:`GigamilError` when a member's
    model.pt is missing or the members disagree on the shared keys."""
    out_dir = Path(out_dir)
    ckpts = []
    for d in map(Path, member_dirs):
        if not (d / "model.pt").is_file():
            raise GigamilError(f"{d / 'model.pt'}: member model missing; rerun to train it")
        ckpts.append(load_checkpoint(d / "model.pt"))
    first = ckpts[0]
    for d, ckpt in zip(member_dirs, ckpts, strict=True):
        differ = [k for k in SHARED_KEYS if _shared(ckpt, k) != _shared(first, k)]
        if differ:
            raise GigamilError(
                f"{d}: member model differs from {member_dirs[0]} in {differ}; delete the "
                "fold directory and rerun"
            )
    header = {k: v for k, v in first.items() if k not in MEMBER_KEYS}
    recorded = [c["training_slides"] for c in ckpts if "training_slides" in c]
    if recorded and "training_slides" not in header:  # members from before it was recorded
        header["training_slides"] = recorded[0]
    members: list[dict[str, Any]] = []
    for seed, ckpt in zip(seeds, ckpts, strict=True):
        members.append({"seed": int(seed), **{k: ckpt[k] for k in MEMBER_KEYS if k in ckpt}})
    model_path = out_dir / "model.pt"
    atomic_save({**header, "replicates": members}, model_path)
    rows: list[dict[str, Any]] = []
    columns: list[str] = ["replicate"]
    for r, d in enumerate(member_dirs):
        with open(Path(d) / "train_log.csv", newline="") as f:
            reader = csv.DictReader(f)
            columns += [c for c in reader.fieldnames or [] if c not in columns]
            rows += [{"replicate": r, **row} for row in reader]
    write_train_log(out_dir / "train_log.csv", rows, columns)
    log.info(
        "model.pt: %d replicate models (best epochs %s)",
        len(members),
        ", ".join(str(m.get("epoch")) for m in members),
    )
    return model_path
