"""gigamil.train.learning: a fold model whose training loss ends at the chance level."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from gigamil.nn.losses import BagLoss
from gigamil.train.learning import (
    chance_loss,
    flag_loss,
    learning_warnings,
    unlearned_models,
)


@pytest.mark.parametrize(("kind", "n_classes"), [("ce", 2), ("ce", 3), ("focal", 2), ("focal", 4)])
def test_chance_loss_is_the_loss_of_a_uniform_prediction(kind: str, n_classes: int):
    """The bag loss gigamil trains with (balanced class weights average 1 over the bags), at
    logits that give every class the same probability."""
    n_out = 1 if n_classes == 2 else n_classes
    labels = torch.tensor([0, 0, 0, 1] if n_classes == 2 else list(range(n_classes)) * 2)
    counts = torch.bincount(labels, minlength=n_classes).float()
    weights = len(labels) / (n_classes * counts)
    loss = BagLoss(kind, class_weights=weights)(torch.zeros(len(labels), n_out), labels)
    assert chance_loss(n_classes, kind) == pytest.approx(float(loss), rel=1e-6)
    assert chance_loss(2) == pytest.approx(math.log(2))


def test_a_model_is_judged_by_the_mean_of_its_last_three_epochs():
    chance = math.log(2)
    flat = pd.DataFrame({"epoch": range(1, 7), "train_loss": [0.70, 0.69, 0.69, 0.70, 0.69, 0.68]})
    assert unlearned_models(flat, chance) == [(None, pytest.approx(0.69))]
    # one low epoch among the last three does not make a model that learnt
    noisy = flat.assign(train_loss=[0.7, 0.69, 0.69, 0.69, 0.40, 0.69])
    assert unlearned_models(noisy, chance) == []  # mean 0.593 < 0.9 ln 2
    learnt = flat.assign(train_loss=[0.70, 0.6, 0.5, 0.3, 0.2, 0.25])
    assert unlearned_models(learnt, chance) == []
    just = flat.assign(train_loss=[0.7] * 3 + [0.9 * chance] * 3)  # the boundary is not learned
    assert unlearned_models(just, chance) == [(None, pytest.approx(0.9 * chance))]
    members = pd.concat(
        [flat.assign(replicate=0), learnt.assign(replicate=1), flat.assign(replicate=2)]
    )
    assert [m for m, _ in unlearned_models(members, chance)] == [0, 2]
    assert unlearned_models(pd.DataFrame(columns=["epoch", "train_loss"]), chance) == []


def test_warnings_name_the_fold_the_member_and_the_figures(tmp_path: Path):
    log = tmp_path / "train_log.csv"
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.71, 0.70, 0.69], "replicate": 1}).to_csv(
        log, index=False
    )
    (tmp_path / "empty.csv").write_text("")
    found = learning_warnings(
        {"fold2": log, "fold3": tmp_path / "missing.csv", "fold4": tmp_path / "empty.csv"},
        math.log(2),
    )
    assert found == [
        "fold2 replicate1 did not learn: its training loss ended at 0.700 (chance level 0.693: "
        "a model predicting every class equally likely; flagged at >= 0.624); its predictions "
        "mean nothing (README, 'When a fold does not learn')"
    ]


def test_the_last_epochs_with_a_loss_are_judged_and_members_named_by_number():
    """Rows without a training loss (empty cells) are not epochs; rows without a replicate
    belong to no member, and a member read back as a float (an empty cell in the column) is
    still named replicate1, not replicate1.0."""
    chance = math.log(2)
    nan = float("nan")
    ended = pd.DataFrame({"train_loss": [0.2, 0.2, 0.2, 0.69, nan, nan]})
    assert unlearned_models(ended, chance) == []  # mean of 0.2, 0.2, 0.69: learnt
    flat = ended.assign(train_loss=[0.2, 0.2, 0.69, 0.69, 0.69, nan])
    assert unlearned_models(flat, chance) == [(None, pytest.approx(0.69))]
    members = pd.DataFrame(
        {"train_loss": [0.69, 0.69, 0.69, 0.1], "replicate": [1.0, 1.0, 1.0, float("nan")]}
    )
    found = unlearned_models(members, chance)
    assert found == [(1, pytest.approx(0.69))] and type(found[0][0]) is int
    later_first = pd.DataFrame({"train_loss": [0.69] * 6, "replicate": [2, 2, 2, 0, 0, 0]})
    assert [m for m, _ in unlearned_models(later_first, chance)] == [0, 2]  # in member order


def test_a_log_without_training_losses_or_a_torn_file_gives_no_warning(tmp_path: Path):
    """A train_log.csv without the train_loss column, or one cut in the middle of a row (a
    job killed while writing it), is skipped: no warning and no traceback at the end of a
    run."""
    (tmp_path / "old.csv").write_text("epoch,val_loss\n1,0.7\n2,0.7\n")
    (tmp_path / "torn.csv").write_text("epoch,train_loss\n1,0.7\n2,0.7,0.3,1,5\n")
    logs = {"fold0": tmp_path / "old.csv", "fold1": tmp_path / "torn.csv"}
    assert learning_warnings(logs, math.log(2)) == []


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_the_flag_is_one_true_class_probability_for_both_losses(n_classes: int):
    """Not learned: the true class's probability at or below K^-0.9 (0.536 for two classes),
    whichever loss measures it: 0.9 ln K for cross-entropy, and the focal loss of that
    probability, a smaller share of focal's own chance level."""
    p = n_classes**-0.9
    assert (
        flag_loss(n_classes)
        == pytest.approx(-math.log(p))
        == pytest.approx(0.9 * chance_loss(n_classes))
    )
    focal = flag_loss(n_classes, "focal")
    assert focal == pytest.approx((1 - p) ** 2 * -math.log(p))
    assert focal < 0.9 * chance_loss(n_classes, "focal")  # stricter than 0.9 x focal's chance
    # 87 % of focal's chance level (the reproducer's weights that did not move): flagged
    table = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.87 * chance_loss(2, "focal")] * 3})
    assert unlearned_models(table, chance_loss(2, "focal"), flag_loss(2, "focal")) != []
    assert unlearned_models(table, chance_loss(2, "focal")) == []  # 0.9 x chance missed it


