"""The feature cache of a frozen encoder in the real workflow (issue 13, item 4): rule
extract_features writes results/features/{encoder_id}/{cohort}/{slide_id}.zarr, train_fold reads
them, and `snakemake --dry-run` after a training-only or head-only change schedules no
extraction, while a change of the encoder does. The workflow is copied into a temporary
directory and run once, for real, with a tiny frozen-encoder configuration (up to the CV
summary); every case then asks `snakemake --dry-run` what a rerun would do.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from wfutil import (
    FOUR_SLIDES,
    config_restored,
    copy_workflow,
    planned_jobs,
    read_config,
    snakemake_in,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FOLDS = 2
SLIDES = FOUR_SLIDES
FROZEN: dict = {
    "model": {"trainable_blocks": 0},
    "training": {"epochs": 2, "early_stopping": {"patience": 2}},
    "cv": {"folds": FOLDS},
    "ensemble": {"enabled": False},
    "heatmaps": {"slides": "none"},
}
TARGET = "results/eval/demo/summary.json"


def planned(workdir: Path) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a rerun of TARGET would execute."""
    return planned_jobs(workdir, TARGET)


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("features") / "work", FROZEN, SLIDES)
    snakemake_in(workdir, TARGET, timeout=900)
    return workdir


@pytest.fixture()
def workdir(done: Path):
    yield from config_restored(done)


def test_frozen_run_trains_from_the_feature_stores(workdir: Path):
    stores = sorted((workdir / "results" / "features").glob("*/demo/*.zarr"))
    assert len(stores) == len(SLIDES), stores  # every slide of the cohort, one encoder_id
    assert len({p.parent.parent.name for p in stores}) == 1
    encoder_id = stores[0].parent.parent.name
    assert re.fullmatch(r"smallcnn-[0-9a-f]{12}", encoder_id)
    log = (workdir / "logs" / "train_fold" / "demo" / "fold0.log").read_text()
    assert f"cached features of encoder smallcnn ({encoder_id}" in log
    assert "patch augmentation (training.augment) is not applied" in log
    assert planned(workdir) == []


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("training", "lr", 0.001),
        ("training", "epochs", 3),
        ("model", "att_dim", 32),
        ("model", "pool", "abmil"),
    ],
)
def test_training_or_head_change_extracts_nothing(workdir: Path, section, key, value):
    cfg = read_config(workdir)
    assert cfg[section][key] != value
    cfg[section][key] = value
    write_config(workdir, cfg)
    counts = Counter(rule for rule, _ in planned(workdir))
    assert counts["train_fold"] == FOLDS, counts
    assert "extract_features" not in counts, counts
    assert not {"extract_patches", "tissue_mask", "make_splits"} & set(counts), counts


def test_encoder_change_extracts_again_under_a_new_id(workdir: Path):
    old = {p.name for p in (workdir / "results" / "features").iterdir()}
    cfg = read_config(workdir)
    cfg["model"]["batchnorm"] = "groupnorm"  # other features
    write_config(workdir, cfg)
    jobs = planned(workdir)
    extract = [w for rule, w in jobs if rule == "extract_features"]
    assert len(extract) == len(SLIDES)
    assert {w["encoder_id"] for w in extract}.isdisjoint(old)
    assert not {"extract_patches", "tissue_mask"} & {rule for rule, _ in jobs}


def test_unfrozen_encoder_reads_the_patch_stores(workdir: Path):
    cfg = read_config(workdir)
    cfg["model"]["trainable_blocks"] = "all"
    write_config(workdir, cfg)
    counts = Counter(rule for rule, _ in planned(workdir))
    assert counts["train_fold"] == FOLDS and "extract_features" not in counts, counts


def test_training_strategy_spellings_share_the_cache(workdir: Path):
    # training.strategy: frozen is the same feature cache as trainable_blocks: 0
    cfg = read_config(workdir)
    cfg["model"]["trainable_blocks"] = "all"
    cfg["training"]["strategy"] = "frozen"
    write_config(workdir, cfg)
    counts = Counter(rule for rule, _ in planned(workdir))
    assert "extract_features" not in counts, counts  # the same encoder_id: nothing re-extracted
    # em settings change nothing a frozen run trains
    cfg = read_config(workdir)
    cfg["training"]["em"] = {"rounds": 2, "pseudo_label": "attention"}
    write_config(workdir, cfg)
    assert Counter(rule for rule, _ in planned(workdir)) == counts
    # em trains the encoder: it reads the patch stores, in the end-to-end rule graph
    cfg["training"]["strategy"] = "em"
    write_config(workdir, cfg)
    counts = Counter(rule for rule, _ in planned(workdir))
    assert counts["train_fold"] == FOLDS and "extract_features" not in counts, counts


def test_contradictory_strategy_stops_before_any_job(workdir: Path):
    cfg = read_config(workdir)
    cfg["training"]["strategy"] = "em"  # with the fixture's trainable_blocks: 0
    write_config(workdir, cfg)
    out = snakemake_in(workdir, "--dry-run", TARGET, timeout=300, ok=False)
    assert "em fine-tunes the encoder but model.trainable_blocks: 0 freezes it" in out
