"""What differs between two resume signatures (``last.pt``'s and the training's now), named."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# the signature's parts that are not settings (gigamil.train.trainer.Trainer._signature)
PARTS = {
    "train": "the training slides (ids, labels, patch counts or patches)",
    "val": "the validation slides (ids, labels, patch counts or patches)",
    "patches": "the patches' size, µm/px or stain normalisation",
    "features": "the cached features",
    "world": "the number of processes",
    "classes": "classes",
}


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
