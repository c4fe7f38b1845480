"""Benchmark: the small CNN in channels-last against the default (NCHW) memory format, on the CPU
(run by hand: ``python benchmarks/memory_format.py [--rounds 12] [--patches 24]``).

The demo's training step as the trainer runs it: ``config.yaml``'s model (small CNN, SmABMIL) and
augmentation built by :func:`gigamil.models.factory.build_mil_model`, one bag of ``--patches``
uint8 patches of ``patch_px`` (the demo's 24 patches of 96 px: a slide of the demo has 20-28) on a
4-row grid, ``MILModel.forward_train`` plus an AdamW step; and the eval-mode forward that
prediction runs. Both formats are measured in one process, one thread, interleaved (which goes
first alternates every round), so a VM that is slower this minute slows both; the figure is the
median over rounds of the per-round ratio of their process CPU times, with the medians themselves.
Also checks that the two formats compute the same thing: the maximum relative difference of the
first step's loss and encoder gradients (float rounding only). Writes
``benchmarks/results/memory_format.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.models.factory import build_mil_model  # noqa: E402
from gigamil.nn.losses import BagLoss  # noqa: E402
from gigamil.nn.pooling import grid_adjacency  # noqa: E402
from gigamil.train.accel import prepare_model  # noqa: E402

FORMATS = ("contiguous", "channels_last")


def build(fmt: str, cfg: dict, patch_px: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_mil_model(cfg["model"], 2, patch_px, cfg["training"]["augment"], BagLoss("ce"))
    if fmt == "channels_last":
        prepare_model(model, torch.device("cpu"))
    else:
        model.feature_encoder.to(memory_format=torch.contiguous_format)
    return model


def train_steps(model, opt, bag, adj, n: int) -> float:
    start = time.process_time()
    for i in range(n):
        torch.manual_seed(i)
        model.forward_train(bag, i % 2, 128, adj=adj)
        opt.step()
        opt.zero_grad()
    return (time.process_time() - start) / n


def eval_forward(model, bag, adj, n: int) -> float:
    model.eval()
    start = time.process_time()
    with torch.no_grad():
        for _ in range(n):
            model(bag, adj)
    model.train()
    return (time.process_time() - start) / n


def agreement(cfg: dict, patch_px: int, bag, adj) -> dict[str, float]:
    """Max relative difference of the first step's loss and encoder gradients."""
    grads, losses = {}, {}
    for fmt in FORMATS:
        model = build(fmt, cfg, patch_px)
        torch.manual_seed(123)
        losses[fmt] = model.forward_train(bag, 1, 128, adj=adj).loss
        grads[fmt] = [p.grad.clone() for p in model.feature_encoder.parameters()]
    rel = max(
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        for a, b in zip(grads[FORMATS[1]], grads[FORMATS[0]], strict=True)
    )
    return {
        "loss_abs_diff": abs(losses[FORMATS[1]] - losses[FORMATS[0]]),
        "encoder_grad_max_rel_diff": rel,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=10, help="training steps per round and format")
    ap.add_argument("--patches", type=int, default=24)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory_format.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    patch_px = int(cfg["preprocessing"]["patches"]["patch_px"])
    g = torch.Generator().manual_seed(1)
    bag = torch.randint(
        0, 256, (args.patches, patch_px, patch_px, 3), dtype=torch.uint8, generator=g
    )
    rows = torch.arange(args.patches) // 4
    adj = grid_adjacency(torch.stack([rows, torch.arange(args.patches) % 4], 1))
    models = {fmt: build(fmt, cfg, patch_px) for fmt in FORMATS}
    opts = {f: torch.optim.AdamW(m.parameters(), 3e-4) for f, m in models.items()}
    load_start = os.getloadavg()
    for fmt in FORMATS:  # warm-up: oneDNN primitive caches, allocator
        train_steps(models[fmt], opts[fmt], bag, adj, 3)
    train = {f: [] for f in FORMATS}
    infer = {f: [] for f in FORMATS}
    for r in range(args.rounds):
        order = FORMATS if r % 2 == 0 else FORMATS[::-1]
        for fmt in order:
            train[fmt].append(train_steps(models[fmt], opts[fmt], bag, adj, args.steps))
            infer[fmt].append(eval_forward(models[fmt], bag, adj, args.steps))
        print(
            f"round {r + 1}/{args.rounds}: train step "
            + ", ".join(f"{f} {1000 * train[f][-1]:.1f} ms" for f in FORMATS),
            flush=True,
        )

    def summary(times: dict[str, list[float]]) -> dict:
        ratios = [a / b for a, b in zip(times["channels_last"], times["contiguous"], strict=True)]
        return {
            "cpu_ms_median": {f: round(1000 * statistics.median(v), 2) for f, v in times.items()},
            "channels_last_over_contiguous_median": round(statistics.median(ratios), 3),
            "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        }

    result = {
        "benchmark": "memory_format",
        "what": "config.yaml's model and augmentation; one bag; CPU, 1 thread",
        "patches": args.patches,
        "patch_px": patch_px,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "training_step": summary(train),
        "eval_forward": summary(infer),
        "agreement_first_step": agreement(cfg, patch_px, bag, adj),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("training_step", "eval_forward")}, indent=1))
    print(json.dumps(result["agreement_first_step"]))


if __name__ == "__main__":
    main()
