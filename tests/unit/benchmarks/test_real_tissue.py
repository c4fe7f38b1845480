"""Helpers of benchmarks/real_tissue.py (the benchmark itself is run by hand)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml


def test_set_overrides_and_config(bench, tmp_path):
    over = bench.parse_set(["training.epochs=2", "cv.folds=4", "model.pool=abmil"])
    assert over == {"training": {"epochs": 2}, "cv": {"folds": 4}, "model": {"pool": "abmil"}}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.parse_set(["training.epochs"])
    cfg = yaml.safe_load(bench.write_config(tmp_path, over).read_text())
    repo_cfg = yaml.safe_load((bench.REPO / "config.yaml").read_text())
    assert cfg["cohorts"] == {"real": {"sheet": str(tmp_path / "sheet.csv"), "role": "train"}}
    assert cfg["training"]["epochs"] == 2 and cfg["cv"]["folds"] == 4
    assert cfg["training"]["lr"] == repo_cfg["training"]["lr"]
    assert cfg["preprocessing"] == repo_cfg["preprocessing"]


def test_summary_statistics_and_json(bench):
    stat = bench.mean_sd([0.5, 0.7, float("nan"), None])
    assert stat["n"] == 2 and stat["mean"] == pytest.approx(0.6)
    assert stat["sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert bench.fmt(stat) == "0.600 ± 0.141"
    safe = bench.json_safe({"a": [np.float64("nan"), np.int64(3)], "b": float("inf")})
    assert json.dumps(safe, allow_nan=False) == '{"a": [null, 3], "b": null}'


def test_compare_oof_pairs_the_two_methods_by_slide(bench, tmp_path):
    ev = tmp_path / "results" / "eval" / bench.EXPERIMENT
    ev.mkdir(parents=True)
    ids = [f"s{i}" for i in range(8)]
    label = [0, 0, 0, 0, 1, 1, 1, 1]
    ours = pd.DataFrame(
        {
            "slide_id": ids,
            "patient_id": [f"p{i // 2}" for i in range(8)],
            "label": ["normal"] * 4 + ["lesion"] * 4,
            "prob_normal": 0.0,
            "prob_lesion": [0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9],  # one pair misranked
        }
    )
    ours.to_csv(ev / "per_slide_predictions.csv", index=False)
    # the baseline's rows in another order, ranking every pair right
    scores = dict(zip(ids, [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9], strict=True))
    pairs = reversed(list(zip(ids, label, strict=True)))
    per_slide = [{"slide_id": s, "label": y, "score": scores[s]} for s, y in pairs]
    out = bench.compare_oof(tmp_path, {"per_slide": per_slide}, "lesion")
    assert out["auc_a"] == pytest.approx(15 / 16) and out["auc_b"] == 1.0
    assert out["difference"] == pytest.approx(-1 / 16)
    assert out["ci"][0] < 0 and out["ci"][1] <= 0 and out["p_a_better"] < 0.5
    with pytest.raises(RuntimeError, match="different slides"):
        bench.compare_oof(tmp_path, {"per_slide": per_slide[:-1]}, "lesion")


def test_baseline_on_a_finished_run_reads_its_layout(bench, tmp_path, capsys, finished_run):
    """--baseline-on: the colour baseline on a workflow run's own patches, folds and lesion
    masks."""
    run = tmp_path / "run"
    finished_run(tmp_path, run, "exp", "coh")
    assert bench.main(["--baseline-on", str(run)]) == 0
    line = capsys.readouterr().out
    assert "OOF AUC 1.000" in line and "(2 slides)" in line
    # with --out, a record of the figures (README's demo baseline cites one)
    assert bench.main(["--baseline-on", str(run), "--out", str(tmp_path / "b.json")]) == 0
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["baseline"]["oof_auc"] == 1.0 and record["command"].endswith("b.json")
    assert record["run_dir_git_commit"] == "unknown"  # the run is no git checkout
    assert "gigamil" not in record  # the run has no evaluation yet


def test_baseline_on_a_run_records_the_runs_own_figures(bench, tmp_path, capsys, finished_run):
    """--baseline-on RUN --out FILE records the run's own figures beside the baseline's (the
    demo's README figures: OOF AUC and its CI, patient AUC, balanced accuracy, localisation
    mean and sd, each model's final training loss)."""
    run = tmp_path / "run"
    finished_run(tmp_path, run, "exp", "coh")
    ev = run / "results" / "eval" / "exp"
    ev.mkdir(parents=True)
    summary = {
        "oof_auc": 0.75, "oof_auc_ci": [0.5, 1.0], "patient_auc": 1.0,
        "balanced_accuracy": 0.5, "localization_auc": 0.8, "localization_auc_sd": 0.1,
        "localization_n_slides": 2, "fold_auc": [1.0, 0.5],
    }  # fmt: skip
    (ev / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame({"slide_id": ["a", "b"], "pred": ["lesion", "normal"]}).to_csv(
        ev / "per_slide_predictions.csv", index=False
    )
    for k, losses in ((0, [0.7, 0.3]), (1, [0.69, 0.45])):
        fold = run / "results" / "models" / "exp" / f"fold{k}"
        fold.mkdir(parents=True)
        log = {"epoch": [1, 2], "best_epoch": [1, 2], "train_loss": losses, "replicate": 0}
        pd.DataFrame(log).to_csv(fold / "train_log.csv", index=False)
    assert bench.main(["--baseline-on", str(run), "--out", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "gigamil on the run: OOF AUC 0.750, patient AUC 1.000" in out
    assert "localisation AUC 0.800 ± 0.100 (2 slides)" in out
    assert "final training loss 0.300-0.450 (2 models)" in out
    ours = json.loads((tmp_path / "b.json").read_text())["gigamil"]
    assert ours["oof_auc_ci"] == [0.5, 1.0] and ours["localization_auc_sd"] == 0.1
    assert [f["final_train_loss"] for f in ours["folds"]] == [0.3, 0.45]


def test_patches_follow_the_tiles_unless_set(bench, tmp_path):
    from PIL import Image

    from gigamil.errors import GigamilError

    for label in ("0", "1"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (64, 64), (200, 120, 180)).save(tmp_path / label / "a.png")
    geometry = bench.patch_geometry(tmp_path, 0.5)
    assert geometry == {"preprocessing": {"patches": {"mpp": 0.5, "patch_px": 64}}}
    # --set wins over the tiles' geometry; the other patch keys stay the repo's
    over = bench.deep_update(geometry, bench.parse_set(["preprocessing.patches.patch_px=32"]))
    assert over["preprocessing"]["patches"] == {"mpp": 0.5, "patch_px": 32}
    cfg = yaml.safe_load(bench.write_config(tmp_path, over).read_text())
    repo_patches = yaml.safe_load((bench.REPO / "config.yaml").read_text())["preprocessing"][
        "patches"
    ]
    assert cfg["preprocessing"]["patches"] == {**repo_patches, "mpp": 0.5, "patch_px": 32}
    Image.new("RGB", (64, 48), (200, 120, 180)).save(tmp_path / "0" / "0.png")  # sorted first
    with pytest.raises(GigamilError, match=r"one size.*1 of 64 x 48 px \(e.g. 0/0.png\)"):
        bench.patch_geometry(tmp_path, 0.5)
    Image.new("RGB", (64, 48), (200, 120, 180)).save(tmp_path / "0" / "b.png")  # not first
    with pytest.raises(GigamilError, match="one size"):
        bench.patch_geometry(tmp_path, 0.5)
    (tmp_path / "0" / "b.png").unlink()
    # tiles the cohort builder would not use do not decide: excluded, or without tissue
    from gigamil.tile_pool import read_tile_pool

    odd = read_tile_pool(tmp_path)[0]
    assert odd.file == "0/0.png"
    assert bench.patch_geometry(tmp_path, 0.5, {odd.sha256}) == geometry
    Image.new("RGB", (64, 48), (255, 255, 255)).save(tmp_path / "0" / "0.png")  # glass only
    assert bench.patch_geometry(tmp_path, 0.5) == geometry


def test_result_file_holds_the_draws_done_so_far(bench, tmp_path):
    args = bench.parse_args(["--draws", "3", "--out", str(tmp_path / "r.json")])
    started = {"date": "2026-12-02T00:00:00+00:00", "git_commit": "abc"}

    def draw(seed, ours, theirs):
        return {
            "seed": seed,
            "gigamil": {
                "oof_auc": ours,
                "localization_auc": 0.8,
                "wall_seconds": 10.0,
                "folds": [{"final_train_loss": 0.3}],
            },
            "baseline": {"oof_auc": theirs, "localization_auc": 0.7},
            "gigamil_minus_baseline": {"difference": ours - theirs},
        }

    draws = [draw(0, 0.9, 0.8)]
    bench.write_result(args, ["--draws", "3"], started, {"training": {}}, draws)
    first = json.loads(args.out.read_text())
    assert first["draws_requested"] == 3 and len(first["draws"]) == 1
    assert first["git_commit"] == "abc" and first["date"] == started["date"]
    assert first["summary"]["gigamil_oof_auc"]["mean"] == pytest.approx(0.9)
    draws.append(draw(1, 0.7, 0.8))
    summary = bench.write_result(args, ["--draws", "3"], started, {"training": {}}, draws)
    second = json.loads(args.out.read_text())
    assert len(second["draws"]) == 2 and second["summary"] == json.loads(json.dumps(summary))
    assert second["summary"]["oof_auc_difference"]["mean"] == pytest.approx(0.0)
    assert not list(tmp_path.glob("*.tmp"))


def test_folds_follow_a_smaller_cohort_unless_set(bench, capsys):
    folds = yaml.safe_load((bench.REPO / "config.yaml").read_text())["cv"]["folds"]
    assert bench.fit_folds({}, 2 * folds, range(3)) == {}
    small = bench.fit_folds({"training": {"epochs": 2}}, 4, range(2))
    assert small == {"training": {"epochs": 2}, "cv": {"folds": 2}}
    assert "cv.folds: 6 -> 2" in capsys.readouterr().out
    given = {"cv": {"folds": 3}}
    assert bench.fit_folds(given, 4, range(2)) == given
    from gigamil.errors import GigamilError  # 3 patients: a class of 1, found after preprocessing

    with pytest.raises(GigamilError, match="--patients 3 leaves a class with 1 patient"):
        bench.fit_folds({}, 3, range(1))


def test_result_file_defaults_to_the_workdir(bench, tmp_path):
    args = bench.parse_args(["--workdir", str(tmp_path)])
    assert args.out == tmp_path / "real_tissue.json"
    assert bench.parse_args(["--out", "x.json"]).out == Path("x.json")


def test_set_takes_several_pairs_and_repeats(bench):
    args = bench.parse_args(["--set", "a=1", "b.c=2", "--set", "d=x"])
    assert args.overrides == ["a=1", "b.c=2", "d=x"]
    assert bench.parse_set(args.overrides) == {"a": 1, "b": {"c": 2}, "d": "x"}


def test_every_draw_is_checked_for_enough_tiles_before_the_first(bench, tmp_path):
    from PIL import Image

    from gigamil.demo_tiles import tiles_needed
    from gigamil.errors import GigamilError

    rng = np.random.default_rng(0)
    for label, n in (("0", 22), ("1", 12)):
        (tmp_path / label).mkdir()
        for i in range(n):
            img = np.clip(np.array([200, 120, 180]) + rng.normal(0, 12, (32, 32, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(tmp_path / label / f"{i}.png")
    need = {
        s: tiles_needed(s, n_patients=2, slides_per_patient=1, tiles_per_slide=(10, 14))
        for s in range(6)
    }
    ok = [s for s in need if need[s][0] <= 22 and need[s][1] <= 12]
    bad = [s for s in need if need[s][0] > 22 or need[s][1] > 12]
    assert ok and bad  # the draws differ in size: some fit, some do not
    flags = ["--tiles", str(tmp_path), "--patients", "2", "--slides-per-patient", "1"]
    flags += ["--tiles-per-slide", "10", "14"]
    bench.check_tile_supply(
        tmp_path, (), bench.parse_args([*flags, "--seed", str(ok[0]), "--draws", "1"])
    )
    later_bad = min(b for b in bad if b > ok[0])  # a later draw of a run that starts well
    args = bench.parse_args([*flags, "--seed", str(ok[0]), "--draws", str(later_bad - ok[0] + 1)])
    with pytest.raises(GigamilError, match=f"draw seed {later_bad} needs"):
        bench.check_tile_supply(tmp_path, (), args)
    # where the tiles went: the demo's left out (and how to keep them), too little tissue
    from gigamil.tile_pool import read_tile_pool

    some = {t.sha256 for t in read_tile_pool(tmp_path) if t.label == 0}
    Image.new("RGB", (32, 32), (250, 250, 250)).save(tmp_path / "0" / "glass.png")
    with pytest.raises(GigamilError) as err:
        bench.check_tile_supply(tmp_path, set(list(some)[:5]), args)
    assert (
        "23 tiles in 0/, 5 of them the demo's (--no-exclude-packaged keeps them), 1 with too "
        "little tissue; 12 tiles in 1/)"
    ) in str(err.value)
    shutil.rmtree(tmp_path / "1")
    with pytest.raises(GigamilError, match=r"; 1/ does not exist\)"):
        bench.check_tile_supply(tmp_path, (), args)


def test_arguments_that_cannot_run_stop_before_any_work(bench, capsys):
    """--draws 0 crashed in fit_folds; a --tile-mpp of 1458 (the point dropped) failed inside
    snakemake with advice about sheets the user cannot edit."""
    for flags in (["--draws", "0"], ["--draws", "-1"], ["--tile-mpp", "1458"]):
        with pytest.raises(SystemExit):
            bench.parse_args(flags)
    assert "--tile-mpp 1458 µm/px is outside 0.05-100" in capsys.readouterr().err
    # --slides-per-patient failed only after the whole tile folder was read (and "²" with a
    # traceback): now at parse time, as gigamil demo's
    for value, said in [("x", "give N or LO-HI"), ("²", "give N or LO-HI"), ("3-1", "backwards")]:
        with pytest.raises(SystemExit):
            bench.parse_args(["--slides-per-patient", value])
        assert said in capsys.readouterr().err
    assert bench.parse_args(["--slides-per-patient", " 2-3 "]).slides_per_patient == "2-3"


def test_a_result_file_of_other_draws_is_not_replaced(bench, tmp_path):
    """Continuing a killed --draws 2 run with --seed 1 --draws 1 replaced the kept draw 0."""
    from gigamil.errors import GigamilError

    out = tmp_path / "r.json"
    bench.check_out(out, range(0, 2))  # no file yet
    out.write_text(json.dumps({"draws": [{"seed": 0}]}))
    bench.check_out(out, range(0, 2))  # the same command again redoes draw 0
    with pytest.raises(
        GigamilError, match=r"holds draw\(s\) of seed 0, which this run \(seeds 1-1\)"
    ):
        bench.check_out(out, range(1, 2))
    for other in ("[1, 2]", '{"a": 1}'):  # valid JSON of something else: not overwritten
        out.write_text(other)
        with pytest.raises(GigamilError, match="not a real_tissue.py result"):
            bench.check_out(out, range(1, 2))


def test_keys_the_benchmark_sets_cannot_be_overridden(bench, capsys):
    """--set experiment=x was silently replaced by the benchmark's own experiment name."""
    for key in ("experiment=mine", "cohorts.x.sheet=s.csv"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--set", "training.epochs=1", key])
        assert "set by the benchmark itself" in capsys.readouterr().err


def test_other_tiles_without_tile_mpp_say_which_mpp_is_assumed(bench, tmp_path, capsys):
    """A user's own --tiles without --tile-mpp ran at PatchCamelyon's 0.972 µm/px without a word."""
    assert bench.parse_args(["--tiles", str(tmp_path)]).tile_mpp == 0.972
    assert "--tile-mpp not given" in capsys.readouterr().err
    bench.parse_args(["--tiles", str(tmp_path), "--tile-mpp", "0.5"])
    bench.parse_args([])  # the developers' PatchCamelyon tiles: no note
    assert capsys.readouterr().err == ""


def test_a_running_draw_reports_snakemakes_progress(bench, tmp_path):
    """The console was silent for the minutes of a draw: snakemake's output goes to its log."""
    log = tmp_path / "snakemake.log"
    assert bench.pipeline_progress(log) == "building the cohort's DAG"
    log.write_text("Finished jobid: 3\n3 of 71 steps (4%) done\nx\n12 of 71 steps (17%) done\n")
    assert bench.pipeline_progress(log) == "12 of 71 steps done"


def test_settings_are_validated_before_any_draw_is_built(bench):
    """--set training.epochs=0 was refused only inside snakemake, after a cohort was built."""
    from gigamil.errors import ConfigError

    bench.check_settings({"training": {"epochs": 2}})
    with pytest.raises(ConfigError, match="config.yaml with --set: training.epochs"):
        bench.check_settings({"training": {"epochs": 0}})


def test_a_draw_reads_the_class_balance_of_its_predictions(bench, tmp_path):
    """The OOF AUC ranks; a draw whose probabilities put every slide in one class (balanced
    accuracy 0.5) is flagged on the draw's line, and its counts are recorded."""
    res = tmp_path / "results"
    ev = res / "eval" / bench.EXPERIMENT
    ev.mkdir(parents=True)
    summary = {"oof_auc": 1.0, "balanced_accuracy": 0.5, "brier": 0.2, "localization_auc": 0.9}
    (ev / "summary.json").write_text(json.dumps(summary))
    preds = pd.DataFrame({"slide_id": ["a", "b", "c", "d"], "pred": ["normal"] * 4})
    preds.to_csv(ev / "per_slide_predictions.csv", index=False)
    splits = res / "splits" / bench.EXPERIMENT
    splits.mkdir(parents=True)
    pd.DataFrame({"fold": [0, 0, 1, 1]}).to_csv(splits / "folds.csv", index=False)
    for k in (0, 1):
        fold = res / "models" / bench.EXPERIMENT / f"fold{k}"
        fold.mkdir(parents=True)
        log = pd.DataFrame({"epoch": [1, 2], "best_epoch": [2, 2], "train_loss": [0.7, 0.6]})
        log.to_csv(fold / "train_log.csv", index=False)
    got = bench.collect_gigamil(tmp_path)
    assert got["predicted"] == {"normal": 4} and got["balanced_accuracy"] == 0.5
    assert got["brier"] == 0.2 and [f["final_train_loss"] for f in got["folds"]] == [0.6, 0.6]
    note = bench.one_class_note(got["predicted"], ["normal", "lesion"])
    assert "every slide predicted normal (none lesion)" in note
    assert bench.one_class_note({"normal": 2, "lesion": 2}, ["normal", "lesion"]) == ""


def _coloured_tiles(root: Path, n_normal: int, n_tumour: int, px: int = 32) -> Path:
    """A labelled tile folder of noisy pink (normal) and purple (tumour) ``px``-px PNGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, n, colour in (("0", n_normal, (200, 120, 180)), ("1", n_tumour, (120, 60, 160))):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.clip(np.array(colour) + rng.normal(0, 12, (px, px, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / label / f"{i:03d}.png")
    return root


def test_the_paired_difference_resamples_patients(bench):
    """The draw's interval is the patient bootstrap (a patient's slides resampled together),
    not a bootstrap of slides, which treats a patient's two slides as two patients."""
    from gigamil.evaluate.metrics import paired_auc_difference

    rng = np.random.default_rng(1)
    ids = [f"s{i}" for i in range(24)]
    patients = [f"p{i // 3}" for i in range(24)]  # 8 patients of 3 slides
    y = np.array([(i // 3) % 2 for i in range(24)])
    ours = pd.DataFrame(
        {"slide_id": ids, "patient_id": patients, "prob_lesion": y + rng.normal(size=24)}
    )
    theirs = 0.5 * y + rng.normal(size=24)
    per_slide = [
        {"slide_id": s, "label": int(t), "score": b} for s, t, b in zip(ids, y, theirs, strict=True)
    ]
    got = bench.paired_with_baseline(ours, "prob_lesion", per_slide[::-1], "draw")
    want = paired_auc_difference(y, ours["prob_lesion"].to_numpy(), theirs, groups=patients)
    assert got == want  # the same computation on the same slides in the same order
    by_slide = paired_auc_difference(y, ours["prob_lesion"].to_numpy(), theirs)
    assert got["ci"] != pytest.approx(by_slide["ci"])


def test_the_summary_takes_each_figure_from_its_own_method(bench, tmp_path):
    """Every mean in the record's summary comes from its own field of the draws: the
    baseline's figures from the baseline, the training losses from every model of every draw,
    the difference from each draw's paired difference."""
    args = bench.parse_args(["--draws", "2", "--out", str(tmp_path / "r.json")])

    def draw(seed, k):
        return {
            "seed": seed,
            "gigamil": {
                "oof_auc": 0.90 + k,
                "balanced_accuracy": 0.80 + k,
                "localization_auc": 0.85 + k,
                "patch_score_localization_auc": 0.88 + k,
                "wall_seconds": 100.0 + 10 * k,
                "folds": [{"final_train_loss": 0.30 + k}, {"final_train_loss": 0.50 + k}],
            },
            "baseline": {"oof_auc": 0.60 + k, "localization_auc": 0.55 + k, "seconds": 2.0 + k},
            "gigamil_minus_baseline": {"difference": 0.25 + k},
        }

    summary = bench.write_result(args, [], {}, {}, [draw(0, 0.0), draw(1, 0.02)])
    mean = {key: stat["mean"] for key, stat in summary.items()}
    assert mean == pytest.approx(
        {
            "gigamil_oof_auc": 0.91,
            "gigamil_balanced_accuracy": 0.81,
            "gigamil_localization_auc": 0.86,
            "gigamil_patch_score_localization_auc": 0.89,
            "gigamil_wall_seconds": 100.1,
            "gigamil_final_train_loss": 0.41,
            "baseline_oof_auc": 0.61,
            "baseline_localization_auc": 0.56,
            "baseline_wall_seconds": 2.01,
            "oof_auc_difference": 0.26,
        }
    )
    assert summary["gigamil_final_train_loss"]["n"] == 4  # 2 models x 2 draws
    assert summary["baseline_oof_auc"]["sd"] == pytest.approx(np.std([0.60, 0.62], ddof=1))
    record = json.loads(args.out.read_text())
    assert [d["baseline"]["oof_auc"] for d in record["draws"]] == [0.60, 0.62]


def test_each_replicate_of_a_fold_is_a_model_of_its_own(bench, tmp_path):
    """With training.replicates > 1 a fold's train_log.csv holds every member: each gets its
    own final loss, not the last rows of the log whichever member they belong to."""
    res = tmp_path / "results"
    ev = res / "eval" / bench.EXPERIMENT
    ev.mkdir(parents=True)
    (ev / "summary.json").write_text(json.dumps({"oof_auc": 0.9}))
    pd.DataFrame({"slide_id": ["a", "b"], "pred": ["normal", "lesion"]}).to_csv(
        ev / "per_slide_predictions.csv", index=False
    )
    (res / "splits" / bench.EXPERIMENT).mkdir(parents=True)
    pd.DataFrame({"fold": [0, 0]}).to_csv(res / "splits" / bench.EXPERIMENT / "folds.csv")
    fold = res / "models" / bench.EXPERIMENT / "fold0"
    fold.mkdir(parents=True)
    log = pd.DataFrame(
        {
            "replicate": [0, 0, 0, 1, 1],
            "epoch": [1, 2, 3, 1, 2],
            "best_epoch": [2, 2, 2, 1, 1],
            "train_loss": [0.7, 0.5, 0.6, 0.8, 0.9],
        }
    )
    log.to_csv(fold / "train_log.csv", index=False)
    got = bench.collect_gigamil(tmp_path)["folds"]
    assert got == [
        {"fold": 0, "replicate": 0, "epochs": 3, "best_epoch": 2, "final_train_loss": 0.6,
         "min_train_loss": 0.5},
        {"fold": 0, "replicate": 1, "epochs": 2, "best_epoch": 1, "final_train_loss": 0.9,
         "min_train_loss": 0.8},
    ]  # fmt: skip


def test_tile_coverage_matches_each_slides_tiles_to_its_own_patch_grid(
    bench, tmp_path, finished_run
):
    """The 'tiles -> patches' fraction: a tile counts when its own slide has a patch at its
    cell (row, col), not when another slide has one there, and every placed tile is in the
    denominator."""
    run = tmp_path / "run"
    finished_run(tmp_path, run, bench.EXPERIMENT, bench.COHORT)
    sheet = pd.read_csv(run / "sheet.csv")
    assert bench.tile_coverage(run, sheet) == 1.0  # plain tissue tiles: every one a patch
    tiles = pd.read_csv(run / "cohort" / "tiles.csv")
    lost = tiles.iloc[[0]].assign(row=0, col=0)  # a cell on the empty border: no patch there
    pd.concat([tiles, lost]).to_csv(run / "cohort" / "tiles.csv", index=False)
    assert bench.tile_coverage(run, sheet) == pytest.approx(len(tiles) / (len(tiles) + 1))
    # a tile of slide a listed under slide b, at a cell where b has no patch (a has one)
    a, b = sheet["slide_id"][:2]
    rows = list(zip(tiles.index, tiles.slide_id, tiles.row, tiles.col, strict=True))
    cells_b = {(r, c) for _, s, r, c in rows if s == b}
    moved = next(i for i, s, r, c in rows if s == a and (r, c) not in cells_b)
    tiles.loc[moved, "slide_id"] = b
    tiles.to_csv(run / "cohort" / "tiles.csv", index=False)
    assert bench.tile_coverage(run, sheet) == pytest.approx((len(tiles) - 1) / len(tiles))


def test_a_class_with_exactly_the_tiles_a_draw_needs_is_enough(bench, tmp_path):
    """The supply check refuses only a draw that needs more tiles than there are: exactly
    enough builds (the cohort builder's own rule)."""
    from gigamil.demo_tiles import make_tile_cohort, tiles_needed

    need = tiles_needed(2, n_patients=2, slides_per_patient=1, tiles_per_slide=(8, 10))
    _coloured_tiles(tmp_path / "tiles", need[0], need[1])
    flags = ["--tiles", str(tmp_path / "tiles"), "--patients", "2", "--slides-per-patient", "1"]
    args = bench.parse_args([*flags, "--tiles-per-slide", "8", "10", "--seed", "2", "--draws", "1"])
    bench.check_tile_supply(tmp_path / "tiles", (), args)
    make_tile_cohort(
        tmp_path / "c", seed=2, n_patients=2, slides_per_patient=1, tiles=tmp_path / "tiles",
        tiles_per_slide=(8, 10),
    )  # fmt: skip


def test_a_run_builds_its_draws_at_the_tile_mpp_and_scores_the_lesion_class(
    bench, tmp_path, monkeypatch
):
    """main() with the pipeline and the scoring stubbed: each draw's slides and patches are at
    --tile-mpp (a user's tiles were silently taken as PatchCamelyon's 0.972 µm/px), the
    baseline and the paired difference score the positive class, the demo's tiles are left
    out, and the record holds every draw; an --out of other seeds is refused before a cohort
    is built."""
    import openslide

    from gigamil.errors import GigamilError

    tiles = _coloured_tiles(tmp_path / "tiles", 60, 20)
    configs, positives = [], []

    def pipeline(wd, config, cores):
        configs.append(yaml.safe_load(Path(config).read_text()))
        return 7.0

    def baseline(wd, sheet, positive):
        positives.append(positive)
        return {"oof_auc": 0.7, "localization_auc": 0.6, "per_slide": []}

    def compare(wd, baseline, positive):
        positives.append(positive)
        ahead = {"p_a_better": 0.925, "p_a_ahead": 0.9, "p_level": 0.05}
        return {"difference": 0.2, "ci": [0.0, 0.4], **ahead}

    gigamil = {
        "oof_auc": 0.9,
        "balanced_accuracy": 0.8,
        "localization_auc": 0.85,
        "folds": [{"final_train_loss": 0.2}],
        "predicted": {"normal": 2, "lesion": 2},
    }
    monkeypatch.setattr(bench, "run_pipeline", pipeline)
    monkeypatch.setattr(bench, "run_baseline", baseline)
    monkeypatch.setattr(bench, "compare_oof", compare)
    monkeypatch.setattr(bench, "collect_gigamil", lambda wd: dict(gigamil))
    monkeypatch.setattr(bench, "tile_coverage", lambda wd, sheet: 1.0)
    out, work = tmp_path / "r.json", tmp_path / "work"
    argv = ["--tiles", str(tiles), "--tile-mpp", "0.5", "--patients", "4"]
    argv += ["--slides-per-patient", "1", "--tiles-per-slide", "8", "10", "--seed", "5"]
    argv += ["--draws", "2", "--workdir", str(work), "--out", str(out)]
    from gigamil import tile_pool

    demos = {t.sha256 for t in tile_pool.read_tile_pool(tiles)[::3]}  # stand-ins for the demo's
    monkeypatch.setattr(tile_pool, "packaged_tile_hashes", lambda: demos)
    out.write_text(json.dumps({"draws": [{"seed": 4}]}))
    with pytest.raises(GigamilError, match="holds draw"):
        bench.main(argv)
    assert not work.exists() and not configs
    out.unlink()
    assert bench.main(argv) == 0
    assert [c["preprocessing"]["patches"]["mpp"] for c in configs] == [0.5, 0.5]
    assert [c["preprocessing"]["patches"]["patch_px"] for c in configs] == [32, 32]
    for slide in sorted((work / "draw5" / "cohort" / "slides").glob("*.tiff"))[:1]:
        with openslide.OpenSlide(slide) as s:
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5, abs=1e-4)
    assert positives == ["lesion"] * 4
    record = json.loads(out.read_text())
    assert [d["seed"] for d in record["draws"]] == [5, 6] and record["draws_requested"] == 2
    assert record["cohort"]["tile_mpp"] == 0.5
    for seed in (5, 6):  # --exclude-packaged (the default): none of the demo's tiles
        placed = set(pd.read_csv(work / f"draw{seed}" / "cohort" / "tiles.csv")["sha256"])
        assert placed and not placed & demos


def test_the_draw_line_reads_strictly_ahead_and_level_apart(bench):
    """The console's "ahead" is the fraction strictly ahead, ties said apart; an older
    record with only p_a_better says ties were counted half."""
    d = {"p_a_better": 0.7, "p_a_ahead": 0.6, "p_level": 0.2}
    assert bench.ahead_text(d) == "gigamil ahead in 60% of resamples, level in 20%"
    assert "70% of resamples (ties counted half)" in bench.ahead_text({"p_a_better": 0.7})
