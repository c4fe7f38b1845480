"""Colour scales of the attention heatmaps (``heatmaps.normalize``): what colour each patch gets.

``probability`` and ``relative`` compare across slides; ``rank``, ``percentile`` and ``minmax``
(:data:`PER_SLIDE`) normalise each slide on its own (see :func:`scale_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gigamil.errors import GigamilError

PER_SLIDE = ("rank", "percentile", "minmax")
SCALES = ("probability", "relative", *PER_SLIDE)
DEFAULT_SCALE = "probability"
RELATIVE_RANGE = (0.01, 100.0)  # the relative scale's colour bar: N x attention, log10
FLAT = 1e-6  # relative spread below which a slide's attention counts as constant (float32)


def _flat(lo: float, hi: float) -> bool:
    """Whether values from ``lo`` to ``hi`` spread less than ``FLAT`` of their largest
    magnitude: rounding of float32 attention, not a pattern."""
    return hi - lo <= FLAT * max(abs(hi), abs(lo))


def normalize_attention(att: np.ndarray, method: str = "rank") -> np.ndarray:
    """Scale attention (N,) to [0, 1] per slide.

    ``rank``: rank / N (ties share their mean rank); ``percentile``: clip to the 1st-99th
    percentiles, then min-max (min-max alone when those percentiles are equal: the under 1 %
    of patches that stand out are then all the pattern, e.g. one hot patch among 200, which
    clipping painted as flat as the rest); ``minmax``: min-max. A constant array maps to 0.5, and so does
    one whose spread is below ``FLAT`` of its largest magnitude: attention is computed in
    float32 (about 1e-7 relative precision), so such a spread is rounding, not a pattern.
    """
    att = np.asarray(att, dtype=np.float64)
    if method not in PER_SLIDE:
        choices = ", ".join(PER_SLIDE)
        raise GigamilError(f"heatmaps.normalize: {method!r} is not one of {choices}")
    if att.size == 0:
        return att
    if method == "rank":
        from scipy.stats import rankdata  # here: scipy.stats takes about 1 s to import

        if _flat(float(att.min()), float(att.max())):
            return np.full(att.shape, 0.5)  # as the other modes: no patch is above another
        return rankdata(att) / att.size
    if method == "percentile":
        lo, hi = np.percentile(att, [1.0, 99.0])
        if not _flat(lo, hi):
            att = np.clip(att, lo, hi)
    lo, hi = float(att.min()), float(att.max())
    if _flat(lo, hi):
        return np.full(att.shape, 0.5)
    return (att - lo) / (hi - lo)


@dataclass(frozen=True)
class ColourScale:
    """Colour of every patch: ``values`` (N,) positions on the colour bar in [0, 1], the colour
    bar's ``label`` (what the colour means) and its ``ticks`` (positions) and ``tick_labels``."""

    values: np.ndarray
    label: str
    ticks: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    tick_labels: tuple[str, ...] = ("0", "0.25", "0.5", "0.75", "1")


def scale_attention(
    att: np.ndarray,
    method: str = DEFAULT_SCALE,
    *,
    probability: float | None = None,
    positive: str = "positive",
    weight: str = "attention",
) -> ColourScale:
    """The colour of each patch of a slide (``heatmaps.normalize``).

    Attention says where the model looked, not what it saw: the softmax weights of every slide sum
    to 1, so any per-slide normalisation (``rank``, ``percentile``, ``minmax``) paints the
    most-attended patches of a slide the model calls normal (P(lesion) = 3e-6) as red as the
    tumour of a lesion slide. Two scales compare across slides:

    - ``probability`` (the default): P(positive) x attention / the slide's largest attention. The
      map keeps its shape (where the model looked, relative to the patch that weighed most) and the
      slide's predicted probability sets its height, so red means "the model calls this slide
      positive and this patch carried the decision"; a confidently-normal slide stays cool
      everywhere, and two slides' colours mean the same. This is the honest default.
    - ``relative``: N x attention (1 = uniform attention over the N patches), on a fixed log
      scale from 0.01 to 100: how concentrated the model's attention is, comparable across slides,
      but it says nothing about the predicted class (a normal slide may be concentrated too).

    Args:
        att: (N,) attention (softmax weights, or their mean over fold models).
        method: ``probability``, ``relative``, ``rank``, ``percentile`` or ``minmax``.
        probability: the slide's predicted P(positive) in [0, 1]; required by ``probability``.
        positive: the positive class's name, for the colour bar's label.
        weight: what ``att`` is, for the labels: ``attention``, or ``patch probability`` for
            ``model.pool: instance`` (each patch's P(positive) divided by the slide's sum).
    """
    att = np.asarray(att, dtype=np.float64).reshape(-1)
    if method not in SCALES:
        raise GigamilError(f"heatmaps.normalize: {method!r} is not one of {', '.join(SCALES)}")
    if method in PER_SLIDE:
        label = {
            "rank": f"{weight} rank within the slide (not comparable across slides)",
            "percentile": f"{weight}, 1-99th pct of the slide (not comparable across slides)",
            "minmax": f"{weight}, min-max of the slide (not comparable across slides)",
        }[method]
        return ColourScale(normalize_attention(att, method), label)
    if method == "relative":
        return _relative_scale(att, weight)
    return _probability_scale(att, probability, positive, weight)


def _relative_scale(att: np.ndarray, weight: str) -> ColourScale:
    """``relative``: N x ``att`` (N,) on a log10 scale over RELATIVE_RANGE, clipped to it."""
    lo, hi = np.log10(RELATIVE_RANGE)
    with np.errstate(divide="ignore"):
        rel = np.log10(np.maximum(att * att.size, 1e-300))
    values = np.clip((rel - lo) / (hi - lo), 0.0, 1.0)
    exps = np.arange(int(lo), int(hi) + 1)
    labels = [f"{10.0**e:g}" for e in exps]
    labels[0], labels[-1] = f"≤{labels[0]}", f"≥{labels[-1]}"
    return ColourScale(
        values,
        f"{weight} share × N (1 = uniform; log scale)"
        if weight != "attention"
        else "attention × N (1 = uniform; log scale)",
        tuple(float((e - lo) / (hi - lo)) for e in exps),
        tuple(labels),
    )


def _probability_scale(
    att: np.ndarray, probability: float | None, positive: str, weight: str
) -> ColourScale:
    """``probability``: ``probability`` x ``att`` (N,) / its largest value; GigamilError
    without a finite probability in [0, 1]."""
    if probability is None or not np.isfinite(probability):
        raise GigamilError(
            "heatmaps.normalize: probability needs the slide's predicted probability "
            "(gigamil heatmap --predictions), or choose relative, rank, percentile or minmax"
        )
    if not 0.0 <= probability <= 1.0:
        raise GigamilError(f"probability {probability} is not in [0, 1]")
    top = float(att.max()) if att.size else 0.0
    rel = att / top if top > 0 else np.zeros_like(att)
    return ColourScale(float(probability) * rel, f"P({positive}) × {weight} / slide's top {weight}")
