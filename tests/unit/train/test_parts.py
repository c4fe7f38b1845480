"""The stateful parts of the trainer: EarlyStopping, CheckpointSaver, AmpScaler, the RNG helper."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from gigamil.errors import GigamilError
from gigamil.models.factory import build_mil_model
from gigamil.nn.rng import get_rng_state, set_rng_state
from gigamil.settings import EarlyStoppingConfig, ModelConfig
from gigamil.train.amp import AmpScaler, Optimization
from gigamil.train.checkpoint import (
    CheckpointSaver,
    atomic_save,
    load_checkpoint,
    load_model,
)
from gigamil.train.early_stopping import EarlyStopping, scalar_metric
from gigamil.train.loop import make_scheduler
from gigamil.train.model_file import model_checkpoint, model_header


def auc(value: float, loss: float = 0.5) -> dict[str, float]:
    return {"auc": value, "loss": loss, "balanced_accuracy": 0.5}


def run(es: EarlyStopping, aucs: list[float]) -> list[int]:
    """Feed one AUC per epoch until it stops; returns the epochs that improved."""
    best = []
    for epoch, value in enumerate(aucs, start=1):
        if es.update(epoch, auc(value), train_loss=1.0):
            best.append(epoch)
        if es.should_stop:
            break
    return best


def test_early_stopping_patience_and_best_epoch() -> None:
    es = EarlyStopping(metric="auc", patience=2, max_epochs=10)
    assert run(es, [0.6, 0.7, 0.65, 0.7, 0.9]) == [1, 2]
    assert es.should_stop and es.finished
    assert (es.epoch, es.best_epoch, es.bad_epochs, es.best_score) == (4, 2, 2, 0.7)


def test_early_stopping_ties_go_to_the_lower_loss_and_undefined_metrics_fall_back() -> None:
    es = EarlyStopping(metric="auc", patience=3)
    assert es.update(1, auc(0.8, loss=0.6), 1.0)
    assert es.update(2, auc(0.8, loss=0.5), 1.0)  # same AUC, lower loss
    assert not es.update(3, auc(0.8, loss=0.55), 1.0)
    assert es.best_epoch == 2
    nan = float("nan")
    assert scalar_metric(auc(nan, loss=0.3), "auc", 2.0) == -0.3  # one-class validation set
    assert scalar_metric({"auc": nan, "loss": nan}, "auc", 2.0) == -2.0  # no validation
    assert scalar_metric(auc(0.9, loss=0.3), "loss", 2.0) == -0.3


def test_early_stopping_min_epochs() -> None:
    es = EarlyStopping.from_config(EarlyStoppingConfig(patience=1, min_epochs=4), max_epochs=10)
    assert (es.patience, es.min_epochs, es.max_epochs) == (1, 4, 10)
    # epochs 1-3 are a warm-up: each is the best so far, epoch 1's lucky 0.9 is not kept
    assert run(es, [0.9, 0.5, 0.5, 0.5, 0.5, 0.5]) == [1, 2, 3]
    assert es.epoch == 4 and es.bad_epochs == 1 and es.should_stop and es.best_epoch == 3
    es = EarlyStopping(patience=1, min_epochs=3)
    run(es, [0.5, 0.6, 0.7, 0.6, 0.9])
    assert es.epoch == 4  # past min_epochs: stops at the first bad epoch
    # the last warm-up epoch (min_epochs - 1) sets the bar, as README says: its lucky 1.0 stays
    es = EarlyStopping(patience=2, min_epochs=3)
    assert run(es, [0.6, 1.0, 0.8, 0.9, 0.95]) == [1, 2]
    assert es.best_epoch == 2 and es.epoch == 4 and es.should_stop
    es = EarlyStopping(patience=5, max_epochs=3)
    run(es, [0.5, 0.6, 0.7])
    assert es.finished and not es.should_stop  # the last epoch finishes without early stopping


def test_a_nan_epoch_never_holds_the_best_epoch() -> None:
    """An epoch whose score is NaN (e.g. its fp16 steps all skipped, weights still finite)
    became model.pt's epoch and blocked every later one: NaN compares False with everything."""
    nan = float("nan")
    no_val = {"auc": nan, "loss": nan}  # cv.val_fraction 0: the score is -train_loss
    es = EarlyStopping(metric="auc", patience=2, max_epochs=10)
    assert es.update(1, no_val, nan)  # the first epoch is kept (model.pt must exist)
    assert es.update(2, no_val, 0.6)  # any finite score beats a NaN best
    assert es.update(3, no_val, 0.3)
    assert not es.update(4, no_val, nan)  # and a NaN one never beats a finite best
    assert es.best_epoch == 3 and es.best_score == -0.3 and es.bad_epochs == 1
    warm = EarlyStopping(metric="auc", patience=2, min_epochs=3, max_epochs=10)
    warm.update(1, no_val, 0.5)
    assert warm.update(2, no_val, nan)  # a NaN warm-up epoch is forced in (the last one) ...
    assert warm.update(3, no_val, 0.9)  # ... and replaced by the first finite epoch after it
    assert warm.best_epoch == 3


