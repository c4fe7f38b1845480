"""Benchmark of ``model.trainable_blocks`` (run by hand: `python benchmarks/partial_finetune.py`).

One training step (``MILModel.forward_train``, chunked GradCache, forward + backward, no optimizer
step) on a bag of ``--n`` 224-px patches with timm's ViT-S/16 (12 blocks, random init), for
``trainable_blocks`` ∈ {all, 4, 2, 0}, side by side in one process: the methods run interleaved
for ``--rounds`` rounds and the median process CPU time per step is reported (single thread).
Memory: the bytes autograd saves for backward during the re-encoding pass of one chunk (counted
with ``torch.autograd.graph.saved_tensors_hooks``: the activations the encoder keeps, which is
what ``trainable_blocks`` reduces; exact and free of allocator noise). Ratios are to ``all``.
Writes benchmarks/results/partial_finetune.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from gigamil.models.factory import build_mil_model  # noqa: E402
from gigamil.nn.losses import BagLoss  # noqa: E402

SETTINGS = ("all", 4, 2, 0)
ENCODER = "timm:vit_small_patch16_224"


def build(trainable: str | int):  # noqa: ANN201
    torch.manual_seed(0)
    cfg = {"encoder": ENCODER, "trainable_blocks": trainable}
    return build_mil_model(cfg, 2, 224, loss_fn=BagLoss("ce")).train()


def saved_bytes(model, chunk: torch.Tensor) -> int:  # noqa: ANN001
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.feature_encoder(chunk)
    if out.requires_grad:
        out.sum().backward()
    model.zero_grad(set_to_none=True)
    return total[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="patches per bag")
    ap.add_argument("--k", type=int, default=8, help="max_instances_per_forward_pass")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bag = torch.randint(0, 256, (args.n, 224, 224, 3), dtype=torch.uint8)
    models = {s: build(s) for s in SETTINGS}
    times: dict[str, list[float]] = {str(s): [] for s in SETTINGS}
    for _ in range(args.rounds):
        for s, model in models.items():
            t0 = time.process_time()
            model.forward_train(bag, 1, max_instances_per_forward_pass=args.k)
            times[str(s)].append(time.process_time() - t0)
            model.zero_grad(set_to_none=True)
    mem = {str(s): saved_bytes(m, bag[: args.k]) for s, m in models.items()}
    result = {
        "encoder": ENCODER,
        "n_patches": args.n,
        "k": args.k,
        "rounds": args.rounds,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "cpu_seconds_per_step": {s: statistics.median(v) for s, v in times.items()},
        "time_ratio_to_all": {
            s: statistics.median(v) / statistics.median(times["all"]) for s, v in times.items()
        },
        "saved_for_backward_mb_per_chunk": {s: b / 2**20 for s, b in mem.items()},
        "memory_ratio_to_all": {s: b / mem["all"] for s, b in mem.items()},
        "trainable_parameters_m": {
            str(s): sum(p.numel() for p in m.parameters() if p.requires_grad) / 1e6
            for s, m in models.items()
        },
    }
    out = Path(__file__).parent / "results" / "partial_finetune.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
