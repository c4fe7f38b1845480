"""Slide-level metrics agree with scikit-learn; bootstrap CIs and fold tables behave."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from gigamil.evaluate import metrics as M


def _random_preds(rng: np.random.Generator, n: int, c: int, ties: bool = False, signal=1.5):
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + signal * np.eye(c)[y]
    if ties:
        logits = np.round(logits, 0)  # many tied scores
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


@pytest.mark.parametrize("c", [2, 3, 5])
@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_sklearn(c, ties):
    rng = np.random.default_rng(c + 10 * ties)
    for _ in range(5):
        y, p = _random_preds(rng, 60, c, ties)
        m = M.classification_metrics(y, p, [f"k{i}" for i in range(c)])
        pred = p.argmax(1)
        if c == 2:
            ref_auc = skm.roc_auc_score(y, p[:, 1])
        else:
            ref_auc = skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
        assert m["auc"] == pytest.approx(ref_auc, abs=1e-12)
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
        ref_f1 = skm.f1_score(y, pred, average="macro", zero_division=0)
        assert m["macro_f1"] == pytest.approx(ref_f1)
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        rec = skm.recall_score(y, pred, average=None, labels=list(range(c)), zero_division=0)
        for i in range(c):
            assert m[f"recall_k{i}"] == pytest.approx(rec[i])
        ref_cm = skm.confusion_matrix(y, pred, labels=range(c))
        np.testing.assert_array_equal(m["confusion"], ref_cm)


@pytest.mark.parametrize("c", [2, 3, 5])
def test_brier_score_matches_its_definition_and_sklearn(c):
    rng = np.random.default_rng(c)
    y, p = _random_preds(rng, 40, c)
    m = M.classification_metrics(y, p, [f"k{i}" for i in range(c)])
    squared = ((p - np.eye(c)[y]) ** 2).sum(axis=1).mean()  # Brier (1950): sum over classes
    if c == 2:  # halved: the mean squared error of P(positive), scikit-learn's binary Brier
        assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p[:, 1]), abs=1e-12)
        assert m["brier"] == pytest.approx(squared / 2, abs=1e-12)
    else:
        assert m["brier"] == pytest.approx(squared, abs=1e-12)
    uniform = np.full_like(p, 1 / c)
    assert M.brier_score(y, uniform) == pytest.approx(0.25 if c == 2 else 1 - 1 / c)
    assert M.brier_score(y, np.eye(c)[y]) == 0.0
    assert np.isnan(M.brier_score(np.array([], dtype=int), np.zeros((0, c))))


def test_macro_f1_with_a_class_never_predicted_matches_sklearn():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 1])  # class 2 never predicted
    cm = M.confusion_matrix(y, pred, 3)
    assert M.macro_f1(cm) == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert M.balanced_accuracy(cm) == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_roc_curve_matches_sklearn_points():
    rng = np.random.default_rng(0)
    y, p = _random_preds(rng, 50, 2, ties=True)
    fpr, tpr = M.roc_curve(y, p[:, 1])
    ref_fpr, ref_tpr, _ = skm.roc_curve(y, p[:, 1], drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(y, p[:, 1]))


def test_roc_band_holds_the_curve_narrows_and_keeps_patients_together():
    rng = np.random.default_rng(2)
    y, p = _random_preds(rng, 60, 2, signal=1.0)
    grid, low, high = M.roc_band(y, p[:, 1], n_boot=400, seed=0)
    assert grid.shape == low.shape == high.shape == (101,)
    assert (low <= high).all() and (np.diff(low) >= 0).all() and (np.diff(high) >= 0).all()
    # the curve itself, read at the grid as the band reads each resample, lies inside
    fpr, tpr = M.roc_curve(y, p[:, 1])
    at_grid = tpr[np.searchsorted(fpr, grid, side="right") - 1]
    assert ((low <= at_grid) & (at_grid <= high)).mean() > 0.95
    assert high[-1] == low[-1] == 1.0  # every curve ends at (1, 1)
    y_big, p_big = _random_preds(rng, 960, 2, signal=1.0)
    _, low_big, high_big = M.roc_band(y_big, p_big[:, 1], n_boot=400, seed=0)
    assert (high_big - low_big)[10:90].mean() < (high - low)[10:90].mean() / 2
    # perfect separation: every resample's curve is perfect, so is the band
    _, low1, high1 = M.roc_band([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_boot=50)
    assert (low1 == 1.0).all() and (high1 == 1.0).all()
    # groups resample together: a patient holding both classes keeps both in every resample,
    # so the band of one such patient is its own curve; rows resampled alone give a wider band
    same = np.zeros(4, int)
    _, lo_g, hi_g = M.roc_band([0, 1, 0, 1], [0.3, 0.6, 0.7, 0.9], same, n_boot=100)
    _, lo_r, hi_r = M.roc_band([0, 1, 0, 1], [0.3, 0.6, 0.7, 0.9], None, n_boot=100)
    assert (hi_g - lo_g).max() == 0.0 < (hi_r - lo_r).max()
    # one class only: no band
    assert np.isnan(M.roc_band([1, 1, 1], [0.2, 0.5, 0.9], n_boot=20)[1]).all()


def test_auc_is_nan_with_one_class():
    assert np.isnan(M.roc_auc(np.zeros(4, int), np.full((4, 2), 0.5)))


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    classes = ["a", "b"]
    widths = []
    for n in (40, 640):
        y, p = _random_preds(rng, n, 2, signal=0.7)
        est = M.classification_metrics(y, p, classes)
        ci = M.bootstrap_ci(y, p, classes, groups=np.arange(n) // 2, n_boot=300, seed=0)
        for k in M.SCALAR_METRICS:
            lo, hi = ci[k]
            assert lo <= est[k] <= hi, (k, lo, est[k], hi)
        widths.append(ci["auc"][1] - ci["auc"][0])
    assert widths[1] < widths[0] / 2
    # deterministic for a seed
    assert M.bootstrap_ci(y, p, classes, n_boot=50, seed=3) == M.bootstrap_ci(
        y, p, classes, n_boot=50, seed=3
    )


def test_multiclass_bootstrap_averages_the_same_classes_in_every_resample():
    """A resample without a slide of class c averaged the AUCs of a and b only: another quantity
    than the macro AUC it gives an interval for. Such resamples are now skipped."""
    rng = np.random.default_rng(0)
    y = np.array([0] * 8 + [1] * 8 + [2] * 2)
    probs = rng.dirichlet(np.ones(3), size=y.size)
    probs[y == 2] = [0.05, 0.05, 0.9]  # class c: perfectly separated, AUC 1
    ci = M.bootstrap_ci(y, probs, ["a", "b", "c"], n_boot=300, seed=1)
    ref = []
    for idx in M._group_resamples(y.size, None, 300, 1):
        per = np.array(M.per_class_auc(y[idx], probs[idx]))
        ref.append(per.mean() if np.isfinite(per).all() else np.nan)
    ref = np.array(ref)
    assert np.isnan(ref).any()  # some resamples lack class c
    expected = np.percentile(ref[np.isfinite(ref)], [2.5, 97.5])
    assert ci["auc"] == pytest.approx(tuple(expected))


def test_balanced_accuracy_and_macro_f1_intervals_skip_resamples_without_a_class():
    """Both positive patients missed: every two-class resample has balanced accuracy 0.5, but
    the resamples without a positive scored the negatives' recall, 1.0, into the interval
    (0.5, 1.0); macro F1 likewise (a review, 2026-12-06)."""
    y = np.array([1, 1] + [0] * 18)
    p1 = np.r_[0.4, 0.3, np.full(18, 0.1)]
    probs = np.c_[1 - p1, p1]
    ci = M.bootstrap_ci(y, probs, ["neg", "pos"], n_boot=1000, seed=0)
    assert ci["balanced_accuracy"] == (0.5, 0.5)
    f1 = []  # the macro F1 of the resamples with both classes
    for idx in M._group_resamples(y.size, None, 1000, 0):
        if 0 < y[idx].sum() < idx.size:
            f1.append(M.macro_f1(M.confusion_matrix(y[idx], probs[idx].argmax(1), 2)))
    assert ci["macro_f1"] == pytest.approx(tuple(np.percentile(f1, [2.5, 97.5])))
    assert ci["macro_f1"][1] < 1.0


def test_a_fold_of_one_class_has_no_balanced_accuracy_in_the_fold_mean():
    """A fold whose test slides are all normal scored its balanced accuracy as their recall
    (1.0) into the folds' mean beside the two-class folds' values."""
    preds = pd.DataFrame(
        {
            "fold": [0, 0, 0, 0, 1, 1],
            "patient_id": ["a", "b", "c", "d", "e", "f"],
            "label": ["neg", "pos", "neg", "pos", "neg", "neg"],
            "prob_neg": [0.9, 0.6, 0.8, 0.3, 0.9, 0.8],
            "prob_pos": [0.1, 0.4, 0.2, 0.7, 0.1, 0.2],
        }
    )
    table = M.fold_table(preds, ["neg", "pos"])
    assert table.loc["fold0", "balanced_accuracy"] == 0.75
    assert np.isnan(
        table.loc["fold1", ["auc", "balanced_accuracy", "macro_f1"]].astype(float)
    ).all()
    assert table.loc["mean", "balanced_accuracy"] == 0.75
    assert table.loc["fold1", "accuracy"] == 1.0  # defined on one class: kept


def test_a_three_class_fold_lacking_a_class_has_no_auc_in_the_fold_mean():
    """With three classes the macro AUC of a fold without class c averaged a and b alone, and
    went into the folds' mean beside the folds over all three (a review of the reports)."""
    rng = np.random.default_rng(0)
    rows = []
    for fold, labels in [(0, "aabbaabb"), (1, "abcabcabc")]:  # fold 0 has no 'c' slide
        for i, lab in enumerate(labels):
            p = rng.dirichlet([1, 1, 1])
            rows.append(
                {"fold": fold, "patient_id": f"f{fold}p{i}", "label": lab,
                 "prob_a": p[0], "prob_b": p[1], "prob_c": p[2]}
            )  # fmt: skip
    table = M.fold_table(pd.DataFrame(rows), ["a", "b", "c"])
    assert np.isnan(float(table.loc["fold0", "auc"]))
    assert table.loc["mean", "auc"] == pytest.approx(table.loc["fold1", "auc"])


