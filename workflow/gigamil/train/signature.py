"""What differs between two resume signatures (``last.pt``'s and the training's now), named."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# the signature's parts that are not settings (gigamil.train.trainer.Trainer._signature)
PARTS = {
    "train": "the training slides (ids, labels, patch counts or patches)",
    "val": "the validation slides (ids, labels, patch counts or patches)",
    "patches": "the patches' size, µm/px or stain normalisation",
    "features": "the cached features",
    "world": "the number of processes",
    "train_order": "the order of the training rows",
    "val_order": "the order of the validation rows",
    "classes": "classes",
}

# settings that strategy em does not train with (every round runs, the best by
# early_stopping.metric is kept; the schema's training.strategy): rule train_fold's params and
# last.pt's signature keep them (the params of earlier runs), but they are left out where
# last.pt's signature is compared (:func:`compared_part`), so a changed one resumes the fold
EM_UNUSED = ("epochs",)
EM_UNUSED_EARLY_STOPPING = ("patience", "min_epochs")


def changed_keys(old: Any, new: Mapping[str, Any], limit: int = 6) -> str:
    """The parts of ``new`` that ``old`` holds otherwise, as dotted setting names one level deep
    (``training.lr``, ``model.att_dim``) or a phrase for the slides and patches (:data:`PARTS`);
    at most ``limit``, then ``...``. ``old`` not a mapping (a damaged or foreign signature):
    ``"no signature"``."""
    if not isinstance(old, Mapping):
        return "no signature"
    changed: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            inner = sorted(set(a) | set(b), key=str)
            changed += [f"{key}.{k}" for k in inner if a.get(k) != b.get(k)]
        else:
            changed.append(PARTS.get(str(key), str(key)))
    shown = ", ".join(changed[:limit])
    return shown + (", ..." if len(changed) > limit else "") if changed else "nothing named"


def compared_part(sig: Any) -> Any:
    """What of a resume signature must match for ``last.pt`` to resume: ``sig`` without the
    training keys that strategy em does not use (:data:`EM_UNUSED`, early_stopping's
    :data:`EM_UNUSED_EARLY_STOPPING`) when its training is ``strategy: em``; else (other
    strategies, a signature that is no mapping) ``sig`` itself."""
    training = sig.get("training") if isinstance(sig, Mapping) else None
    if not isinstance(training, Mapping) or training.get("strategy") != "em":
        return sig
    training = {k: v for k, v in training.items() if k not in EM_UNUSED}
    stopping = training.get("early_stopping")
    if isinstance(stopping, Mapping):
        drop = EM_UNUSED_EARLY_STOPPING
        training["early_stopping"] = {k: v for k, v in stopping.items() if k not in drop}
    return {**sig, "training": training}


def row_order_keys(train: Sequence[Any], val: Sequence[Any]) -> dict[str, list[str]]:
    """``{"train_order": [slide_id, ...]}`` (and ``val_order``) for a part whose rows are not in
    slide_id order, for a fold's ``last.pt`` signature: the shuffle and each bag's seed follow
    the rows' order, so a resume with the rows reordered (``gigamil train --train-csv``) would
    mix two trainings. Parts in slide_id order (the workflow's folds.csv within a cohort) add
    nothing: their signature is that of earlier runs."""
    keys = {}
    for part, items in (("train", train), ("val", val)):
        ids = [str(it.slide_id) for it in items]
        if ids != sorted(ids):
            keys[f"{part}_order"] = ids
    return keys
