"""Data-parallel training over bags with torch.distributed (launched by torchrun).

Each rank encodes its own bags with the accumulating trainer; gradients are summed across ranks
before every optimizer step (every rank scales its bags' losses by 1/bags in the global step, so
the sum is the mean over all bags of the step, exactly as one process on the same bags).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# how long a rank waits in a collective for the others: the main rank alone calibrates a fold
# model on all its training slides (training.logit_calibration) while the others wait at a
# barrier; NCCL's default of 10 minutes can be shorter than that on whole-slide folds
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass
class DistInfo:
    """Rank, world size and whether this module started the process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when torchrun set WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device_type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT
        )
        owns = True
    return DistInfo(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), owns
    )


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum ``.grad`` over ranks (missing grads count as zero), in one flat buffer."""
    if not info.enabled or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_reduce_sum(
    values: list[float], info: DistInfo, device: torch.device | str = "cpu"
) -> list[float]:
    """Sum a few floats over ranks (float64; ``device`` must be CUDA with nccl)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, as DDP's
    ``broadcast_buffers`` does: under ``model.batchnorm: train`` each rank updates them on its
    own bags, and ranks validating with different statistics disagreed on early stopping (one
    stopped while the others waited for it)."""
    if not info.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def broadcast_metrics(
    metrics: dict[str, float], info: DistInfo, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Rank 0's numeric ``metrics`` on every rank (float64; ``device`` CUDA with nccl), so that
    early stopping decides alike on every rank: validation on GPUs is not bitwise equal across
    ranks, and a rank that stopped while the others went on left them waiting."""
    if not info.enabled:
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    got = dict(zip(keys, t.cpu().tolist(), strict=True))
    return {**metrics, **{k: type(metrics[k])(v) for k, v in got.items()}}  # ints stay ints


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
