"""The demo workflow on a real SLURM cluster, through `snakemake --profile profiles/slurm`.

Needs the single-node cluster of tests/slurm/cluster.sh (`tests/slurm/ci.sh` brings it up, runs
`pytest -m slurm` and brings it down). The same tiny configuration runs once through SLURM and once
locally; the test checks from SLURM's own records (squeue, the per-job SLURM logs) that every job
ran as a SLURM job, that training asked for a GPU, and that both runs made the same files.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from wfutil import FOUR_SLIDES, copy_workflow, deep_update

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
FOLDS = 2
SLIDES = FOUR_SLIDES
SLURM_TIMEOUT = 480  # s, the SLURM run (12 slides: 271-349 s; 16 took 470 s on a slow VM)
TINY: dict = {
    # one model per fold (as FAST_OVERRIDES): this test is about the executor, and the SLURM run
    # must stay well inside SLURM_TIMEOUT
    "training": {"epochs": 1, "replicates": 1, "early_stopping": {"patience": 1}},
    "cv": {"folds": FOLDS},
    "heatmaps": {"slides": ["demo_p01_s1"]},
}
PROFILES = [
    "--profile",
    str(REPO / "profiles/slurm"),
    "--profile",
    str(REPO / "tests/slurm/profile"),
]
# no shell, script or run: Snakemake runs these in the controlling process, never through SLURM
LOCAL_RULES = {"all"}


def snakemake_cmd(timeout: int, *args: str) -> list[str]:
    # a hung SLURM run ignores SIGTERM for a long time: `timeout -k` kills it for sure
    return ["timeout", "-k", "10", str(timeout), SNAKEMAKE, *args]


def executed_jobs(text: str) -> Counter:
    """(local?, rule, wildcards) of every job a snakemake log says it executed."""
    jobs: list[list] = []
    for line in text.splitlines():
        head = re.match(r"^\s*(local)?rule (\w+):\s*$", line)
        if head:
            jobs.append([bool(head.group(1)), head.group(2), ""])
            continue
        wc = re.match(r"^\s+wildcards: (.+)$", line)
        if wc and jobs:
            jobs[-1][2] = wc.group(1).strip()
    return Counter(tuple(j) for j in jobs)


def squeue(job_ids: list[str]) -> pd.DataFrame:
    """SLURM's record of the given jobs (finished jobs stay visible for MinJobAge = 1 h)."""
    fmt = "JobID:|,State:|,Comment:300|,tres-per-job:|,NumCPUs:|,MinMemory:|,TimeLimit:"
    res = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-O", fmt],
        capture_output=True,
        text=True,
        check=True,
    )
    cols = ["job_id", "state", "comment", "tres_per_job", "cpus", "min_memory", "time_limit"]
    rows = [[f.strip() for f in line.split("|")] for line in res.stdout.splitlines() if line]
    return pd.DataFrame(rows, columns=cols)


