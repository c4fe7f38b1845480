"""gigamil.viz.plots: training curves (ROC and confusion plots are covered by the evaluate tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gigamil.errors import GigamilError
from gigamil.train.checkpoint import CheckpointSaver
from gigamil.viz.plots import plot_training_curves


def _train_log(path, n=6, best=(0, 1, 1, 3, 3, 3)):
    rows = [
        {
            "epoch": e,
            "train_loss": 0.9 - 0.12 * e,
            "val_loss": 0.8 - 0.05 * e + (0.1 if e > 3 else 0.0),
            "val_auc": min(1.0, 0.5 + 0.1 * e),
            "val_balanced_accuracy": 0.5,
            "lr": 1e-3,
            "seconds": 1.0,
            "best_epoch": best[e],
            "n_train_bags": 8,
            "n_val_bags": 4,
        }
        for e in range(n)
    ]
    pd.DataFrame(rows, columns=CheckpointSaver.LOG_COLUMNS).to_csv(path, index=False)
    return path


def test_training_curves_mark_the_best_epoch_of_the_last_row(tmp_path):
    log = _train_log(tmp_path / "train_log.csv")
    out = tmp_path / "fold0" / "training_curves.png"
    info = plot_training_curves(log, out, "demo: fold 0")
    assert info == {
        "epochs": 6,
        "epochs_per_model": [6],
        "best_epoch": 3,
        "best_epochs": [3],
        "curves": ["train_loss", "val_loss", "val_auc"],
    }
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (960, 408)


def test_training_curves_say_how_each_loss_is_taken(tmp_path, monkeypatch):
    """The training loss (augmented, train mode, class-weighted, while the weights change) and the
    validation loss (eval mode, unweighted) were drawn as "train_loss" and "val_loss" on one
    axis: a gap between them read as overfitting."""
    from matplotlib.figure import Figure

    legends = []
    savefig = Figure.savefig
    monkeypatch.setattr(
        Figure,
        "savefig",
        lambda f, *a, **kw: (
            legends.append([t.get_text() for t in f.axes[0].get_legend().get_texts()])
            or savefig(f, *a, **kw)
        ),
    )
    plot_training_curves(_train_log(tmp_path / "train_log.csv"), tmp_path / "c.png", "fold 0")
    (labels,) = legends
    assert "train (augmented, train mode)" in labels
    assert "val (eval mode)" in labels


def test_training_curves_title_lines_fit_the_figure(tmp_path, monkeypatch):
    """The no-validation note is wrapped: a 165-character line was cut off at both edges."""
    from matplotlib.figure import Figure

    titles = []
    suptitle = Figure.suptitle
    monkeypatch.setattr(
        Figure, "suptitle", lambda f, t, **kw: titles.append(t) or suptitle(f, t, **kw)
    )
    rows = pd.read_csv(_train_log(tmp_path / "train_log.csv"))
    rows[["val_loss", "val_auc", "val_balanced_accuracy"]] = float("nan")
    rows.to_csv(tmp_path / "train_log.csv", index=False)
    plot_training_curves(tmp_path / "train_log.csv", tmp_path / "c.png", "demo: fold 0")
    (title,) = titles
    assert "no validation slides" in title and "warm-up is over" in title.replace("\n", " ")
    assert max(map(len, title.splitlines())) <= 100


def test_training_curves_of_em_rounds_draw_the_encoder_loss(tmp_path):
    log = _train_log(tmp_path / "train_log.csv")
    rows = pd.read_csv(log)
    rows["encoder_loss"] = [None, 0.9, 0.7, 0.6, 0.5, 0.45]  # round 1 has no E-step
    rows.to_csv(log, index=False)
    info = plot_training_curves(log, tmp_path / "em.png", "demo: fold 0 (em)")
    assert info["curves"] == ["train_loss", "val_loss", "encoder_loss", "val_auc"]
    with Image.open(tmp_path / "em.png") as img:
        assert img.format == "PNG"


def test_training_curves_refuse_a_log_without_the_curves(tmp_path):
    log = tmp_path / "train_log.csv"
    pd.DataFrame({"epoch": [0], "train_loss": [0.7]}).to_csv(log, index=False)
    with pytest.raises(GigamilError, match="missing column.*val_auc"):
        plot_training_curves(log, tmp_path / "x.png", "t")
    pd.DataFrame(columns=CheckpointSaver.LOG_COLUMNS).to_csv(log, index=False)
    with pytest.raises(GigamilError, match="no epoch logged"):
        plot_training_curves(log, tmp_path / "x.png", "t")


def test_training_curves_without_validation_slides_draw_the_training_loss(tmp_path):
    """cv.val_fraction 0: the validation columns are empty; no empty curves, the title says so."""
    rows = pd.read_csv(_train_log(tmp_path / "train_log.csv"))
    rows[["val_loss", "val_auc", "val_balanced_accuracy"]] = float("nan")
    rows["n_val_bags"] = 0
    rows.to_csv(tmp_path / "train_log.csv", index=False)
    out = tmp_path / "curves.png"
    info = plot_training_curves(tmp_path / "train_log.csv", out, "demo: fold 0")
    # the right panel draws the learning rate instead of empty validation axes
    assert info == {
        "epochs": 6,
        "epochs_per_model": [6],
        "best_epoch": 3,
        "best_epochs": [3],
        "curves": ["train_loss", "lr"],
    }
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (960, 408)


def test_training_curves_of_replicates_draw_each_member(tmp_path):
    a = pd.read_csv(_train_log(tmp_path / "a.csv")).assign(replicate=0)
    b = pd.read_csv(_train_log(tmp_path / "b.csv", n=5, best=(0, 1, 2, 2, 2))).assign(replicate=1)
    log = tmp_path / "train_log.csv"
    pd.concat([a, b]).to_csv(log, index=False)
    info = plot_training_curves(log, tmp_path / "r.png", "demo: fold 0 (2 replicates)")
    assert info["epochs"] == 6 and info["epochs_per_model"] == [6, 5]  # not 11 rows
    assert info["best_epochs"] == [3, 2] and info["best_epoch"] == 3
    with Image.open(tmp_path / "r.png") as img:
        assert img.format == "PNG"


def test_roc_of_a_one_class_cohort_says_so_without_a_legend_warning(tmp_path, recwarn):
    from gigamil.viz.plots import plot_roc

    preds = pd.DataFrame(
        {
            "slide_id": ["a", "b"],
            "label": ["normal"] * 2,
            "prob_normal": [0.8, 0.6],
            "prob_lesion": [0.2, 0.4],
            "fold": [0, 1],
        }
    )
    plot_roc(preds, ["normal", "lesion"], tmp_path / "roc.png", "all normal")
    assert Image.open(tmp_path / "roc.png").size[0] > 0
    assert not [w for w in recwarn if "legend" in str(w.message)]


def test_roc_marks_the_operating_point_of_the_predicted_classes(tmp_path):
    from gigamil.viz.plots import plot_roc

    p1 = [0.1, 0.3, 0.6, 0.2, 0.7, 0.9, 0.4, 0.8]  # P(lesion); normal, normal, normal, ... lesion
    preds = pd.DataFrame(
        {
            "slide_id": list("abcdefgh"),
            "patient_id": list("aabbccdd"),
            "label": ["normal"] * 4 + ["lesion"] * 4,
            "prob_lesion": p1,
            "prob_normal": [1 - v for v in p1],
            "fold": [0, 0, 1, 1, 0, 0, 1, 1],
        }
    )
    info = plot_roc(preds, ["normal", "lesion"], tmp_path / "roc.png", "t")
    # one of 4 normal slides above 0.5 (fpr 0.25), 3 of 4 lesion slides (tpr 0.75)
    assert info == {"operating_point": (0.25, 0.75)}
    with Image.open(tmp_path / "roc.png") as img:
        assert img.format == "PNG"


def test_roc_draws_identical_fold_curves_once_above_the_pooled_curve(tmp_path, monkeypatch):
    """Five folds at AUC 1.0 ran along the axes under the pooled curve: six legend colours, one
    curve to be seen. Identical curves are one entry naming every fold, drawn over the pooled."""
    from matplotlib.figure import Figure

    from gigamil.viz.plots import plot_roc

    seen = []
    savefig = Figure.savefig

    def record(fig, *args, **kwargs):
        ax = fig.axes[0]
        seen.append({line.get_label(): line.get_zorder() for line in ax.get_lines()})
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    p1 = [0.1, 0.2, 0.8, 0.9, 0.3, 0.1, 0.7, 0.6, 0.6, 0.2, 0.4, 0.9]
    preds = pd.DataFrame(
        {
            "slide_id": [f"s{i}" for i in range(12)],
            "patient_id": [f"p{i}" for i in range(12)],
            "label": ["normal", "normal", "lesion", "lesion"] * 3,
            "prob_lesion": p1,
            "prob_normal": [1 - v for v in p1],
            "fold": [0] * 4 + [1] * 4 + [2] * 4,
        }
    )
    plot_roc(preds, ["normal", "lesion"], tmp_path / "roc.png", "t")
    (lines,) = seen
    merged = "folds 0, 1: identical curves\n(AUC 1.000; 2 lesion / 2 normal each)"
    assert merged in lines and "fold 2 (AUC 0.750; 2 lesion / 2 normal)" in lines
    pooled = next(z for label, z in lines.items() if label.startswith("pooled"))
    assert lines[merged] > pooled


def test_calibration_bins_count_slides_and_give_wilson_intervals():
    from scipy.stats import binomtest

    from gigamil.viz.plots import _calibration_bins

    x = np.array([0.05, 0.1, 0.15, 0.5, 0.95, 0.99, 1.0])
    hit = np.array([False, False, True, True, True, True, True])
    bins = _calibration_bins(x, hit, 5)
    assert [b[4] for b in bins] == [3, 1, 3]  # bins [0, 0.2), [0.4, 0.6), [0.8, 1.0]
    mean_x, frac, low, high, n = bins[0]
    assert (mean_x, frac) == (pytest.approx(0.1), pytest.approx(1 / 3))
    ci = binomtest(1, 3).proportion_ci(method="wilson")
    assert (low, high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert bins[2][1:4] == (
        1.0,
        pytest.approx(binomtest(3, 3).proportion_ci(method="wilson").low),
        1.0,
    )


@pytest.mark.parametrize("classes", [["normal", "lesion"], ["a", "b", "c"]])
def test_calibration_plot_is_a_png_for_two_and_more_classes(classes):
    import io

    from gigamil.viz.plots import plot_calibration

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(classes)), size=12)
    preds = pd.DataFrame(probs, columns=[f"prob_{c}" for c in classes])
    preds["label"] = [classes[i % len(classes)] for i in range(12)]
    png = plot_calibration(preds, classes, "cohort x calibration")
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size[0] > 100


def _saved_axes(monkeypatch) -> list:
    """The first axes of each matplotlib figure saved from now on."""
    from matplotlib.figure import Figure

    axes: list = []
    savefig = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda f, *a, **kw: axes.append(f.axes[0]) or savefig(f, *a, **kw)
    )
    return axes


def test_confusion_matrix_rows_are_the_true_class_normalised_per_row(tmp_path, monkeypatch):
    """Rows = true class, columns = predicted; the % are of the true class (recall on the
    diagonal): 4 normal slides, 1 called lesion; 1 lesion slide, called lesion."""
    from gigamil.viz.plots import plot_confusion

    axes = _saved_axes(monkeypatch)
    p1 = [0.1, 0.1, 0.2, 0.9, 0.8]
    preds = pd.DataFrame(
        {
            "label": ["normal"] * 4 + ["lesion"],
            "prob_normal": [1 - v for v in p1],
            "prob_lesion": p1,
        }
    )
    plot_confusion(preds, ["normal", "lesion"], tmp_path / "cm.png", "t")
    (ax,) = axes
    # (row, column) = (true, predicted)
    cells = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    assert cells == {
        (0, 0): "3\n75%",
        (0, 1): "1\n25%",
        (1, 0): "0\n0%",
        (1, 1): "1\n100%",
    }
    assert ax.get_ylabel() == "true" and ax.get_xlabel().startswith("predicted")


@pytest.mark.parametrize("classes", [["normal", "lesion"], ["a", "b", "c"]])
def test_calibration_ticks_are_each_slide_s_probability_by_outcome(classes, monkeypatch):
    """Binary: each slide is a tick at its P(positive), on top if positive, below if not. More
    classes: at the predicted class's probability, on top if predicted right."""
    from gigamil.viz.plots import plot_calibration

    axes = _saved_axes(monkeypatch)
    if len(classes) == 2:
        probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
        labels = ["normal", "normal", "lesion", "lesion"]
        top, bottom = [0.8, 0.4], [0.1, 0.7]  # lesion slides; normal slides
    else:
        probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.2, 0.3]])
        labels = ["a", "c", "c", "b"]
        top, bottom = [0.6, 0.6], [0.7, 0.5]  # predicted right; wrong
    preds = pd.DataFrame(probs, columns=[f"prob_{c}" for c in classes]).assign(label=labels)
    plot_calibration(preds, classes, "t")
    (ax,) = axes
    ticks = {line.get_label(): line for line in ax.get_lines() if line.get_marker() == "|"}
    high = ticks.pop(f"a {classes[1]} slide" if len(classes) == 2 else "a right slide")
    (low,) = ticks.values()
    assert sorted(high.get_xdata()) == pytest.approx(sorted(top))
    assert sorted(low.get_xdata()) == pytest.approx(sorted(bottom))
    assert set(high.get_ydata()) == {1.04} and set(low.get_ydata()) == {-0.04}