def test_fold_table_mean_and_sd_across_folds():
    rng = np.random.default_rng(2)
    classes = ["neg", "pos"]
    frames = []
    for k in range(3):
        y, p = _random_preds(rng, 30, 2)
        frames.append(
            pd.DataFrame(
                {
                    "fold": k,
                    "patient_id": [f"f{k}p{i // 2}" for i in range(30)],
                    "label": np.array(classes)[y],
                    "prob_neg": p[:, 0],
                    "prob_pos": p[:, 1],
                }
            )
        )
    preds = pd.concat(frames, ignore_index=True)
    table = M.fold_table(preds, classes)
    assert list(table.index) == ["fold0", "fold1", "fold2", "mean", "sd"]
    aucs = [skm.roc_auc_score(f["label"] == "pos", f["prob_pos"]) for f in frames]
    assert table.loc["mean", "auc"] == pytest.approx(np.mean(aucs))
    assert table.loc["sd", "auc"] == pytest.approx(np.std(aucs, ddof=1))
    assert table.loc["fold1", "n_patients"] == 15


def test_paired_auc_difference_sign_interval_and_pairing():
    rng = np.random.default_rng(0)
    n = 80
    y = np.repeat([0, 1], n // 2)
    good = y * 2.0 + rng.normal(size=n)  # AUC about 0.92
    weak = y * 0.5 + rng.normal(size=n)  # AUC about 0.64
    out = M.paired_auc_difference(y, good, weak, groups=np.arange(n) // 2, n_boot=500, seed=1)
    assert out["auc_a"] == pytest.approx(skm.roc_auc_score(y, good))
    assert out["auc_b"] == pytest.approx(skm.roc_auc_score(y, weak))
    assert out["difference"] == pytest.approx(out["auc_a"] - out["auc_b"])
    low, high = out["ci"]
    assert 0 < low < out["difference"] < high  # clearly better: the interval excludes 0
    assert out["p_a_better"] > 0.99
    # pairing: a score against a monotone transform of itself differs by exactly 0 in every resample
    same = M.paired_auc_difference(y, good, np.exp(good), n_boot=200, seed=0)
    assert same["difference"] == 0.0 and same["ci"] == [0.0, 0.0] and same["p_a_better"] == 0.5
    # ties are not "ahead": strictly ahead and level are kept apart (ties count half in p_a_better)
    assert same["p_a_ahead"] == 0.0 and same["p_level"] == 1.0
    assert out["p_a_better"] == pytest.approx(out["p_a_ahead"] + out["p_level"] / 2)
    # swapping the methods mirrors the result
    swapped = M.paired_auc_difference(y, weak, good, groups=np.arange(n) // 2, n_boot=500, seed=1)
    assert swapped["ci"] == pytest.approx([-high, -low])


def test_paired_auc_difference_rejects_bad_input():
    with pytest.raises(M.GigamilError, match="alike"):
        M.paired_auc_difference(np.array([0, 1, 1]), np.zeros(3), np.zeros(2))
    with pytest.raises(M.GigamilError, match="binary"):
        M.paired_auc_difference(np.array([0, 2]), np.zeros(2), np.zeros(2))


def test_paired_auc_difference_resamples_a_patients_slides_together():
    """The benchmark's interval is patient-level: with every patient's slides identical, the
    patient bootstrap of 3 slides each is the row bootstrap of one slide each, draw for draw; a
    bootstrap of slides (groups ignored) would treat 3 copies as 3 patients and narrow it."""
    rng = np.random.default_rng(3)
    k = 16
    y = np.repeat([0, 1], k // 2)
    a, b = y + rng.normal(size=k), 0.4 * y + rng.normal(size=k)
    one = M.paired_auc_difference(y, a, b, n_boot=300, seed=2)
    three = M.paired_auc_difference(
        np.repeat(y, 3), np.repeat(a, 3), np.repeat(b, 3), groups=np.repeat(np.arange(k), 3),
        n_boot=300, seed=2,
    )  # fmt: skip
    for key in ("difference", "ci", "p_a_better", "p_a_ahead", "p_level", "n_boot"):
        assert three[key] == pytest.approx(one[key]), key
    slides = M.paired_auc_difference(
        np.repeat(y, 3), np.repeat(a, 3), np.repeat(b, 3), n_boot=300, seed=2
    )
    assert slides["ci"][1] - slides["ci"][0] < one["ci"][1] - one["ci"][0]


def test_paired_auc_difference_skips_resamples_of_one_class_and_follows_level():
    """On 4 slides many resamples hold one class: they have no AUC and are neither counted in
    ``n_boot`` nor read as "not ahead"; the interval is the requested ``level``'s."""
    y = np.array([0, 0, 1, 1])
    right, wrong = np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.9, 0.8, 0.2, 0.1])
    out = M.paired_auc_difference(y, right, wrong, n_boot=400, seed=0)
    assert 100 < out["n_boot"] < 400  # about 1 in 8 resamples has one class only
    assert out["p_a_ahead"] == 1.0 and out["p_a_better"] == 1.0 and out["ci"] == [1.0, 1.0]
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    a, b = y + rng.normal(size=40), y + rng.normal(size=40)
    wide = M.paired_auc_difference(y, a, b, n_boot=400, seed=0)["ci"]
    narrow = M.paired_auc_difference(y, a, b, n_boot=400, seed=0, level=0.5)["ci"]
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_a_patient_is_scored_by_the_mean_probability_of_their_slides():
    preds = pd.DataFrame(
        {
            "patient_id": ["p1", "p1", "p2", "p3", "p3"],
            "label": ["lesion", "lesion", "normal", "normal", "normal"],
            "prob_lesion": [0.2, 0.9, 0.4, 0.1, 0.6],
            "prob_normal": [0.8, 0.1, 0.6, 0.9, 0.4],
        }
    )
    pat = M.patient_level(preds, ["normal", "lesion"]).set_index("patient_id")
    assert pat["prob_lesion"].to_dict() == pytest.approx({"p1": 0.55, "p2": 0.4, "p3": 0.35})
    assert pat["label"].to_dict() == {"p1": "lesion", "p2": "normal", "p3": "normal"}


def test_a_class_predicted_but_absent_from_the_truth_scores_as_sklearn():
    """A fold (or cohort) with no slide of class c, some slides predicted c: the balanced
    accuracy averages the recall of the classes that have slides (a mean over all three would be
    nan), the macro F1 counts c with F1 0 (it was predicted, and wrongly)."""
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.eye(3)[[0, 0, 2, 1, 2, 0]] * 0.8 + 0.2 / 3  # two slides called class 2
    m = M.classification_metrics(y, probs, ["a", "b", "c"])
    pred = probs.argmax(1)
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        ref_bacc = skm.balanced_accuracy_score(y, pred)
    assert m["balanced_accuracy"] == pytest.approx(ref_bacc) == pytest.approx((2 / 3 + 1 / 3) / 2)
    ref_f1 = skm.f1_score(y, pred, average="macro", zero_division=0)  # labels: truth or pred
    assert m["macro_f1"] == pytest.approx(ref_f1) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert np.isnan(m["recall_c"]) and m["recall_a"] == pytest.approx(2 / 3)


def test_the_macro_f1_interval_averages_the_classes_its_estimate_averages():
    """A cohort without slides of class c (an external one), one slide predicted c: the macro F1
    counts c with F1 0, so it is at most 2/3; the resamples that did not draw that slide averaged
    a and b only and put 1.0 into the interval (0.62, 1.0) of an estimate of 0.655."""
    y = np.array([0] * 15 + [1] * 15)
    pred = y.copy()
    pred[0] = 2
    probs = np.full((y.size, 3), 0.05)
    probs[np.arange(y.size), pred] = 0.9
    m = M.classification_metrics(y, probs, ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    ci = M.bootstrap_ci(y, probs, ["a", "b", "c"], n_boot=500, seed=0)
    ref = [  # scikit-learn's macro F1 over the set's classes a, b, c in every resample
        skm.f1_score(y[idx], pred[idx], average="macro", labels=[0, 1, 2], zero_division=0)
        for idx in M._group_resamples(y.size, None, 500, 0)
        if 0 < y[idx].sum() < idx.size
    ]
    assert ci["macro_f1"] == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])))
    assert ci["macro_f1"][1] <= 2 / 3


