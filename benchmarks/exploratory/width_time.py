"""CPU time of one demo training step for wider small CNNs (needs width_and_stain_transfer.patch).

Run by hand after ``git apply benchmarks/exploratory/width_and_stain_transfer.patch``:

    OMP_NUM_THREADS=1 python benchmarks/exploratory/width_time.py

Builds the shipped model (config.yaml) with ``SmallCNN(width, out_dim)`` set through the patch's
``EXP_WIDTH`` / ``EXP_OUT`` environment variables, and times ``MILModel.forward_train`` plus an
AdamW step on one random bag of 24 patches of 96 px on a 4-column grid, one thread, 15 steps
after 3 warm-up steps, in three interleaved rounds; prints the encoder's parameter count and the
fastest round's milliseconds per step for each (width, out_dim).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.models.factory import build_mil_model  # noqa: E402
from gigamil.nn.losses import BagLoss  # noqa: E402
from gigamil.nn.pooling import grid_adjacency  # noqa: E402
from gigamil.train.accel import prepare_model  # noqa: E402

SHAPES = [(16, 64), (24, 64), (32, 64), (16, 128), (24, 96)]


def step_ms(cfg: dict, bag: torch.Tensor, adj: torch.Tensor) -> tuple[int, float]:
    torch.manual_seed(0)
    model = build_mil_model(cfg["model"], 2, 96, cfg["training"]["augment"], BagLoss("ce"))
    prepare_model(model, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), 3e-4)
    n_par = sum(p.numel() for p in model.feature_encoder.parameters())
    for i in range(18):
        if i == 3:
            start = time.process_time()
        model.forward_train(bag, i % 2, 128, adj=adj)
        opt.step()
        opt.zero_grad()
    return n_par, (time.process_time() - start) / 15 * 1000


def main() -> None:
    torch.set_num_threads(1)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    g = torch.Generator().manual_seed(1)
    bag = torch.randint(0, 256, (24, 96, 96, 3), dtype=torch.uint8, generator=g)
    adj = grid_adjacency(torch.stack([torch.arange(24) // 4, torch.arange(24) % 4], 1))
    best: dict[tuple[int, int], float] = {}
    for _ in range(3):
        for width, out in SHAPES:
            os.environ["EXP_WIDTH"], os.environ["EXP_OUT"] = str(width), str(out)
            n_par, ms = step_ms(cfg, bag, adj)
            best[width, out] = min(ms, best.get((width, out), ms))
            print(f"width {width} out_dim {out}: {n_par} parameters, {ms:.1f} ms", flush=True)
    for (width, out), ms in best.items():
        print(f"width {width} out_dim {out}: fastest {ms:.1f} ms per step")


if __name__ == "__main__":
    main()