def test_calibration_points_sit_at_the_mean_probability_of_their_bin():
    """A bin's point is at its slides' mean probability, not the bin's centre (0.98, not 0.9)."""
    from gigamil.viz.plots import _calibration_bins

    bins = _calibration_bins(np.array([0.95, 0.99, 1.0, 0.3]), np.array([1, 1, 1, 0], bool), 5)
    assert [b[0] for b in bins] == pytest.approx([0.3, 0.98])


def test_multiclass_roc_draws_each_class_against_its_own_probability(tmp_path, monkeypatch):
    """One-vs-rest: class c's curve ranks slides by P(c); here each class's probability
    separates it perfectly, so every curve reaches (fpr 0, tpr 1)."""
    from gigamil.viz.plots import plot_roc

    axes = _saved_axes(monkeypatch)
    classes = ["a", "b", "c"]
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.45, 0.5, 0.05], [0.3, 0.6, 0.1]])
    probs = np.vstack([probs, [[0.1, 0.2, 0.7], [0.35, 0.25, 0.4]]])
    labels = ["a", "a", "b", "b", "c", "c"]
    preds = pd.DataFrame(probs, columns=[f"prob_{c}" for c in classes]).assign(label=labels)
    plot_roc(preds, classes, tmp_path / "roc.png", "t")
    (ax,) = axes
    curves = {
        ln.get_label().split(" vs rest")[0]: ln
        for ln in ax.get_lines()
        if "vs rest" in ln.get_label()
    }
    assert sorted(curves) == classes
    for name, line in curves.items():
        fpr, tpr = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert ((fpr == 0) & (tpr == 1)).any(), name
        assert "(AUC 1.000)" in line.get_label()


def test_roc_band_resamples_patients(tmp_path, monkeypatch):
    """The pooled curve's band is a bootstrap over patients (slides of a patient together), as
    its legend says; over rows only without a patient_id column."""
    import gigamil.viz.plots as plots

    seen = []
    real = plots.roc_band
    monkeypatch.setattr(
        plots, "roc_band", lambda y, s, g, *a, **k: seen.append(g) or real(y, s, g, *a, **k)
    )
    p1 = [0.1, 0.3, 0.6, 0.2, 0.7, 0.9]
    preds = pd.DataFrame(
        {
            "patient_id": list("aabbcc"),
            "label": ["normal"] * 3 + ["lesion"] * 3,
            "prob_lesion": p1,
            "prob_normal": [1 - v for v in p1],
        }
    )
    plots.plot_roc(preds, ["normal", "lesion"], tmp_path / "a.png", "t", by=None)
    plots.plot_roc(
        preds.drop(columns="patient_id"), ["normal", "lesion"], tmp_path / "b.png", "t", by=None
    )
    assert seen[0] is not None and list(seen[0]) == list("aabbcc")
    assert seen[1] is None