def test_the_learning_record_travels_with_the_model_and_says_whether_it_learned():
    """model.pt records its final training loss against chance (from its log's rows), so the
    person it is shared with can tell; a log from before the levels were written has none."""
    from gigamil.train.learning import (
        LEARNING_KEY,
        learning_record,
        log_columns,
        recorded_verdicts,
        verdict_phrase,
    )

    levels = log_columns(2, "ce")
    flat = [{"epoch": e, "train_loss": v, **levels} for e, v in enumerate([0.7, 0.69, 0.7, 0.68])]
    record = learning_record(flat)
    assert record == {
        "final_train_loss": pytest.approx((0.69 + 0.7 + 0.68) / 3),
        "chance_loss": pytest.approx(math.log(2), abs=1e-6),
        "flag_loss": pytest.approx(0.9 * math.log(2), abs=1e-6),
        "learned": False,
    }
    assert verdict_phrase(record) == (
        "training loss ended at 0.690 (mean of the last 3 epochs; chance level 0.693, flagged at >= 0.624): DID NOT LEARN"
    )
    falling = [{**row, "train_loss": 0.7 - 0.15 * i} for i, row in enumerate(flat)]
    assert learning_record(falling)["learned"] is True  # last three: 0.55, 0.4, 0.25
    assert learning_record([{"epoch": 1, "train_loss": 0.7}]) is None  # an older log
    assert learning_record([]) is None
    # a fold of two members, the second without a record (trained before 2026-12-06)
    header = {"replicates": [{"seed": 0, LEARNING_KEY: record}, {"seed": 1}]}
    assert recorded_verdicts(header) == [(0, record)]
    assert recorded_verdicts({LEARNING_KEY: record}) == [(None, record)]
    assert recorded_verdicts({"epoch": 3}) == []


@pytest.mark.parametrize(("kind", "n_classes"), [("ce", 3), ("focal", 2)])
def test_the_log_records_the_levels_of_the_loss_it_trains_with(kind: str, n_classes: int):
    """Each train_log.csv row's levels are those of the fold's own loss and classes: a focal
    model at its chance level (0.173 for two classes) judged by ln 2 would be called learned,
    and its plot would draw the chance line far above its curve."""
    from gigamil.train.learning import log_columns

    assert log_columns(n_classes, kind) == {
        "chance_loss": pytest.approx(chance_loss(n_classes, kind), abs=1e-6),
        "flag_loss": pytest.approx(flag_loss(n_classes, kind), abs=1e-6),
    }


def test_the_record_and_the_plot_agree_on_a_loss_ending_at_the_flag():
    """The rule is 'at or above the flag did not learn' (:func:`unlearned_models`, which the
    training log and the plot use): model.pt's record of a loss ending exactly at the flag
    must say DID NOT LEARN too, not 'learned' beside a red plot title."""
    from gigamil.train.learning import learning_record

    rows = [
        {"epoch": e, "train_loss": 0.5, "chance_loss": 0.625, "flag_loss": 0.5} for e in (1, 2, 3)
    ]
    assert unlearned_models(pd.DataFrame(rows), 0.625, 0.5) == [(None, 0.5)]
    assert learning_record(rows)["learned"] is False
    below = [{**row, "train_loss": 0.499} for row in rows]
    assert learning_record(below)["learned"] is True