def test_early_stopping_state_dict_round_trip() -> None:
    es = EarlyStopping(patience=3, max_epochs=10)
    run(es, [0.6, 0.7, 0.65])
    state = es.state_dict()
    assert set(state) == {
        "best_score",
        "best_tiebreak",
        "best_epoch",
        "bad_epochs",
        "epoch",
        "finished",
    }
    again = EarlyStopping(patience=3, max_epochs=10)
    again.load_state_dict(state)
    assert again == es
    # both continue identically
    assert es.update(4, auc(0.66), 1.0) == again.update(4, auc(0.66), 1.0)
    assert es.state_dict() == again.state_dict()
    # a last.pt written before the tie-break existed has no best_tiebreak
    old = {k: v for k, v in state.items() if k != "best_tiebreak"}
    legacy = EarlyStopping(patience=3)
    legacy.load_state_dict(old)
    assert legacy.best_tiebreak is None and legacy.best_epoch == 2


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def row(epoch: int) -> dict[str, float]:
    return {k: float(epoch) for k in CheckpointSaver.LOG_COLUMNS}


def test_checkpoint_saver_restores_the_outputs_snakemake_deleted(tmp_path: Path) -> None:
    sig = {"training": {"epochs": 3}, "train": ["a", "b"]}
    saver = CheckpointSaver(tmp_path / "f", sig)
    saver.save_best({"epoch": 1, "state_dict": {"w": torch.ones(2)}})
    saver.log_epoch(row(1))
    saver.log_epoch(row(2))
    saver.save_last({"early_stopping": {"epoch": 2}})
    assert [r["epoch"] for r in read_rows(saver.log_path)] == ["1.0", "2.0"]
    last = load_checkpoint(saver.last_path)
    assert last["signature"] == sig and last["best"]["epoch"] == 1 and len(last["log_rows"]) == 2
    saver.model_path.unlink()  # a failed job: Snakemake deletes model.pt and train_log.csv
    saver.log_path.unlink()

    again = CheckpointSaver(tmp_path / "f", sig)
    ckpt = again.load_last()
    assert ckpt is not None and ckpt["early_stopping"] == {"epoch": 2}
    again.load_state_dict(ckpt)
    again.restore_outputs()
    assert load_checkpoint(again.model_path)["epoch"] == 1
    assert torch.equal(load_checkpoint(again.model_path)["state_dict"]["w"], torch.ones(2))
    assert [r["epoch"] for r in read_rows(again.log_path)] == ["1.0", "2.0"]
    # a model.pt that is not last.pt's best model (another run's in the same folder, or a newer
    # best epoch saved just before a kill) was marked finished as it was
    atomic_save({"epoch": 2, "state_dict": {"w": torch.zeros(2)}}, again.model_path)
    again.restore_outputs()
    assert torch.equal(load_checkpoint(again.model_path)["state_dict"]["w"], torch.ones(2))
    again.finish()  # finished and calibrated: the same model, left as it is
    marked = {**load_checkpoint(again.model_path), "logit_calibration": {"scale": 2.0}}
    atomic_save(marked, again.model_path)
    again.restore_outputs()
    assert load_checkpoint(again.model_path)["logit_calibration"] == {"scale": 2.0}
    # another configuration or other slides: last.pt is ignored
    other = CheckpointSaver(tmp_path / "f", {**sig, "train": ["a"]})
    assert other.load_last() is None
    assert CheckpointSaver(tmp_path / "empty", sig).load_last() is None


