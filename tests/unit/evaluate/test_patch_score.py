"""Patch scores: percentile ranks of attention and patch logits, and their localisation AUC."""

from __future__ import annotations

import numpy as np
import pytest

from gigamil.evaluate.localization import (
    add_localization_columns,
    cohort_localization,
    localization_block,
    slide_localization,
)
from gigamil.evaluate.patch_score import (
    patch_logit_file,
    patch_logit_files,
    patch_score,
    percentile_rank,
)


def test_percentile_ranks_average_ties_and_the_score_is_their_mean():
    np.testing.assert_allclose(
        percentile_rank(np.array([3.0, 1.0, 3.0, 2.0])), [0.875, 0.25, 0.875, 0.5]
    )
    assert percentile_rank(np.array([])).shape == (0,)
    att, logits = np.array([0.7, 0.2, 0.1]), np.array([-5.0, 4.0, 0.0])
    np.testing.assert_allclose(patch_score(att, logits), [(1 + 1 / 3) / 2, (2 / 3 + 1) / 2, 0.5])
    with pytest.raises(ValueError, match="differ in shape"):
        patch_score(att, logits[:2])


def test_patch_logit_files_sit_beside_the_attention_and_all_must_exist(tmp_path):
    att = [tmp_path / f"fold{k}" / "s1.npy" for k in (0, 1)]
    assert patch_logit_file(att[0]) == tmp_path / "fold0" / "patch_logits" / "s1.npy"
    for i, path in enumerate([*att, patch_logit_file(att[0])]):
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.full(3, i, np.float32))
    assert patch_logit_files(att) is None  # fold1 predicted before patch logits: attention only
    patch_logit_file(att[1]).parent.mkdir()
    np.save(patch_logit_file(att[1]), np.zeros(3, np.float32))
    assert patch_logit_files(att) == [patch_logit_file(a) for a in att]


def test_the_patch_score_localises_where_attention_alone_misses_lesion_patches(
    grid_slide, tmp_path
):
    """Attention peaked on two of six lesion patches ranks the other four among the normal
    ones; patch logits that are high over the whole lesion lift them."""
    store = tmp_path / "s.zarr"
    _, grid = grid_slide.write(store)
    mask = tmp_path / "s.png"
    grid_slide.write_mask(mask, rows=[1, 2], cols=[2, 3, 4], downsample=16)
    lesion = np.isin(grid[:, 0], [1, 2]) & np.isin(grid[:, 1], [2, 3, 4])
    rng = np.random.default_rng(0)
    att = rng.random(len(grid))
    att[np.flatnonzero(lesion)[:2]] = 10.0
    logits = np.where(lesion, 2.0, 0.0) + rng.random(len(grid))
    res = slide_localization(store, att, mask, patch_logits=logits)
    assert res["patch_score_localization_auc"] > res["localization_auc"] + 0.1
    assert "patch_score_localization_auc" not in slide_localization(store, att, mask)
    # through the files prediction writes: the key appears only where patch logits exist
    att_file = tmp_path / "attention" / "s.npy"
    att_file.parent.mkdir()
    np.save(att_file, att.astype(np.float32))
    loc = cohort_localization({"s": (store, att_file, mask)})
    assert set(loc["s"]) == {"localization_auc", "n_lesion_patches", "n_patches"}
    patch_logit_file(att_file).parent.mkdir()
    np.save(patch_logit_file(att_file), logits.astype(np.float32))
    loc = cohort_localization({"s": (store, att_file, mask)})
    assert loc["s"]["patch_score_localization_auc"] == pytest.approx(
        res["patch_score_localization_auc"]
    )


