"""Table: gigamil over cohorts and training seeds against the colour baseline, from committed JSONs.

Run by hand; prints the Markdown table docs/results.md's "On other real tissue" shows (README summarises it):

    python benchmarks/seed_table.py

Every figure comes from a committed record: gigamil's OOF and localisation AUC per cohort and
training seed from the screens of the shipped settings in ``benchmarks/results/screen.json``
(:data:`RUNS`: record name and the training seeds it ran, in order; a record lists one value per
seed), the colour baseline's per draw from the ``real_tissue.py`` result JSONs (:data:`BASELINES`)
and for the demo from ``benchmarks/real_tissue.py --baseline-on`` (:data:`DEMO_BASELINE`). Where
two records hold the same cohort and seed the first one listed is used (a rerun on later code
comes first) and the other is printed as a reproduction check below the table. "Ahead" / "level"
/ "behind" count the runs whose OOF AUC is above / equal to (within 0.0005) / below the
baseline's on the same slides. Below the table: the counts over all runs, the OOF AUC over the
draws' runs (mean ± sd, range) and in how many runs the localisation AUC is above the baseline's.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCREEN = REPO / "benchmarks" / "results" / "screen.json"
RUNS: list[tuple[str, list[int]]] = [  # the shipped settings (cv.val_fraction 0, 48 epochs,
    ("cl_d01", [0, 2]),  # two models per fold, greyscale 0.2); reruns first
    ("repro_d1", [0]),
    ("gray20_repro", [0, 2]),
    ("gray20_seeds68", [6, 8]),
    ("gray20_d2345_seeds46", [4, 6]),
    ("gray20_seed4", [4]),
    ("gray20", [0]),
    ("gray20_seed2", [2]),
    ("gray20_d345", [0]),
    ("gray20_d345_seed2", [2]),
    ("shipped_d678", [0]),  # held-out draws 6-8, built after the settings were chosen
    ("shipped_d678_seed2", [2]),
    ("shipped_d678_seed4", [4]),
    ("shipped_d91011", [0]),  # held-out draws 9-11, built on 2026-12-06 after draws 6-8
    ("shipped_d91011_seed2", [2]),
    ("shipped_d91011_seed4", [4]),
]
# the shipped settings plus training.recalibrate_every: 1 (docs/real_tissue.md, "Recalibrating
# BatchNorm every epoch"); `--variant recal` prints their table
RECAL_RUNS: list[tuple[str, list[int]]] = [
    ("recal1", [0, 2, 4]),  # run as --seeds 2 4 0; screen.py stores them sorted
    ("recal1_s68", [6, 8]),
    ("recal1_d01", [0, 2]),
    ("recal1_d2345", [4]),
]
BASELINES = [
    REPO / "benchmarks" / "results" / "real_tissue_gray20.json",
    REPO / "benchmarks" / "results" / "real_tissue_draws345.json",
    REPO / "benchmarks" / "results" / "real_tissue_draws678.json",
    REPO / "benchmarks" / "results" / "real_tissue_draws9_11.json",
]
# draws first built on 2026-12-06, after every shipped setting was chosen on draws 0-5 and the
# demo (6-8, then 9-11 after the variants screened on 6-8 were not shipped): their runs are
# summarised apart from the in-sample draws' below the table, per batch and together
HELD_OUT_BATCHES = {
    "held-out draws 6-8": ("draw6", "draw7", "draw8"),
    "held-out draws 9-11": ("draw9", "draw10", "draw11"),
}
HELD_OUT = tuple(d for batch in HELD_OUT_BATCHES.values() for d in batch)
# the table's demo row is the 24-slide demo of 12 patients (until 2026-12-06), whose baseline was
# python benchmarks/real_tissue.py --baseline-on DEMO_CLONE --out
# benchmarks/results/demo_baseline.json (a fresh-clone demo run; its smoothed figures too),
# kept as demo_baseline_24_slides.json when the demo became 16 patients of one or two slides
DEMO_BASELINE = REPO / "benchmarks" / "results" / "demo_baseline_24_slides.json"
# the baseline with gigamil's spatial prior (its patch scores smoothed over the grid as smabmil
# smooths attention): python benchmarks/baseline_smoothing.py --demo DEMO_CLONE
SMOOTHED = REPO / "benchmarks" / "results" / "baseline_smoothing.json"
COHORTS = ["demo", *(f"draw{i}" for i in range(12))]


def cohort_name(key: str) -> str:
    """``demo8`` (a demo clone's folder name) -> ``demo``; draws keep theirs."""
    return "demo" if key.startswith("demo") else key


def collect(
    which: list[tuple[str, list[int]]] = RUNS,
) -> tuple[dict[tuple[str, int], tuple[float, float]], list[str]]:
    """``{(cohort, seed): (oof_auc, localisation_auc)}`` of the records ``which`` and the
    reproduction-check lines; records not (yet) in screen.json are skipped."""
    records = json.loads(SCREEN.read_text())
    runs: dict[tuple[str, int], tuple[float, float]] = {}
    checks = []
    for name, seeds in which:
        if name not in records:
            continue
        rec = records[name]
        if "seeds" in rec and list(rec["seeds"]) != list(seeds):  # the values' order
            raise SystemExit(f"{name}: its values are of seeds {rec['seeds']}, listed {seeds}")
        for key, values in rec["oof_auc"].items():
            for seed, oof, loc in zip(seeds, values, rec["localization_auc"][key], strict=True):
                cell = (cohort_name(key), seed)
                if cell in runs:
                    checks.append(
                        f"{cell[0]} seed {seed}: {name} gives {oof:.3f}, the table {runs[cell][0]:.3f}"
                    )
                else:
                    runs[cell] = (oof, loc)
    return runs, checks


def baselines() -> dict[str, tuple[float, float]]:
    demo = json.loads(DEMO_BASELINE.read_text())["baseline"]
    out = {"demo": (demo["oof_auc"], demo["localization_auc"])}
    for path in BASELINES:
        for d in json.loads(path.read_text())["draws"]:
            out[f"draw{d['seed']}"] = (d["baseline"]["oof_auc"], d["baseline"]["localization_auc"])
    return out


def smoothed_baselines() -> dict[str, tuple[float, float]]:
    """``{cohort: (oof_auc, localisation_auc)}`` of the baseline smoothed as gigamil's
    attention (:data:`SMOOTHED`; empty before that record exists); draws it does not hold from
    the ``baseline.smoothed`` of the :data:`BASELINES` records (real_tissue.py writes it)."""
    if not SMOOTHED.is_file():
        return {}
    rec = json.loads(SMOOTHED.read_text())
    parts = [(f"draw{d['seed']}", d) for d in rec["draws"]] + [("demo", rec.get("demo"))]
    out = {
        c: (d["baseline_smoothed"]["oof_auc"], d["baseline_smoothed"]["localization_auc"])
        for c, d in parts
        if d
    }
    for path in BASELINES:
        for d in json.loads(path.read_text())["draws"]:
            sm = d["baseline"].get("smoothed")
            if sm and f"draw{d['seed']}" not in out:
                out[f"draw{d['seed']}"] = (sm["oof_auc"], sm["localization_auc"])
    demo = json.loads(DEMO_BASELINE.read_text())["baseline"].get("smoothed")
    if demo:  # the demo's from the run of the unsmoothed figures (one run per row)
        out["demo"] = (demo["oof_auc"], demo["localization_auc"])
    return out


def compare(oof_loc: list[tuple[float, float]], base: tuple[float, float]) -> list[int]:
    """``[ahead, level, behind, localisation above, runs]`` of gigamil's runs against one
    baseline's (OOF AUC within 0.0005: level)."""
    ahead = sum(v[0] > base[0] + 5e-4 for v in oof_loc)
    behind = sum(v[0] < base[0] - 5e-4 for v in oof_loc)
    above = sum(v[1] > base[1] for v in oof_loc)
    return [ahead, len(oof_loc) - ahead - behind, behind, above, len(oof_loc)]


def _spread(values: list[float]) -> str:
    """ "mean ± sd (min-max)"."""
    return (
        f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} "
        f"({min(values):.3f}-{max(values):.3f})"
    )