def test_model_pt_records_the_weights_sha256_and_old_files_still_load(tmp_path: Path) -> None:
    cfg = ModelConfig.from_dict({"encoder": "resnet18", "trainable_blocks": 1}).to_dict()
    model = build_mil_model(cfg, 2, 32)
    header = model_header(cfg, ["neg", "pos"], 32, 0.5, "ab" * 32)
    path = atomic_save(model_checkpoint(model, header, 1, {}), tmp_path / "model.pt")
    loaded, ckpt = load_model(path)
    assert ckpt["weights_sha256"] == "ab" * 32
    assert {k for k, p in loaded.named_parameters() if p.requires_grad} == {
        k for k, p in model.named_parameters() if p.requires_grad
    }
    # a model.pt written before trainable_blocks and weights_sha256 existed
    old_cfg = ModelConfig.from_dict({"encoder": "smallcnn", "freeze_encoder": True}).to_dict()
    del old_cfg["trainable_blocks"]
    old = build_mil_model(old_cfg, 2, 32)
    old_header = model_header(old_cfg, ["neg", "pos"], 32)
    del old_header["weights_sha256"]
    path = atomic_save(model_checkpoint(old, old_header, 1, {}), tmp_path / "old.pt")
    again, _ = load_model(path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.state_dict().values(), old.state_dict().values(), strict=True)
    )


def test_loading_last_pt_as_a_model_says_to_use_model_pt(tmp_path: Path) -> None:
    state = {"model": {}, "optimizer": {}, "early_stopping": {"epoch": 2}, "rng": {}}
    path = atomic_save(state, tmp_path / "last.pt")
    with pytest.raises(GigamilError, match=r"resumable state \(last.pt\), not a model: use the"):
        load_model(path)
    path = atomic_save({"epoch": 1}, tmp_path / "other.pt")
    with pytest.raises(GigamilError, match=r"other.pt: checkpoint lacks \['state_dict', .*\]$"):
        load_model(path)


def test_sm_alpha_reaches_the_head_and_older_smabmil_files_load_with_0_5(tmp_path: Path) -> None:
    cfg = ModelConfig.from_dict({"encoder": "smallcnn", "pool": "smabmil", "sm_alpha": 0.8})
    model = build_mil_model(cfg, 2, 32)
    assert model.attention_model.sm_alpha == 0.8
    path = atomic_save(
        model_checkpoint(model, model_header(cfg.to_dict(), ["neg", "pos"], 32), 1, {}),
        tmp_path / "model.pt",
    )
    assert load_model(path)[0].attention_model.sm_alpha == 0.8
    old_cfg = ModelConfig.from_dict({"encoder": "smallcnn", "pool": "smabmil"}).to_dict()
    del old_cfg["sm_alpha"]  # written before the key existed: trained with 0.5
    old = build_mil_model({**old_cfg, "sm_alpha": 0.5}, 2, 32)
    header = model_header(old_cfg, ["neg", "pos"], 32)
    path = atomic_save(model_checkpoint(old, header, 1, {}), tmp_path / "old.pt")
    assert load_model(path)[0].attention_model.sm_alpha == 0.5


def test_checkpoint_saver_disabled_writes_nothing(tmp_path: Path) -> None:
    saver = CheckpointSaver(tmp_path / "rank1", {}, enabled=False)
    saver.save_best({"epoch": 1})
    saver.log_epoch(row(1))
    saver.save_last({})
    saver.restore_outputs()
    assert not (tmp_path / "rank1").exists()
    assert saver.state_dict()["best"] == {"epoch": 1}


def test_amp_scaler_and_optimization_state_on_cpu() -> None:
    off, on = AmpScaler(False, torch.device("cpu")), AmpScaler(True, torch.device("cpu"))
    assert off.dtype is None and off.grad_scaler is None and off.state_dict() is None
    assert on.dtype == torch.bfloat16 and on.grad_scaler is None  # no loss scaling for bf16
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (t + 1))
    optim = Optimization(opt, sched, off)
    w.grad = torch.ones(2)
    optim.step()
    assert torch.allclose(w.detach(), torch.full((2,), 0.5)) and optim.lr == 0.25
    state = optim.state_dict()
    assert set(state) == {"optimizer", "scheduler"}  # "scaler" only with a gradient scaler
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.5)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda t: 1.0 / (t + 1))
    Optimization(opt2, sched2, off).load_state_dict(state)
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == 0.25


@pytest.mark.gpu
def test_amp_scaler_on_cuda_has_a_grad_scaler() -> None:
    amp = AmpScaler(True, torch.device("cuda"))
    assert amp.dtype == torch.float16 and amp.grad_scaler is not None
    assert "scale" in amp.state_dict()


