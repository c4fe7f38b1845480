"""gigamil.viz.plots: training curves (ROC and confusion plots are covered by the evaluate tests)."""

from __future__ import annotations

from pathlib import Path

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
        "chance_loss": None,  # a log written before gigamil recorded the chance level
        "not_learned": [],
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
        "chance_loss": None,
        "not_learned": [],
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


def _with_levels(
    log: Path, losses: list[float], replicate: int | None = None, loss: str = "ce"
) -> pd.DataFrame:
    """``log``'s rows with these training losses and the chance levels of two classes."""
    from gigamil.train.learning import log_columns

    rows = pd.read_csv(log).head(len(losses)).assign(train_loss=losses, **log_columns(2, loss))
    return rows if replicate is None else rows.assign(replicate=replicate)


def test_training_curves_draw_the_chance_level_and_name_a_model_that_did_not_learn(
    tmp_path, saved_axes
):
    """Issue 18's failure (the training loss staying at ln 2) must be visible in the report's
    plot: a dotted chance line on the loss panel, and the member whose loss ended there named
    in a red title; a member that learned is not."""
    import math

    base = _train_log(tmp_path / "base.csv")
    learned = _with_levels(base, [0.69, 0.6, 0.45, 0.3, 0.2, 0.15], replicate=0)
    flat = _with_levels(base, [0.694, 0.693, 0.692, 0.693, 0.69, 0.691], replicate=1)
    log = tmp_path / "train_log.csv"
    pd.concat([learned, flat]).to_csv(log, index=False)
    info = plot_training_curves(log, tmp_path / "c.png", "demo: fold 0")
    assert info["chance_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert len(info["not_learned"]) == 1
    assert info["not_learned"][0].startswith("replicate1 training loss ended at 0.691")
    ax_loss = saved_axes[0]
    chance = [ln for ln in ax_loss.get_lines() if ln.get_label().startswith("chance level")]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [pytest.approx(math.log(2))] * 2
    flag = [ln for ln in ax_loss.get_lines() if ln.get_label() == "did not learn at >= 0.624"]
    assert len(flag) == 1 and flag[0].get_ydata()[0] == pytest.approx(0.9 * math.log(2), abs=1e-6)
    warning = ax_loss.get_title(loc="left")  # in red over the loss curves; the title stays black
    assert warning.replace("\n", " ").startswith("DID NOT LEARN: replicate1 training loss ended")
    assert ax_loss._left_title.get_color() == "firebrick"
    assert "DID NOT LEARN" not in ax_loss.figure._suptitle.get_text()

    pd.concat([learned, flat.assign(train_loss=learned["train_loss"])]).to_csv(log, index=False)
    saved_axes.clear()
    info = plot_training_curves(log, tmp_path / "c.png", "demo: fold 0")
    assert info["not_learned"] == [] and info["chance_loss"] == pytest.approx(math.log(2))
    assert saved_axes[0].get_title(loc="left") == ""


def test_training_curves_judge_a_focal_model_by_the_flag_of_its_log(tmp_path, saved_axes):
    """A focal-loss model at 87 % of its chance level (0.151 of 0.173) did not learn (the
    flag, 0.134, is one true-class probability, gigamil.train.learning.flag_loss); 0.9 x
    chance (0.156) would let it pass, so the plot must judge by the log's flag_loss, as the
    training log's warning does."""
    base = _train_log(tmp_path / "base.csv")
    focal = _with_levels(base, [0.17, 0.16, 0.155, 0.151, 0.151, 0.151], loss="focal")
    log = tmp_path / "train_log.csv"
    focal.to_csv(log, index=False)
    info = plot_training_curves(log, tmp_path / "f.png", "demo: fold 0")
    assert info["chance_loss"] == pytest.approx(0.25 * np.log(2), abs=1e-6)
    assert [phrase.split(" (")[0] for phrase in info["not_learned"]] == [
        "training loss ended at 0.151"
    ]
    assert "flagged at >= 0.134" in info["not_learned"][0]
    assert saved_axes[0].get_title(loc="left").startswith("DID NOT LEARN: training loss ended")


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


def test_confusion_matrix_rows_are_the_true_class_normalised_per_row(tmp_path, saved_axes):
    """Rows = true class, columns = predicted; the % are of the true class (recall on the
    diagonal): 4 normal slides, 1 called lesion; 1 lesion slide, called lesion."""
    from gigamil.viz.plots import plot_confusion

    axes = saved_axes
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


def test_multiclass_roc_draws_each_class_against_its_own_probability(tmp_path, saved_axes):
    """One-vs-rest: class c's curve ranks slides by P(c); here each class's probability
    separates it perfectly, so every curve reaches (fpr 0, tpr 1)."""
    from gigamil.viz.plots import plot_roc

    axes = saved_axes
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
