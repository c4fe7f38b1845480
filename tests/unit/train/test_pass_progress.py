"""Progress lines on a fold's passes over all its slides outside the epochs: EM's encoding of
every training and validation slide each round, and the logit calibration's scoring of them
after training. Each is a forward pass over every patch of the fold (minutes to hours on real
slides); with ``log_every_s=0`` every loop of the training logs after each step, so a pass that
logs nothing is silent however long it runs."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from gigamil.train.run import train_fold


def _messages(caplog: pytest.LogCaptureFixture, pattern: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if re.match(pattern, r.getMessage())]


def _train_logged(mil_bags, tmp_path: Path, caplog, training: dict) -> None:
    """One fold of 4 training and 2 validation slides, logging after every step."""
    torch.set_num_threads(1)
    train = mil_bags.cohort(tmp_path / "s", 4, 0, "t")
    val = mil_bags.cohort(tmp_path / "s", 2, 1, "v")
    cfg = {"device": "cpu", "max_instances_per_forward_pass": 8, **training}
    with caplog.at_level(logging.INFO):
        train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, tmp_path / "f", log_every_s=0)


def test_em_encoding_pass_counts_the_patches_of_all_its_slides(
    mil_bags, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    em = {"rounds": 1, "head_epochs": 1, "encoder_steps": 1, "instance_batch": 8}
    training = {"strategy": "em", "logit_calibration": "none", "em": em}
    _train_logged(mil_bags, tmp_path, caplog, training)
    (encoded,) = _messages(caplog, "encoded ")
    n = int(re.match(r"encoded (\d+) patches of 6 slides", encoded).group(1))
    lines = _messages(caplog, r"encoding: \d+/")
    assert lines, "the encoding pass logged no progress"
    assert lines[-1].startswith(f"encoding: {n}/{n} patches")


def test_logit_calibration_logs_progress_over_the_fold_slides(
    mil_bags, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _train_logged(mil_bags, tmp_path, caplog, {"epochs": 1})
    lines = _messages(caplog, r"logit calibration: \d+/")
    assert [line.split(",")[0] for line in lines] == [
        f"logit calibration: {k}/6 slides" for k in range(1, 7)
    ]
