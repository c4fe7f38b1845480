"""Launch fold training on several GPUs with torchrun (DDP), as the train_fold rule does."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

log = logging.getLogger(__name__)


def torchrun_command(workdir: Path, out_dir: Path, nproc: int, threads: int) -> list[str]:
    """The torchrun command line that runs `gigamil train` on ``nproc`` processes (one per GPU)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "gigamil",
        "train",
        "--config",
        str(workdir / "config.yaml"),
        "--train-csv",
        str(workdir / "train.csv"),
        "--val-csv",
        str(workdir / "val.csv"),
        "--out",
        str(out_dir),
        "--threads",
        str(max(1, threads // nproc)),
    ]


def train_fold_torchrun(  # noqa: PLR0913 - mirrors train_fold's public signature
    train: pd.DataFrame,
    val: pd.DataFrame,
    config: Mapping[str, Any],
    out_dir: Path,
    nproc: int,
    threads: int = 1,
    log_file: Path | None = None,
) -> Path:
    """Train one fold with ``nproc`` DDP processes; returns ``out_dir/model.pt``.

    Writes the slide tables and the (validated) config to ``out_dir/ddp/`` and runs
    :func:`torchrun_command`; `gigamil train` joins the process group itself (gloo on CPU, nccl
    on GPU). The child's output goes to ``log_file`` (appended) when given.
    """
    if nproc < 2:
        raise ValueError("train_fold_torchrun needs nproc >= 2; call train_fold for one process")
    if "WORLD_SIZE" in os.environ:
        raise RuntimeError("already inside a torchrun process group")
    workdir = Path(out_dir) / "ddp"
    workdir.mkdir(parents=True, exist_ok=True)
    train.to_csv(workdir / "train.csv", index=False)
    val.to_csv(workdir / "val.csv", index=False)
    (workdir / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
    cmd = torchrun_command(workdir, Path(out_dir), nproc, threads)
    log.info("DDP on %d processes: %s", nproc, " ".join(cmd))
    if log_file is None:
        subprocess.run(cmd, check=True)
    else:
        with open(log_file, "a") as fh:
            subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
    return Path(out_dir) / "model.pt"