def test_rng_helper_round_trip_and_checkpoint_format() -> None:
    dev = torch.device("cpu")
    state = get_rng_state(dev)
    assert set(state) == {"cpu"}  # last.pt's format: {"cpu": tensor[, "cuda": tensor]}
    a = torch.rand(3)
    set_rng_state(state, dev)
    assert torch.equal(torch.rand(3), a)
    set_rng_state({"cpu": state["cpu"], "cuda": torch.zeros(1)}, dev)  # a CUDA entry on CPU
    assert torch.equal(torch.rand(3), a)


def test_weight_average_is_the_exponential_moving_average_of_the_steps() -> None:
    from gigamil.train.loop import weight_average

    model = build_mil_model(ModelConfig.from_dict({"encoder": "smallcnn"}), 2, 32)
    assert weight_average(model, 0.0) is None
    ema = weight_average(model, 0.9)
    name, param = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
    expected = None
    for value in (1.0, 2.0, 4.0):
        with torch.no_grad():
            param.fill_(value)
        ema.update_parameters(model)
        expected = value if expected is None else 0.9 * expected + 0.1 * value
    averaged = dict(ema.module.named_parameters())[name]
    assert torch.allclose(averaged, torch.full_like(averaged, expected))  # 1.0 -> 1.1 -> 1.39
    assert not torch.allclose(averaged, param)


def _lr_factors(schedule: str, total: int, warmup: int = 0) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make_scheduler(opt, schedule, total, warmup_steps=warmup)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_rises_linearly_then_runs_the_schedule_over_the_remaining_steps() -> None:
    """training.warmup_epochs: lr (t + 1) / W for the first W steps, then the schedule as it
    would run over total - W steps (cosine from lr to ~0; constant at lr)."""
    warm = _lr_factors("cosine", 20, warmup=4)
    assert warm[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert warm[4:] == pytest.approx(_lr_factors("cosine", 16))
    assert warm[4] == pytest.approx(1.0) and warm[-1] < 0.02
    assert _lr_factors("constant", 6, warmup=3) == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])
    assert _lr_factors("cosine", 20) == _lr_factors("cosine", 20, warmup=0)
    with pytest.raises(ValueError, match="onecycle"):
        make_scheduler(
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), "onecycle", 9, 2
        )


def test_parameter_groups_put_the_encoder_at_encoder_lr() -> None:
    from gigamil.train.trainer import parameter_groups

    model = build_mil_model(ModelConfig(encoder="smallcnn"), 2, 32)
    (one,) = parameter_groups(model, 1e-3, None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert one["lr"] == 1e-3 and len(one["params"]) == len(trainable)
    head, encoder = parameter_groups(model, 1e-3, 1e-4)
    assert (head["lr"], encoder["lr"]) == (1e-3, 1e-4)
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.feature_encoder.parameters()}
    assert len(head["params"]) + len(encoder["params"]) == len(trainable)
    assert head["params"] and not {id(p) for p in head["params"]} & {
        id(p) for p in encoder["params"]
    }
    # a frozen encoder part (trainable_blocks) stays out of both groups
    partial = build_mil_model(ModelConfig(encoder="smallcnn", trainable_blocks=1), 2, 32)
    groups = parameter_groups(partial, 1e-3, 1e-4)
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert sum(len(g["params"]) for g in groups) < len(list(partial.parameters()))


def test_hold_steps_keep_a_group_at_zero_then_run_the_same_schedule() -> None:
    """training.head_first_epochs: the encoder's group at lr 0 for its first steps, then at the
    factor the other groups have at that step (warm-up included)."""
    head, encoder = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [head], "lr": 1.0}, {"params": [encoder], "lr": 0.1}])
    sched = make_scheduler(opt, "cosine", 10, warmup_steps=2, hold_steps=(0, 4))
    rates = []
    for _ in range(10):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    heads, encoders = zip(*rates, strict=True)
    assert heads == pytest.approx(_lr_factors("cosine", 10, warmup=2))
    assert encoders[:4] == (0.0, 0.0, 0.0, 0.0)
    assert encoders[4:] == pytest.approx([0.1 * h for h in heads[4:]])
    # no hold: one schedule for every group, as before the key existed
    plain = make_scheduler(opt, "cosine", 10, hold_steps=(0, 0))
    assert plain.lr_lambdas[0] is plain.lr_lambdas[1]


def test_a_probability_near_one_is_not_printed_as_one() -> None:
    """'%.3g' printed 0.99997 as '1' in predict's log line (read as certainty in a trial)."""
    from gigamil.train.predict import probability_text

    assert probability_text(0.99997) == "1 - 3.0e-05"
    assert probability_text(0.837) == "0.837" and probability_text(1.0) == "1"
    assert probability_text(3.2e-6) == "3.2e-06"
