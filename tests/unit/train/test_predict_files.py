"""gigamil predict's files and the model.pt files it loads: attention files written whole,
model.pt files of older gigamil versions, weights that do not fit the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gigamil import fileutil
from gigamil.cli import main
from gigamil.errors import GigamilError
from gigamil.models.factory import build_mil_model
from gigamil.settings import ModelConfig
from gigamil.train.checkpoint import FINISHED, atomic_save, load_checkpoint, load_model
from gigamil.train.model_file import model_checkpoint, model_header
from gigamil.train.predict import predict_slides


def _model_pt(path: Path, px: int, drop: tuple[str, ...] = ()) -> Path:
    """A finished model.pt of a small CNN on ``px`` px patches, its state dict without the
    keys ending in ``drop``."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({"encoder": "smallcnn", "weights": None, "att_dim": 16})
    model = build_mil_model(cfg, 2, px)
    ckpt = model_checkpoint(model, model_header(cfg.to_dict(), ["normal", "lesion"], px), 1, {})
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.endswith(drop)}
    return atomic_save({**ckpt, FINISHED: True}, path)


def _half_then_fail(path: Path, data: bytes | memoryview) -> None:
    """A write killed midway: half the bytes on disk, then an error."""
    Path(path).write_bytes(bytes(data)[: len(data) // 2])
    raise OSError("killed")


def test_an_attention_file_is_never_left_cut_short(mil_bags, tmp_path: Path, monkeypatch):
    """predict wrote DIR/<slide_id>.npy in place: a job killed mid-write left a cut file that
    looked complete (the earlier one was gone). Now the earlier file stays, no temporary."""
    slides = mil_bags.cohort(tmp_path / "stores", 2, 0, "s")
    model = _model_pt(tmp_path / "fold0" / "model.pt", mil_bags.px)
    att = tmp_path / "att"
    predict_slides(model, slides, None, att)
    files = lambda: {p.relative_to(att).as_posix(): p.read_bytes() for p in att.rglob("*.*")}  # noqa: E731
    before = files()
    logits = ["patch_logits/s0.npy", "patch_logits/s1.npy"]
    assert sorted(before) == [*logits, "s0.npy", "s1.npy"]
    monkeypatch.setattr(fileutil, "_write_file", _half_then_fail)
    with pytest.raises(OSError, match="killed"):
        predict_slides(model, slides, None, att)
    assert files() == before


def test_a_model_pt_written_before_the_stain_matrices_loads_and_predicts_the_same(
    mil_bags, tmp_path: Path
) -> None:
    """model.pt files written before 2026-11-30 lack the encoder's constant H&E stain matrices
    (buffers rgb_from_hed, hed_from_rgb, added with training.augment.stain_jitter): loading one
    stopped with torch's RuntimeError traceback 'Missing key(s) in state_dict'."""
    slides = mil_bags.cohort(tmp_path / "stores", 2, 0, "s")
    new = _model_pt(tmp_path / "new" / "model.pt", mil_bags.px)
    old = _model_pt(tmp_path / "old" / "model.pt", mil_bags.px, (".rgb_from_hed", ".hed_from_rgb"))
    assert not any("hed" in k for k in load_checkpoint(old)["state_dict"])
    load_model(old)
    a = predict_slides(new, slides, None, tmp_path / "att_new")
    b = predict_slides(old, slides, None, tmp_path / "att_old")
    pd.testing.assert_frame_equal(a.drop(columns="model_sha256"), b.drop(columns="model_sha256"))
    for sid in slides.slide_id:
        np.testing.assert_array_equal(
            np.load(tmp_path / "att_new" / f"{sid}.npy"),
            np.load(tmp_path / "att_old" / f"{sid}.npy"),
        )


def test_weights_that_do_not_fit_the_model_are_a_one_line_error(
    mil_bags, tmp_path: Path, capsys
) -> None:
    """A model.pt whose state dict lacks a learned tensor, or holds one of another shape (a
    model.pt of another gigamil version, or edited), was a RuntimeError traceback of
    gigamil predict; now a message naming the file, the tensor and the version that wrote it."""
    slides = mil_bags.cohort(tmp_path / "stores", 1, 0, "s")
    slides.to_csv(tmp_path / "slides.csv", index=False)
    bad = _model_pt(tmp_path / "bad" / "model.pt", mil_bags.px, ("classifier.bias",))
    args = ["predict", "--slides", str(tmp_path / "slides.csv"), "--out", str(tmp_path / "p.csv")]
    assert main([*args, "--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("gigamil predict: error: ")
    assert f"{bad}: its weights do not fit the model its header describes (lacks " in err
    assert "classifier.bias" in err and "written by gigamil " in err
    ckpt = load_checkpoint(_model_pt(tmp_path / "ok" / "model.pt", mil_bags.px))
    ckpt["classes"] = ["a", "b", "c"]  # 3 outputs: a classifier of another shape
    other = atomic_save(ckpt, tmp_path / "other" / "model.pt")
    with pytest.raises(GigamilError, match="size mismatch for attention_model.classifier"):
        load_model(other)
    assert not (tmp_path / "p.csv").exists()


def test_an_out_folder_is_named_before_any_slide_is_predicted(
    mil_bags, tmp_path: Path, capsys
) -> None:
    """--out naming a folder failed after every slide was predicted, with 'Is a directory:
    <out>.tmp-<pid>' (the temporary's name, a file that does not exist)."""
    slides = mil_bags.cohort(tmp_path / "stores", 1, 0, "s")
    slides.to_csv(tmp_path / "slides.csv", index=False)
    model = _model_pt(tmp_path / "fold0" / "model.pt", mil_bags.px)
    (tmp_path / "out").mkdir()
    args = ["predict", "--model", str(model), "--slides", str(tmp_path / "slides.csv")]
    att = ["--attention-dir", str(tmp_path / "att")]
    assert main([*args, "--out", str(tmp_path / "out"), *att]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"gigamil predict: error: --out {tmp_path / 'out'}: is a folder; give the CSV file to write"
    )
    assert not (tmp_path / "att").exists()  # nothing predicted