@pytest.fixture(scope="module")
def cluster() -> None:
    """The test cluster must be up, with its fake GPU."""
    try:
        res = subprocess.run(
            ["sinfo", "-h", "-o", "%T %G"], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        pytest.fail("no SLURM client: start the test cluster with tests/slurm/cluster.sh up")
    assert res.returncode == 0 and res.stdout.strip(), (
        f"SLURM not reachable ({res.stderr.strip()}): run tests/slurm/cluster.sh up as root"
    )
    state, gres = res.stdout.split()[:2]
    assert state in {"idle", "mixed", "allocated"}, f"the test node is {state}"
    assert "gpu" in gres, f"the test node advertises no GPU: {gres}"


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the tiny demo through SLURM and, meanwhile, locally. Returns both directories + logs."""
    base = tmp_path_factory.mktemp("slurm")
    on_slurm = copy_workflow(base / "slurm", TINY, SLIDES)
    local = copy_workflow(base / "local", TINY, SLIDES)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # GPUs for the training and prediction jobs: the test node has a fake one, so the trainer
    # itself runs on the CPU (device: auto) while SLURM allocates the GPU.
    gpu = ["--set-resources", "train_fold:gpu=1", "predict_fold:gpu=1"]
    with open(base / "slurm.out", "w") as out:
        proc = subprocess.Popen(
            snakemake_cmd(SLURM_TIMEOUT, *PROFILES, *gpu),
            cwd=on_slurm,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            loc = subprocess.run(
                snakemake_cmd(SLURM_TIMEOUT, "--cores", "1"),
                cwd=local,
                capture_output=True,
                text=True,
                env=env,
                timeout=SLURM_TIMEOUT + 30,
            )
            rc = proc.wait(timeout=SLURM_TIMEOUT + 30)
        finally:
            if proc.poll() is None:
                proc.kill()
    slurm_log = (base / "slurm.out").read_text()
    assert rc == 0, f"SLURM run failed ({rc}):\n{slurm_log[-8000:]}"
    assert loc.returncode == 0, f"local run failed:\n{(loc.stdout + loc.stderr)[-8000:]}"
    return {"slurm": on_slurm, "local": local, "slurm_log": slurm_log}


def test_every_job_ran_as_a_slurm_job(runs: dict):
    log = runs["slurm_log"]
    jobs = executed_jobs(log)
    local_rules = {rule for (is_local, rule, _) in jobs if is_local}
    assert local_rules <= LOCAL_RULES, f"ran outside SLURM: {local_rules - LOCAL_RULES}"
    remote = Counter({(rule, wc): n for (is_local, rule, wc), n in jobs.items() if not is_local})
    assert remote, log[-4000:]
    for stage in (
        "demo_cohort",
        "tissue_mask",
        "extract_patches",
        "make_splits",
        "train_fold",
        "predict_fold",
        "aggregate_cv",
        "heatmap",
    ):
        assert any(rule == stage for rule, _ in remote), f"{stage} did not run: {sorted(remote)}"

    # every submission was accepted by sbatch and finished as COMPLETED in SLURM's books
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", log)
    assert submitted, "no sbatch submission in the log"
    ids = [jid for jid, _ in submitted]
    assert len(set(ids)) == len(ids)
    books = squeue(ids)
    assert sorted(books["job_id"]) == sorted(ids), books
    assert (books["state"] == "COMPLETED").all(), books

    # Inside its allocation, a SLURM job runs each of its Snakemake jobs as a job step (srun),
    # where Snakemake executes it as a `localrule`: every job of the run must appear exactly
    # once that way in exactly one SLURM job's own log.
    inside: Counter = Counter()
    for _, path in submitted:
        steps = executed_jobs(Path(path).read_text())
        inside.update({(rule, wc): n for (is_local, rule, wc), n in steps.items() if is_local})
    assert inside == remote, (inside - remote, remote - inside)
    # per-slide work went in groups: fewer SLURM jobs than Snakemake jobs
    assert len(ids) < sum(remote.values())


def test_training_jobs_asked_for_a_gpu(runs: dict):
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", runs["slurm_log"])
    books = squeue(submitted)
    train = books[books["comment"].str.startswith("rule_train_fold")]
    assert len(train) == FOLDS, books
    assert train["tres_per_job"].str.contains("gpu:1").all(), train
    other = books[~books["comment"].str.contains("_fold")]
    assert not other["tres_per_job"].str.contains("gpu").any(), other


def test_cuda_config_makes_the_rules_ask_for_gpus(cluster, tmp_path: Path):
    """With `training.device: cuda` the rules themselves (no --set-resources) request a GPU."""
    workdir = copy_workflow(
        tmp_path / "cuda", deep_update(TINY, {"training": {"device": "cuda"}}), SLIDES
    )
    res = subprocess.run(
        snakemake_cmd(120, *PROFILES, "--dry-run"),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=150,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    blocks = re.findall(r"^\s*rule (\w+):\n(.*?)(?=^\s*(?:local)?rule \w+:|\Z)", out, re.M | re.S)
    gpus = {}
    for rule, body in blocks:
        found = re.search(r"^\s+resources: .*?\bgpu=(\d+)", body, re.M)
        gpus.setdefault(rule, set()).add(int(found.group(1)) if found else 0)
    assert gpus["train_fold"] == {1} and gpus["predict_fold"] == {1}, gpus
    assert all(g == {0} for r, g in gpus.items() if r not in {"train_fold", "predict_fold"}), gpus


def test_outputs_match_a_local_run(runs: dict):
    a, b = runs["slurm"] / "results", runs["local"] / "results"
    pd.testing.assert_frame_equal(
        pd.read_csv(a / "splits/demo/folds.csv"), pd.read_csv(b / "splits/demo/folds.csv")
    )
    sheet = pd.read_csv(runs["local"] / "resources" / "small.csv")
    for sid in sheet["slide_id"]:
        mask = f"masks/demo/{sid}.png"
        assert (a / mask).read_bytes() == (b / mask).read_bytes(), mask
        za = zarr.open_group(str(a / f"patches/demo/{sid}.zarr"), mode="r")
        zb = zarr.open_group(str(b / f"patches/demo/{sid}.zarr"), mode="r")
        for name in ("patches", "coords", "grid"):
            np.testing.assert_array_equal(za[name][:], zb[name][:], err_msg=f"{sid}/{name}")
    for k in range(FOLDS):
        pa = pd.read_csv(a / f"predictions/demo/fold{k}/demo.csv")
        pb = pd.read_csv(b / f"predictions/demo/fold{k}/demo.csv")
        pd.testing.assert_frame_equal(pa, pb, check_exact=False, atol=1e-5)