def table(which: list[tuple[str, list[int]]] = RUNS) -> str:
    runs, checks = collect(which)
    base, smoothed = baselines(), smoothed_baselines()
    seeds = sorted({s for _, s in runs})
    head = ["cohort", "baseline OOF (loc.)", *(f"seed {s}" for s in seeds)]
    head += ["gigamil mean ± sd", "ahead / level / behind", "gigamil loc. mean"]
    head += ["smoothed baseline OOF (loc.)", "ahead / level / behind it"] if smoothed else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total, total_sm, draw_oof = [0] * 5, [0] * 5, []
    for cohort in COHORTS:
        got = [runs.get((cohort, s)) for s in seeds]
        if not any(got):
            continue
        done = [v for v in got if v is not None]
        raw = compare(done, base[cohort])
        total = [a + b for a, b in zip(total, raw, strict=True)]
        in_sample = cohort not in ("demo", *HELD_OUT)
        draw_oof += [v[0] for v in done] if in_sample else []
        oof = [v[0] for v in done]
        sd = f" ± {statistics.stdev(oof):.3f}" if len(oof) > 1 else ""
        row = [cohort.replace("draw", "draw "), "{:.3f} ({:.3f})".format(*base[cohort])]
        row += [f"{v[0]:.3f}" if v else "–" for v in got]
        row += [f"{statistics.fmean(oof):.3f}{sd}", "{} / {} / {}".format(*raw)]
        row += [f"{statistics.fmean(v[1] for v in done):.3f}"]
        if smoothed:
            sm = compare(done, smoothed[cohort])
            total_sm = [a + b for a, b in zip(total_sm, sm, strict=True)]
            row += ["{:.3f} ({:.3f})".format(*smoothed[cohort]), "{} / {} / {}".format(*sm)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "all runs: ahead {}, level {}, behind {}".format(*total)]
    if len(draw_oof) > 1:
        lines.append(f"draws 0-5: {len(draw_oof)} runs, OOF AUC {_spread(draw_oof)}")
    groups = {**HELD_OUT_BATCHES, "all held-out draws": HELD_OUT}
    for what, draws in groups.items():
        runs_of = [v for (cohort, _), v in runs.items() if cohort in draws]
        if len(runs_of) > 1:
            lines.append(
                f"{what}: {len(runs_of)} runs, OOF AUC {_spread([v[0] for v in runs_of])}, "
                f"localisation AUC {_spread([v[1] for v in runs_of])}"
            )
    lines.append("localisation above the baseline's in {3} of {4} runs".format(*total))
    if smoothed:
        lines.append(
            "against the smoothed baseline: ahead {}, level {}, behind {}; localisation above "
            "it in {} of {} runs".format(*total_sm)
        )
    return "\n".join(lines + ["", "reproduction checks:", *checks])


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=["shipped", "recal"], default="shipped")
    print(table(RECAL_RUNS if ap.parse_args().variant == "recal" else RUNS))