def test_the_bootstrap_draws_every_patient_alike_and_keeps_their_slides_together():
    """Each resample draws as many patients as there are, each with probability 1/n (the
    last patient as often as the first), and takes all the slides of every patient drawn."""
    groups = np.array(["p3", "p1", "p2", "p1", "p4", "p3", "p3", "p5"])  # 5 patients, 1-3 slides
    members = {g: set(np.flatnonzero(groups == g)) for g in np.unique(groups)}
    draws = {g: 0 for g in members}
    n_boot = 4000
    for idx in M._group_resamples(groups.size, groups, n_boot, seed=4):
        picked = groups[idx]
        for g in np.unique(picked):
            rows = idx[picked == g]
            copies, rest = divmod(rows.size, len(members[g]))
            assert rest == 0 and set(rows) == members[g]  # whole patients, every slide
            draws[g] += copies
        assert sum(divmod(np.sum(picked == g), len(members[g]))[0] for g in members) == 5
    for g, n in draws.items():  # expected n_boot draws each (5 per resample / 5 patients)
        assert n == pytest.approx(n_boot, rel=0.06), g


def test_the_bootstrap_seed_is_used_and_reproduces():
    """Another seed gives other resamples (other interval bounds); the same seed the same."""
    rng = np.random.default_rng(5)
    y, p = _random_preds(rng, 80, 2, signal=0.7)
    groups = np.arange(80) // 2
    ci = {s: M.bootstrap_ci(y, p, ["a", "b"], groups=groups, n_boot=200, seed=s) for s in (0, 1)}
    assert ci[0]["auc"] != ci[1]["auc"]
    assert ci[1] == M.bootstrap_ci(y, p, ["a", "b"], groups=groups, n_boot=200, seed=1)
    other = y + rng.normal(size=80)
    d = [M.paired_auc_difference(y, p[:, 1], other, n_boot=200, seed=s)["ci"] for s in (0, 1, 1)]
    assert d[0] != d[1] == d[2]


