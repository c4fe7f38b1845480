"""benchmarks/baseline_smoothing.py: the colour baseline scored raw and with gigamil's spatial
prior on a finished draw (its sheet, folds and patch stores)."""

from __future__ import annotations

import json


def test_scores_a_finished_draw_both_ways(bench, tmp_path, capsys, finished_run):
    model = {"pool": "smabmil", "sm_alpha": 0.8}
    finished_run(tmp_path, tmp_path / "work" / "draw7", "real_tissue", "real", model)
    out = tmp_path / "out.json"
    argv = ["--seeds", "7", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    (draw,) = result["draws"]
    assert draw["seed"] == 7 and draw["baseline_smoothed"]["sm_alpha"] == 0.8
    assert draw["baseline"]["oof_auc"] == 1.0 and draw["localization_n_slides"] == 2
    assert 0.5 < draw["baseline_smoothed"]["localization_auc"] <= 1.0
    assert set(result["summary"]) == {
        "baseline_oof_auc",
        "baseline_localization_auc",
        "baseline_smoothed_oof_auc",
        "baseline_smoothed_localization_auc",
    }
    assert "draw 7: baseline OOF AUC 1.000 -> " in capsys.readouterr().out