@pytest.mark.parametrize("eps", [0.1, 0.3, 0.6, 0.65, 0.8, 0.9])
def test_the_flag_with_label_smoothing_lies_between_the_best_loss_and_chance(eps: float):
    """With label smoothing ε a perfect two-class model's loss is the target's entropy (0.611 at
    ε 0.6, 0.631 at 0.65): against 0.9 ln 2 = 0.624 every model would be called unlearnt from
    ε ≈ 0.65 (new-user trial). The flag is the loss of p = 2^-0.9 against the smoothed target:
    above the best reachable loss, below chance, and 0.9 ln 2 at ε 0."""
    from gigamil.train.learning import log_columns

    t = 1 - eps / 2
    best = float(BagLoss("ce", label_smoothing=eps)(torch.tensor([math.log(t / (1 - t))]), 1))
    assert best == pytest.approx(-(t * math.log(t) + (1 - t) * math.log(1 - t)), rel=1e-5)
    flag = flag_loss(2, "ce", label_smoothing=eps)
    assert best < flag < chance_loss(2)
    p = 2**-0.9  # the flag is the bag loss of a model giving the true class p
    at_p = BagLoss("ce", label_smoothing=eps)(torch.tensor([math.log(p / (1 - p))]), 1)
    assert flag == pytest.approx(float(at_p), rel=1e-5)
    assert log_columns(2, "ce", eps)["flag_loss"] == pytest.approx(flag, abs=1e-6)
    assert flag_loss(2, "ce", label_smoothing=0.0) == pytest.approx(0.9 * math.log(2))


def test_warnings_judge_by_the_levels_the_log_records(tmp_path: Path):
    """The fold log's and the summary's warning use the levels the train_log records (as its
    plot and model.pt's record do), so the three never disagree; the levels given are for logs
    written before they were recorded."""
    from gigamil.train.learning import log_columns

    log = tmp_path / "train_log.csv"
    focal = log_columns(2, "focal")  # chance 0.173, flag 0.134
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.16, 0.15, 0.15], **focal}).to_csv(
        log, index=False
    )
    (found,) = learning_warnings({"fold0": log}, math.log(2))  # ce's levels given: not used
    assert "(chance level 0.173: " in found and "flagged at >= 0.134)" in found
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.16, 0.15, 0.15]}).to_csv(log, index=False)
    assert learning_warnings({"fold0": log}, math.log(2)) == []  # below ce's flag 0.624: learnt


def test_the_prediction_rows_carry_the_verdict_of_every_member():
    """model_learned: False when any replicate did not learn (its half of the mean is noise),
    None for a model.pt that records nothing; unlearned_folds reads it back from the CSVs,
    whichever way pandas parsed the column, and finds nothing in files without it."""
    from gigamil.train.learning import model_learned, unlearned_folds

    yes, no = {"learned": True}, {"learned": False}
    assert model_learned({"learning": yes}) is True
    assert model_learned({"replicates": [{"learning": yes}, {"learning": no}]}) is False
    assert model_learned({"replicates": [{"learning": yes}, {}]}) is True  # only recorded ones
    assert model_learned({"state_dict": {}}) is None
    preds = pd.DataFrame(
        {"fold": [0, 0, 1, 2, 3], "model_learned": [True, True, "False", "", float("nan")]}
    )
    assert unlearned_folds(preds) == [1]
    assert unlearned_folds(preds.assign(model_learned=[False] * 5)) == [0, 1, 2, 3]
    assert unlearned_folds(preds.drop(columns="model_learned")) == []


def test_a_log_without_a_flag_is_read_as_not_judged(tmp_path: Path):
    """model.pool: instance writes the chance level and an empty flag: no warning (not even by
    the config's fallback levels), a record with learned None that every surface reads as no
    verdict, and a plot with the chance line only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gigamil.train.learning import (
        learning_record,
        log_columns,
        log_levels,
        model_learned,
        verdict_phrase,
    )
    from gigamil.viz.plots import _chance_level

    levels = log_columns(2, weak_patch_labels=True)
    assert levels == {"chance_loss": 0.693147, "flag_loss": None}
    rows = [{"epoch": e, "train_loss": 0.68, **levels} for e in range(1, 5)]
    path = tmp_path / "train_log.csv"
    pd.DataFrame(rows).to_csv(path, index=False)  # the flag as an empty cell
    table = pd.read_csv(path)
    assert log_levels(table) == (pytest.approx(0.693147), None)
    assert learning_warnings({"fold0": path}, math.log(2), 0.624) == []
    record = learning_record(rows)
    assert record["learned"] is None and "not judged" in verdict_phrase(record)
    assert model_learned({"learning": record}) is None
    assert (
        model_learned({"replicates": [{"learning": record}, {"learning": {"learned": False}}]})
        is False
    )
    fig, ax = plt.subplots()
    assert _chance_level(ax, table) == (pytest.approx(0.693147), [])
    assert len(ax.lines) == 1  # the chance level, no flag line
    plt.close(fig)
    # a log of the flag's own rows judges as before; an instance loss raises both levels
    assert log_levels(pd.DataFrame([{"chance_loss": 0.69, "flag_loss": 0.62}])) == (0.69, 0.62)
    both = log_columns(2, instance_loss=0.5)
    assert both == {
        "chance_loss": round(1.5 * math.log(2), 6),
        "flag_loss": round(1.35 * math.log(2), 6),
    }


def test_an_instance_loss_adds_its_term_at_the_chance_level_of_the_folds_classes():
    """model.instance_loss w adds w ln K for K classes (the patch cross-entropy at the same
    uniform probabilities), not w ln 2: a three-class fold with an instance loss judged by two
    classes' levels would be called learned while still at chance."""
    from gigamil.train.learning import log_columns

    k, w = 3, 0.5
    assert log_columns(k, instance_loss=w) == {
        "chance_loss": round(chance_loss(k) + w * math.log(k), 6),
        "flag_loss": round(flag_loss(k) + 0.9 * w * math.log(k), 6),
    }