def test_a_patient_with_slides_of_two_labels_is_an_error_at_patient_level():
    """Hand-made prediction CSVs skip the sheets' one-label-per-patient check: the patient-level
    metrics would score the patient by its first slide's label, so it is an error."""
    import pandas as pd

    from gigamil.errors import GigamilError
    from gigamil.evaluate.metrics import patient_level

    preds = pd.DataFrame(
        {
            "patient_id": ["p1", "p1", "p2"],
            "label": ["lesion", "normal", "normal"],
            "prob_normal": [0.2, 0.7, 0.9],
            "prob_lesion": [0.8, 0.3, 0.1],
        }
    )
    with pytest.raises(GigamilError, match=r"patient p1 has slides labelled lesion, normal"):
        patient_level(preds, ["normal", "lesion"])
    table = patient_level(preds.assign(label=["lesion", "lesion", "normal"]), ["normal", "lesion"])
    assert list(table["label"]) == ["lesion", "normal"]
    assert table["prob_lesion"].tolist() == pytest.approx([0.55, 0.1])


def test_paired_auc_difference_defaults_one_class_and_two_dimensional_input():
    """2000 resamples by default; labels of one class give no resample with an AUC: the
    probabilities and the interval are nan, not a coin flip; (n, 1) columns are refused (their
    AUCs would be of the flattened arrays, silently)."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    a, b = y + rng.normal(size=40), y + rng.normal(size=40)
    assert M.paired_auc_difference(y, a, b)["n_boot"] == 2000  # no resample of one class here
    flat = M.paired_auc_difference(np.zeros(6, int), rng.random(6), rng.random(6), n_boot=20)
    assert flat["n_boot"] == 0 and np.isnan(flat["ci"]).all()
    assert np.isnan([flat["p_a_better"], flat["p_a_ahead"], flat["p_level"]]).all()
    with pytest.raises(M.GigamilError, match="alike"):
        M.paired_auc_difference(y[:, None], a[:, None], b[:, None], n_boot=5)


def test_bootstrap_ci_of_the_brier_score_and_a_class_no_slide_has():
    """Each resample scores its own slides (the Brier interval has a width and holds the
    estimate); with three classes and no slide of one, the macro AUC averages the two present,
    in the whole set and in every resample (not nan for want of the third); two classes give
    no per-class AUC intervals."""
    rng = np.random.default_rng(2)
    y, p = _random_preds(rng, 60, 2, signal=0.7)
    ci = M.bootstrap_ci(y, p, ["a", "b"], n_boot=200, seed=0)
    brier = M.classification_metrics(y, p, ["a", "b"])["brier"]
    assert ci["brier"][0] < brier < ci["brier"][1]
    assert not [k for k in ci if k.startswith("auc_")]
    y3 = np.array([0] * 10 + [1] * 10)
    probs = rng.dirichlet(np.ones(3), size=y3.size)
    ci3 = M.bootstrap_ci(y3, probs, ["a", "b", "c"], n_boot=100, seed=0)
    assert np.isfinite(ci3["auc"]).all() and np.isnan(ci3["auc_c"]).all()


def test_roc_band_level_sets_the_percentiles():
    """``level`` is the central interval: level 0 is the median curve (low = high)."""
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 15)
    score = y + rng.normal(size=y.size)
    _, low, high = M.roc_band(y, score, n_boot=100, seed=0, level=0.0)
    np.testing.assert_allclose(low, high)
    _, low95, high95 = M.roc_band(y, score, n_boot=100, seed=0)
    assert (low95 <= low).all() and (high <= high95).all() and (low95 < high95).any()


def test_bootstrap_ci_intervals_are_the_percentiles_of_each_resamples_metric():
    """Each metric's interval is the 2.5-97.5 percentiles of that metric (scikit-learn's) over
    the resamples the bootstrap draws, not of another metric."""
    rng = np.random.default_rng(5)
    y, p = _random_preds(rng, 50, 2, signal=0.7)
    groups = np.arange(50) // 2
    ci = M.bootstrap_ci(y, p, ["a", "b"], groups=groups, n_boot=200, seed=3)
    ref = {"balanced_accuracy": [], "macro_f1": [], "accuracy": []}
    for idx in M._group_resamples(y.size, groups, 200, 3):
        yb, pb = y[idx], p[idx].argmax(axis=1)
        ref["balanced_accuracy"].append(skm.balanced_accuracy_score(yb, pb))
        ref["macro_f1"].append(skm.f1_score(yb, pb, average="macro", labels=[0, 1]))
        ref["accuracy"].append(skm.accuracy_score(yb, pb))
    for metric, values in ref.items():
        assert ci[metric] == pytest.approx(tuple(np.percentile(values, [2.5, 97.5]))), metric
