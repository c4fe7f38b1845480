"""Watching a training run: the check that its weights are still finite numbers after every
epoch (:func:`check_finite_weights`, also used by :mod:`gigamil.train.predict` to explain NaN
predictions) and the TensorBoard writer of ``training.tensorboard`` (:data:`TB_SCALARS`), with
the start-of-run warning that folds trained already get no events (:func:`tensorboard_warning`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gigamil.errors import ConfigError, GigamilError

TB_SCALARS = ("train_loss", "val_loss", "val_auc", "val_balanced_accuracy", "lr", "seconds")


def non_finite_weights(model: torch.nn.Module) -> str:
    """The first three floating-point tensors of ``model``'s state dict that hold NaN or inf,
    as ``"a, b, c, ..."`` ("" when every weight is a finite number)."""
    bad = [
        n for n, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()
    ]
    return ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")


def check_finite_weights(
    model: torch.nn.Module,
    epoch: int,
    train_loss: float,
    when: str | None = None,
    lr_key: str = "training.lr",
) -> None:
    """Stop a training whose weights became NaN or inf (it diverged): every later epoch and the
    fold's predictions would be NaN. With ``amp: fp16`` the gradient scaler skips such steps, so
    this only fires when the optimizer itself wrote non-finite weights. ``when``: the part of
    the training named (default ``epoch {epoch}``; EM: ``the E-step of round 2``), ``lr_key``
    the setting of its learning rate.

    Raises:
        GigamilError: naming the epoch, the training loss and the first parameters affected.
    """
    bad = non_finite_weights(model)
    if bad:
        raise GigamilError(
            f"training diverged in {when or f'epoch {epoch}'} (training loss {train_loss:.4g}): "
            f"the weights hold NaN or inf ({bad}); lower {lr_key} (or check the patches), "
            "delete the fold's last.pt and rerun"
        )


def add_scalars(tb: Any, row: dict[str, Any], step: int, extra: tuple[str, ...] = ()) -> None:
    """Write ``row``'s :data:`TB_SCALARS` (and the keys ``extra``) to the TensorBoard writer
    ``tb`` at ``step`` (an epoch, or an EM round), then flush."""
    for key in (*TB_SCALARS, *extra):
        tb.add_scalar(key, row[key], step)
    tb.flush()


def tensorboard_writer(log_dir: Path, first_epoch: int) -> Any:
    """A TensorBoard ``SummaryWriter`` for ``log_dir``; events of epochs >= ``first_epoch`` left
    by an earlier run are purged (a killed run's, also one killed before its first ``last.pt``,
    or those of a training started again from epoch 1), so no epoch is drawn twice."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            "training.tensorboard: true needs the tensorboard package "
            "(pip install 'gigamil[tensorboard]' or pip install tensorboard)"
        ) from exc
    return SummaryWriter(str(log_dir), purge_step=first_epoch)


@contextlib.contextmanager
def tensorboard_events(log_dir: Path, first_epoch: int, enabled: bool) -> Iterator[Any]:
    """The :func:`tensorboard_writer` of a training loop (None when not ``enabled``: no
    ``training.tensorboard``, or not the main process), closed when the loop ends or fails."""
    tb = tensorboard_writer(log_dir, first_epoch) if enabled else None
    try:
        yield tb
    finally:
        if tb is not None:
            tb.close()


def tensorboard_package_warning() -> str | None:
    """The start-of-run warning for ``training.tensorboard: true`` when this environment cannot
    import the tensorboard package: every train_fold job run in it stops at its first epoch
    (:func:`tensorboard_writer`), after the masks and patch stores are made. A warning, not an
    error: under ``--sdm conda`` the jobs run in an environment of their own."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - the job's import
    except ImportError:
        return (
            "training.tensorboard: true, but the tensorboard package is not installed here: "
            "train_fold jobs that run in this environment will fail at their first epoch "
            "(after the tissue masks and patch stores are made); pip install "
            "'gigamil[tensorboard]' (under --sdm conda add tensorboard to envs/gigamil.yaml), "
            "or set tensorboard: false"
        )
    return None


def tensorboard_warning(model_dirs: list[str | Path]) -> str | None:
    """The start-of-run warning for ``training.tensorboard: true`` when folds in ``model_dirs``
    (``results/models/{experiment}/fold{k}``) hold a model.pt but no ``tensorboard/`` (nor, with
    replicates, ``replicate{r}/tensorboard/``): the setting is not one of the training's params
    (it changes no model), so switching it on retrains nothing and those folds get no events;
    None when every trained fold has them."""

    def has_events(d: Path) -> bool:  # with replicates: fold{k}/replicate{r}/tensorboard
        return any(p.is_dir() for p in (*d.glob("tensorboard"), *d.glob("replicate*/tensorboard")))

    dirs = [Path(d) for d in model_dirs]
    without = [d.name for d in dirs if (d / "model.pt").is_file() and not has_events(d)]
    if not without:
        return None
    return (
        f"training.tensorboard: true, but {', '.join(without)} trained without it and are not "
        "retrained for it (it changes no model): only folds trained from now on get TensorBoard "
        "events; delete a fold's directory under results/models/ to retrain it with them"
    )


def non_finite_message(
    model_path: Path, model: torch.nn.Module, row: object, n: int, prob: np.ndarray
) -> str:
    """Why a bag of ``n`` instances (``row``: slide_id, store) got NaN or inf probabilities
    ``prob`` or attention from ``model``: its weights (named) or, if they are finite, the slide's
    patches or features (``predict_slides``)."""
    bad = non_finite_weights(model)
    if bad:
        return (
            f"{model_path}: the model's weights hold NaN or inf ({bad}), so its predictions are "
            "not numbers; delete it and rerun to train the fold again"
        )
    return (
        f"slide {row.slide_id}: the model {model_path} gives probabilities "  # type: ignore[attr-defined]
        f"{np.array2string(prob, precision=3)} or attention that are not finite numbers for its "
        f"{n} instances in {row.store}; the store holds values the model cannot handle "  # type: ignore[attr-defined]
        "(e.g. NaN or inf features): delete the store and rerun to extract it again"
    )
