"""Benchmark of the accumulating trainer (run by hand: `python benchmarks/trainer.py`).

For bags of N ∈ {1k, 8k, 16k, 32k} 32-px patches and the small CNN, one training step per bag
(forward + backward, no optimizer step) with four methods:

- ``naive``: the whole bag in one graph (memory grows with N);
- ``original``: the scheme of the first ABMIL gradient-accumulation code, written from its
  description: no-grad pass, one head forward/backward, then for every chunk a full attention
  forward/backward on [the chunk's features with grad ; all other features as constants],
  selected with an N × N boolean mask (head cost N²/k, an N × N mask in memory);
- ``gigamil``: ``MILModel.forward_train`` (GradCache, RNG replay, BN handling);
- ``bare``: a bare GradCache loop (no RNG bookkeeping), the lower bound for gigamil's overhead.

Every (method, N) runs in its own subprocess (peak RSS = ru_maxrss of that process); methods are
interleaved within each repeat and the median seconds per bag is reported. "extra" memory is the
peak RSS minus the bag's own pixels (N × 32 × 32 × 3 bytes, held in memory as uint8).
Writes benchmarks/results/trainer.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("naive", "original", "gigamil", "bare")
PX = 32


def build(seed: int = 0):  # noqa: ANN201
    import torch
    from torch import nn

    from gigamil import MILModel
    from gigamil.nn.augment import PatchPreprocess
    from gigamil.nn.encoders import build_encoder
    from gigamil.nn.losses import BagLoss
    from gigamil.nn.pooling import AttentionHead

    torch.manual_seed(seed)
    enc, dim = build_encoder("smallcnn", None, PX, "frozen")
    model = MILModel(nn.Sequential(PatchPreprocess(), enc), AttentionHead(dim, 2, att_dim=64),
                     BagLoss("ce"))
    return model.train()


def step_naive(model, bag, label, k):  # noqa: ANN001, ANN201
    return model.forward_train(bag, label, max_instances_per_forward_pass=None)


def step_gigamil(model, bag, label, k):  # noqa: ANN001, ANN201
    return model.forward_train(bag, label, max_instances_per_forward_pass=k)


def step_bare(model, bag, label, k):  # noqa: ANN001, ANN201
    import torch

    enc, head, loss_fn = model.feature_encoder, model.attention_model, model.loss_fn
    with torch.no_grad():
        h = torch.cat([enc(bag[s:s + k]) for s in range(0, len(bag), k)])
    h.requires_grad_(True)
    logits, _ = head(h)
    loss_fn(logits, label).backward()
    g = h.grad
    for s in range(0, len(bag), k):
        enc(bag[s:s + k]).backward(g[s:s + k])


def step_original(model, bag, label, k):  # noqa: ANN001, ANN201
    """Written from the description in issue 4 (not from the original code)."""
    import torch

    enc, head, loss_fn = model.feature_encoder, model.attention_model, model.loss_fn
    n = len(bag)
    with torch.no_grad():
        h_const = torch.cat([enc(bag[s:s + k]) for s in range(0, n, k)])  # (N, D)
    h0 = h_const.clone().requires_grad_(False)
    logits, _ = head(h0)
    loss_fn(logits, label).backward()  # head gradients, once
    mask = torch.eye(n, dtype=torch.bool)  # (N, N): row i selects instance i
    enc_params = [p for p in enc.parameters() if p.requires_grad]
    for s in range(0, n, k):
        h_chunk = enc(bag[s:s + k])  # (k, D) with grad
        in_chunk = mask[s:s + k].any(dim=0)  # (N,) instances of this chunk
        feats = h_const.masked_scatter(in_chunk[:, None].expand_as(h_const), h_chunk)
        logits, _ = head(feats)  # full attention forward over all N ...
        loss_fn(logits, label).backward(inputs=enc_params)  # ... and backward, per chunk


def peak_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) * (1 if sys.platform == "darwin" else 1024)


def worker(method: str, n: int, k: int) -> dict:
    import torch

    torch.set_num_threads(1)
    model = build()
    step = {"naive": step_naive, "original": step_original, "gigamil": step_gigamil,
            "bare": step_bare}[method]
    g = torch.Generator().manual_seed(n)
    bag = torch.randint(0, 256, (n, PX, PX, 3), dtype=torch.uint8, generator=g)
    warm = bag[: min(n, 2 * k)]
    step(model, warm, 1, k)  # warm-up (lazy initialisation), small
    model.zero_grad(set_to_none=True)
    rss_before = peak_rss_bytes()
    t0 = time.perf_counter()
    step(model, bag, 1, k)
    seconds = time.perf_counter() - t0
    return {"method": method, "n": n, "k": k, "seconds": seconds, "peak_rss": peak_rss_bytes(),
            "peak_rss_before_step": rss_before, "bag_bytes": int(bag.numel())}


def run_one(method: str, n: int, k: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, str(n), str(k)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000, 16000, 32000])
    ap.add_argument("--k", type=int, default=128, help="instances per forward pass")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-largest", type=int, default=1,
                    help="repeats at the largest N (keeps the run affordable)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "trainer.json"))
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "N", "K"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        method, n, k = args.worker
        print(json.dumps(worker(method, int(n), int(k))))
        return

    results: dict[str, dict[str, dict]] = {}
    for n in args.sizes:
        reps = args.repeats_largest if n == max(args.sizes) else args.repeats
        runs: dict[str, list[dict]] = {m: [] for m in args.methods}
        for r in range(reps):
            order = args.methods if r % 2 == 0 else list(reversed(args.methods))
            for m in order:  # interleaved
                res = run_one(m, n, args.k)
                runs[m].append(res)
                print(f"N={n:6d} {m:9s} rep {r}: {res['seconds']:.2f} s, "
                      f"peak RSS {res['peak_rss'] / 2**20:.0f} MiB", flush=True)
        results[str(n)] = {
            m: {"seconds_median": statistics.median(x["seconds"] for x in v),
                "seconds": [x["seconds"] for x in v],
                "peak_rss_mib": max(x["peak_rss"] for x in v) / 2**20,
                "extra_mib": max(x["peak_rss"] - x["bag_bytes"] for x in v) / 2**20,
                "bag_mib": v[0]["bag_bytes"] / 2**20, "repeats": len(v)}
            for m, v in runs.items()}

    summary = {}
    for n, res in results.items():
        row = {}
        if "original" in res and "gigamil" in res:
            row["original_over_gigamil"] = (res["original"]["seconds_median"]
                                            / res["gigamil"]["seconds_median"])
        if "bare" in res and "gigamil" in res:
            row["gigamil_over_bare"] = (res["gigamil"]["seconds_median"]
                                        / res["bare"]["seconds_median"])
        if "naive" in res and "gigamil" in res:
            row["gigamil_over_naive"] = (res["gigamil"]["seconds_median"]
                                         / res["naive"]["seconds_median"])
        summary[n] = row
    sizes = [str(s) for s in args.sizes]
    growth = {}
    for m in args.methods:
        lo, hi = results[sizes[0]][m]["extra_mib"], results[sizes[-1]][m]["extra_mib"]
        growth[m] = hi / lo - 1
    report = {"benchmark": "trainer", "k": args.k, "patch_px": PX, "encoder": "smallcnn",
              "threads": 1, "machine": platform.platform(), "python": platform.python_version(),
              "results": results, "ratios": summary,
              f"extra_memory_growth_{sizes[0]}_to_{sizes[-1]}": growth}
    print("\nN       " + "".join(f"{m:>20s}" for m in args.methods))
    for n in sizes:
        print(f"{n:7s} " + "".join(
            f"{results[n][m]['seconds_median']:9.2f} s {results[n][m]['extra_mib']:6.0f} MiB"
            for m in args.methods))
    for n, row in summary.items():
        print(n, {k: round(v, 3) for k, v in row.items()})
    print("extra memory growth", {k: round(v, 3) for k, v in growth.items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
