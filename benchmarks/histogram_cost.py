"""Benchmark: what the colour-histogram branch (``model.colour_histogram``) costs a training step.

Run by hand (not a test):

    python benchmarks/histogram_cost.py [--patches 24] [--patch-px 96] [--repeats 15]

Times ``MILModel.forward_train`` (forward, loss and backward, GradCache chunk 256: one chunk) of
the small CNN on one bag of random uint8 patches, side by side in one process and interleaved,
for three encoders: the small CNN alone, with the 16-bin histogram over the pixel grid gigamil
uses (at most ``gigamil.nn.histogram.MAX_PIXELS`` pixels per patch), and with the histogram over
every pixel (``ColourHistogram.max_pixels`` = H W: the layer before the grid). One CPU thread. Prints the median seconds per step and
the ratios to the small CNN alone, and writes ``benchmarks/results/histogram_cost.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.models.factory import build_mil_model  # noqa: E402
from gigamil.nn.histogram import MAX_PIXELS  # noqa: E402
from gigamil.nn.losses import BagLoss  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patches", type=int, default=24, help="patches in the bag (default 24)")
    p.add_argument("--patch-px", type=int, default=96, help="patch side in px (default 96)")
    p.add_argument("--repeats", type=int, default=15, help="timed steps per variant")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/histogram_cost.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    px = args.patch_px
    bag = torch.randint(0, 256, (args.patches, px, px, 3), dtype=torch.uint8)
    variants = {  # name: (colour_histogram bins, pixels the histogram samples per patch)
        "smallcnn": (0, None),
        "smallcnn+histogram16_grid": (16, MAX_PIXELS),
        "smallcnn+histogram16_every_pixel": (16, px * px),
    }
    models = {}
    for name, (bins, max_pixels) in variants.items():
        model = build_mil_model(
            {"encoder": "smallcnn", "colour_histogram": bins}, 2, px, loss_fn=BagLoss()
        )
        if max_pixels is not None:  # feature_encoder: (PatchPreprocess, WithColourHistogram)
            model.feature_encoder[1].histogram.max_pixels = max_pixels
        models[name] = model
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats + 2):  # the first two rounds warm up
        for name, model in models.items():
            model.zero_grad()
            start = time.perf_counter()
            model.forward_train(bag, 1, max_instances_per_forward_pass=256)
            if r >= 2:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = {name: median[name] / median["smallcnn"] for name in variants}
    for name in variants:
        print(f"{name:34s} {median[name] * 1000:7.1f} ms per step  x{ratio[name]:.2f}")
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/histogram_cost.py", *(argv or sys.argv[1:])]),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": 1,
        "bag": {"patches": args.patches, "patch_px": px},
        "max_pixels_grid": MAX_PIXELS,
        "median_seconds_per_step": median,
        "ratio_to_smallcnn": ratio,
        "repeats": args.repeats,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