def test_the_levels_come_from_the_last_row_that_records_them():
    """log_levels reads the chance level and flag of one row, the last that has the chance
    level (a row without it, e.g. written by an older gigamil, is skipped with its flag); a log
    with the chance level and no flag column is a log whose loss is not judged."""
    from gigamil.train.learning import log_levels

    table = pd.DataFrame(
        {"chance_loss": [0.693147, 0.693147, None], "flag_loss": [0.623832, 0.623832, None]}
    )
    assert log_levels(table) == (0.693147, 0.623832)
    assert log_levels(pd.DataFrame({"chance_loss": [0.693147]})) == (0.693147, None)


def test_unlearned_folds_reads_hand_edited_cells_and_files_without_a_fold():
    """A verdict cell with spaces (' False ', a file edited by hand) still names its fold; rows
    without a ``fold`` column (one model's ``gigamil predict`` output) name none instead of
    failing."""
    from gigamil.train.learning import unlearned_folds

    preds = pd.DataFrame({"fold": [0, 1, 2], "model_learned": ["True", " False ", "FALSE"]})
    assert unlearned_folds(preds) == [1, 2]
    assert unlearned_folds(preds.drop(columns="fold")) == []


def test_an_epoch_of_infinite_loss_is_left_out_as_a_nan_one_is():
    """One overflowing bag (an fp16 step the scaler skipped) made an epoch's loss inf, and a
    model that learned 'did not learn', while the same epoch as NaN was left out (a review)."""
    from gigamil.train.learning import learning_record

    chance = math.log(2)
    losses = [0.6, 0.4, 0.2, 0.2, math.inf, 0.2]
    log = pd.DataFrame({"epoch": range(1, 7), "train_loss": losses})
    assert unlearned_models(log, chance) == []
    rows = [
        {"epoch": e, "train_loss": v, "chance_loss": chance, "flag_loss": 0.9 * chance}
        for e, v in zip(range(1, 7), losses, strict=True)
    ]
    record = learning_record(rows)
    assert record["learned"] is True and record["final_train_loss"] == pytest.approx(0.2)


def test_unweighted_imbalanced_classes_lower_the_levels_to_the_class_prior():
    """Under training.class_weights: null on 75 / 25 % classes a model predicting the class
    prior for every bag (it told no bags apart) ended at 0.562, below the flag of 0.624, and
    was called learned; the levels are now its loss, H(π), and 0.9 H(π)."""
    from gigamil.train.learning import log_columns, prior_ratio

    labels = torch.tensor([0, 0, 0, 1] * 5)
    prior_logit = torch.full((len(labels), 1), math.log(0.25 / 0.75))  # P(class 1) = 0.25
    prior_model = float(BagLoss("ce")(prior_logit, labels))
    levels = log_columns(2, "ce", unweighted_labels=labels.tolist())
    assert levels["chance_loss"] == pytest.approx(prior_model, abs=1e-6)
    assert levels["flag_loss"] == pytest.approx(0.9 * prior_model, abs=1e-6)
    table = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [prior_model] * 3})
    assert unlearned_models(table, levels["chance_loss"], levels["flag_loss"]) != []
    # balanced classes, or no labels (the loss weighs the classes): the levels of ln K
    assert prior_ratio([0, 1, 1, 0], 2) == pytest.approx(1.0)
    assert log_columns(3, "focal", unweighted_labels=[0, 1, 2]) == log_columns(3, "focal")
    assert prior_ratio([], 2) == 1.0
    assert prior_ratio([0, 0, 0, 1], 2) == pytest.approx(0.811, abs=1e-3)