def test_the_summary_and_table_report_the_patch_score_only_where_it_exists():
    import pandas as pd

    loc = {
        "a": {"localization_auc": 0.6, "patch_score_localization_auc": 0.8, "n_lesion_patches": 2},
        "b": {"localization_auc": 0.7, "patch_score_localization_auc": 0.9, "n_lesion_patches": 3},
    }
    block = localization_block(loc)
    assert block["patch_score_localization_auc"] == pytest.approx(0.85)
    assert block["patch_score_localization_auc_sd"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert block["patch_score_localization_auc_per_slide"] == {"a": 0.8, "b": 0.9}
    table = pd.DataFrame({"slide_id": ["a", "b", "c"]})
    add_localization_columns(table, loc)
    assert table["patch_score_localization_auc"].tolist()[:2] == [0.8, 0.9]
    old = {s: {k: v for k, v in d.items() if not k.startswith("patch")} for s, d in loc.items()}
    assert not any(k.startswith("patch") for k in localization_block(old))
    table = pd.DataFrame({"slide_id": ["a", "b"]})
    add_localization_columns(table, old)
    assert list(table.columns) == ["slide_id", "localization_auc", "n_lesion_patches"]


def test_heatmap_weights_are_the_attention_or_the_normalised_patch_score(tmp_path, caplog):
    from gigamil.evaluate.patch_score import heatmap_weights

    att = [tmp_path / f"fold{k}" / "s.npy" for k in (0, 1)]
    values = [np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.3, 0.6])]
    for path, a in zip(att, values, strict=True):
        path.parent.mkdir()
        np.save(path, a.astype(np.float32))
    got, name = heatmap_weights(att, "attention", "attention")
    np.testing.assert_allclose(got, [0.3, 0.3, 0.4], rtol=1e-6)
    assert name == "attention"
    got, name = heatmap_weights(att, "patch_score", "attention")  # no patch logits: attention
    assert name == "attention" and "no patch logits beside" in caplog.text
    np.testing.assert_allclose(got, [0.3, 0.3, 0.4], rtol=1e-6)
    for path, z in zip(att, ([3.0, 1.0, 2.0], [3.0, 1.0, 2.0]), strict=True):
        patch_logit_file(path).parent.mkdir()
        np.save(patch_logit_file(path), np.array(z, np.float32))
        if path == att[0]:  # one fold model with patch logits, one without: one warning
            caplog.clear()
            assert heatmap_weights(att, "patch_score", "attention")[1] == "attention"
            assert caplog.text.count("WARNING") == 1 and "is missing" in caplog.text
    got, name = heatmap_weights(att, "patch_score", "patch probability")
    score = patch_score(np.array([0.3, 0.3, 0.4]), np.array([3.0, 1.0, 2.0]))
    np.testing.assert_allclose(got, score / score.sum(), rtol=1e-6)
    assert name == "patch score" and got.sum() == pytest.approx(1.0)
    assert got[0] > got[1]  # the same attention: the higher patch logit decides
    with pytest.raises(ValueError, match="attention or patch_score"):
        heatmap_weights(att, "logits", "attention")


def test_a_patch_score_of_only_some_slides_is_left_out_with_a_warning(caplog):
    """Some slides with patch logits, others without (one fold predicted before gigamil wrote
    them, a lost file): the mean was over the slides that have them, written beside the
    attention's figure as if of its slides ("0.900 (mean ± sd, 3 slides)": one slide's)."""
    from gigamil.evaluate.run_summary import _localisation

    loc = {
        "a": {"localization_auc": 0.6, "patch_score_localization_auc": 0.9, "n_lesion_patches": 2},
        "b": {"localization_auc": 0.7, "n_lesion_patches": 3},
        "c": {"localization_auc": 0.8, "n_lesion_patches": 1},
    }
    with caplog.at_level("WARNING", logger="gigamil"):
        block = localization_block(loc)
    assert not any(k.startswith("patch") for k in block)
    assert "of the patch score" not in _localisation(block)
    assert "2 of the 3 slides" in caplog.text and "b, c" in caplog.text
    import pandas as pd

    table = pd.DataFrame({"slide_id": ["a", "b", "c"]})
    add_localization_columns(table, loc)
    assert "patch_score_localization_auc" not in table
    # a slide without both kinds of patches has no AUC of either: not a missing patch score
    loc["b"] = {"localization_auc": float("nan"), "n_lesion_patches": 0}
    loc["c"] = {**loc["c"], "patch_score_localization_auc": 0.7}
    assert localization_block(loc)["patch_score_localization_auc"] == pytest.approx(0.8)


def test_fold_models_of_a_slide_with_and_without_patch_logits_are_a_warning(tmp_path, caplog):
    """An ensemble whose fold models predicted some with patch logits, some without: the slide
    had no patch score, silently (as if every prediction were older than patch logits)."""
    att = [tmp_path / f"fold{k}" / "s1.npy" for k in (0, 1)]
    for path in [*att, patch_logit_file(att[0])]:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.zeros(3, np.float32))
    with caplog.at_level("WARNING", logger="gigamil"):
        assert patch_logit_files(att) is None
    assert str(patch_logit_file(att[1])) in caplog.text
    caplog.clear()
    assert patch_logit_files(att[1:]) is None  # none has them: older predictions, no warning
    assert not caplog.text


def test_a_damaged_patch_logit_file_names_the_predictions_to_delete(tmp_path):
    """The hint for a damaged patch-logit file of the workflow's layout named no CSV ("rerun
    the prediction that wrote it"): predictions_of took patch_logits/ for the cohort folder."""
    from gigamil.errors import GigamilError
    from gigamil.evaluate.localization import mean_attention
    from gigamil.evaluate.predictions import predictions_of

    fold = tmp_path / "fold0"
    att = fold / "attention" / "ext" / "s1.npy"
    assert predictions_of(patch_logit_file(att)) == fold / "ext.csv" == predictions_of(att)
    odd = fold / "attention" / "patch_logits" / "s1.npy"  # a cohort named patch_logits
    assert predictions_of(odd) == fold / "patch_logits.csv"
    assert predictions_of(patch_logit_file(odd)) == fold / "patch_logits.csv"
    patch_logit_file(att).parent.mkdir(parents=True)
    patch_logit_file(att).write_bytes(b"\x93NUMPY cut")
    (fold / "ext.csv").write_text("slide_id\ns1\n")
    with pytest.raises(GigamilError, match="^patch-logit file .*delete .*ext.csv"):
        mean_attention([patch_logit_file(att)])


def test_patch_logits_of_another_length_than_the_attention_are_an_error_naming_them(
    grid_slide, tmp_path
):
    """Patch logits of another length than the attention beside them (not written by the same
    prediction) stopped `gigamil heatmap --weights patch_score`, `evaluate` and `ensemble
    --localization` and rule aggregate_cv with a traceback (patch_score's ValueError)."""
    from gigamil.errors import GigamilError
    from gigamil.evaluate.patch_score import heatmap_weights

    store = tmp_path / "s.zarr"
    _, grid = grid_slide.write(store)
    mask = tmp_path / "s.png"
    grid_slide.write_mask(mask, rows=[1, 2], cols=[2, 3, 4], downsample=16)
    fold = tmp_path / "fold0"
    att = fold / "attention" / "ext" / "s.npy"
    patch_logit_file(att).parent.mkdir(parents=True)
    np.save(att, np.full(len(grid), 1 / len(grid), np.float32))
    np.save(patch_logit_file(att), np.zeros(len(grid) - 1, np.float32))
    (fold / "ext.csv").write_text("slide_id\ns\n")
    match = rf"patch_logits/s.npy have {len(grid) - 1} values .* has {len(grid)} .*delete .*ext.csv"
    with pytest.raises(GigamilError, match=match):
        heatmap_weights([att], "patch_score", "attention")
    with pytest.raises(GigamilError, match=match):
        cohort_localization({"s": (store, att, mask)})
    np.save(patch_logit_file(att), np.zeros(len(grid), np.float32))  # the same length: scored
    assert "patch_score_localization_auc" in cohort_localization({"s": (store, att, mask)})["s"]
