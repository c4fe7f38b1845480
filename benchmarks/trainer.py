"""Benchmark of the accumulating trainer (run by hand: `python benchmarks/trainer.py`).

For bags of N ∈ {1k, 8k, 16k, 32k} 32-px patches and the small CNN, one training step per bag
(forward + backward, no optimizer step) with four methods:

- ``naive``: the whole bag in one graph (memory grows with N);
- ``original``: the scheme of the first ABMIL gradient-accumulation code, written from its
  description: no-grad pass, one head forward/backward, then for every chunk a full attention
  forward/backward on [the chunk's features with grad ; all other features as constants]
  (concatenated; ABMIL does not depend on the order), the others selected with an N × N boolean
  mask (head cost N²/k, an N × N mask in memory);
- ``gigamil``: ``MILModel.forward_train`` (GradCache, RNG replay, BN handling);
- ``bare``: a bare GradCache loop (no RNG bookkeeping), the lower bound for gigamil's overhead.

Each chunked method runs for every k in ``--k`` (default 25, 64, 128 instances per forward pass;
25 is the value in the original code's own training script, 128 is config.yaml's): the original
scheme's extra head work is (N/k) full attention passes, so its cost relative to gigamil's two
encoder passes depends on k (the naive pass does not; it runs once per N). The head is ABMIL with
``--att-dim`` hidden units (default 128: the default of ``gigamil.models.ABMIL`` and of
``model.att_dim``); the original scheme's extra cost grows with it too.
Peak RSS: every (method, N, k) runs one step in its own subprocess (ru_maxrss of that process).
Time: per (N, k), one subprocess runs all methods interleaved for several rounds (gigamil and
bare swap places every round; the slow original scheme in fewer rounds); the median process CPU
time per bag is reported (single thread; CPU time is less disturbed than wall time on a shared
machine, wall time is recorded too). Ratios are medians over rounds of the ratio of two methods
that ran back to back. "extra" memory is the peak RSS minus the bag's own pixels
(N × 32 × 32 × 3 bytes, held in memory as uint8). Writes benchmarks/results/trainer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("naive", "original", "gigamil", "bare")
PX = 32


ATT_DIM = 128  # default ABMIL hidden size (--att-dim)


def build(att_dim: int, seed: int = 0):  # noqa: ANN201
    import torch
    from torch import nn

    from gigamil import MILModel
    from gigamil.nn.augment import PatchPreprocess
    from gigamil.nn.encoders import build_encoder
    from gigamil.nn.losses import BagLoss
    from gigamil.nn.pooling import AttentionHead

    torch.manual_seed(seed)
    enc, dim = build_encoder("smallcnn", None, PX, "frozen")
    model = MILModel(
        nn.Sequential(PatchPreprocess(), enc), AttentionHead(dim, 2, att_dim=att_dim), BagLoss("ce")
    )
    return model.train()


def step_naive(model, bag, label, k):  # noqa: ANN001, ANN201
    return model.forward_train(bag, label, max_instances_per_forward_pass=None)


def step_gigamil(model, bag, label, k):  # noqa: ANN001, ANN201
    return model.forward_train(bag, label, max_instances_per_forward_pass=k)


def step_bare(model, bag, label, k):  # noqa: ANN001, ANN201
    import torch

    enc, head, loss_fn = model.feature_encoder, model.attention_model, model.loss_fn
    with torch.no_grad():
        h = torch.cat([enc(bag[s : s + k]) for s in range(0, len(bag), k)])
    h.requires_grad_(True)
    logits, _ = head(h)
    loss_fn(logits, label).backward()
    g = h.grad
    for s in range(0, len(bag), k):
        enc(bag[s : s + k]).backward(g[s : s + k])


def step_original(model, bag, label, k):  # noqa: ANN001, ANN201
    """Written from the description in issue 4 (not from the original code): per chunk, the
    attention model runs on [the chunk's features with grad ; all other features as constants],
    the others picked out with rows of an N × N boolean identity matrix."""
    import torch

    enc, head, loss_fn = model.feature_encoder, model.attention_model, model.loss_fn
    n = len(bag)
    with torch.no_grad():
        h_const = torch.cat([enc(bag[s : s + k]) for s in range(0, n, k)])  # (N, D)
    logits, _ = head(h_const)
    loss_fn(logits, label).backward()  # head gradients, once
    eye = torch.eye(n, dtype=torch.bool)  # (N, N)
    enc_params = [p for p in enc.parameters() if p.requires_grad]
    for s in range(0, n, k):
        chunk = torch.arange(s, min(s + k, n))
        others = ~eye[chunk].any(dim=0)  # (N,) instances outside this chunk
        feats = torch.cat([enc(bag[s : s + k]), h_const[others]])  # (N, D): [chunk ; others]
        logits, _ = head(feats)  # full attention forward over all N ...
        loss_fn(logits, label).backward(inputs=enc_params)  # ... and backward, per chunk


def check_gradients(att_dim: int, n: int = 60, k: int = 16) -> dict[str, float]:
    """Max relative difference of every method's parameter gradients from the naive pass, on one
    float64 bag: the four methods compute the same thing, only at different costs."""
    import torch

    model = build(att_dim).double()
    bag = make_bag(n)
    grads = {}
    for m, step in STEPS.items():
        model.zero_grad(set_to_none=True)
        step(model, bag, 1, k)
        grads[m] = torch.cat([p.grad.flatten() for p in model.parameters()])
    ref = grads["naive"]
    return {m: float((g - ref).abs().max() / ref.abs().max()) for m, g in grads.items()}


def peak_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) * (1 if sys.platform == "darwin" else 1024)


STEPS = {"naive": step_naive, "original": step_original, "gigamil": step_gigamil, "bare": step_bare}


def make_bag(n: int):  # noqa: ANN201
    import torch

    g = torch.Generator().manual_seed(n)
    return torch.randint(0, 256, (n, PX, PX, 3), dtype=torch.uint8, generator=g)


def timed(step, model, bag, k: int) -> tuple[float, float]:  # noqa: ANN001
    model.zero_grad(set_to_none=True)
    w0, c0 = time.perf_counter(), time.process_time()
    step(model, bag, 1, k)
    return time.perf_counter() - w0, time.process_time() - c0


def memory_worker(method: str, n: int, k: int, att_dim: int) -> dict:
    """One step of one method in a fresh process: its peak RSS."""
    import torch

    torch.set_num_threads(1)
    model = build(att_dim)
    bag = make_bag(n)
    STEPS[method](model, bag[: min(n, 2 * k)], 1, k)  # warm-up (lazy initialisation), small
    rss_before = peak_rss_bytes()
    wall, cpu = timed(STEPS[method], model, bag, k)
    return {
        "method": method,
        "n": n,
        "k": k,
        "wall": wall,
        "cpu": cpu,
        "peak_rss": peak_rss_bytes(),
        "peak_rss_before_step": rss_before,
        "bag_bytes": int(bag.numel()),
    }


def timing_worker(
    methods: list[str], n: int, k: int, rounds: int, original_rounds: int, att_dim: int
) -> dict:
    """All methods interleaved in one process, ``rounds`` rounds; the (slow) original scheme
    only in the first ``original_rounds`` rounds."""
    import torch

    torch.set_num_threads(1)
    model = build(att_dim)
    bag = make_bag(n)
    for m in methods:
        STEPS[m](model, bag[: min(n, 2 * k)], 1, k)  # warm-up
    out: dict[str, dict[str, list[float]]] = {m: {"wall": [], "cpu": []} for m in methods}
    # crossover order: gigamil and bare swap places every round and both come right after the
    # memory-hungry methods in turn (those run last, so neither of the pair always follows them)
    pair = [m for m in ("gigamil", "bare") if m in methods]
    rest = [m for m in methods if m not in pair]
    for r in range(rounds):
        for m in (pair if r % 2 == 0 else pair[::-1]) + rest:
            if m == "original" and r >= original_rounds:
                continue
            wall, cpu = timed(STEPS[m], model, bag, k)
            out[m]["wall"].append(wall)
            out[m]["cpu"].append(cpu)
    return out


def run_worker(att_dim: int, *args: str) -> dict:
    cmd = [sys.executable, __file__, "--att-dim", str(att_dim), "--worker", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(tim: dict, mem: dict, rounds: int) -> dict:
    return {
        "cpu_seconds_median": statistics.median(tim["cpu"]),
        "wall_seconds_median": statistics.median(tim["wall"]),
        "cpu_seconds": tim["cpu"],
        "wall_seconds": tim["wall"],
        "rounds": rounds,
        "peak_rss_mib": mem["peak_rss"] / 2**20,
        "peak_rss_before_step_mib": mem["peak_rss_before_step"] / 2**20,
        "bag_mib": mem["bag_bytes"] / 2**20,
        "extra_mib": (mem["peak_rss"] - mem["bag_bytes"]) / 2**20,
    }


def ratio_of_medians(x: dict | None, y: dict | None) -> float | None:
    """cpu median of row x / that of row y (None when either method did not run)."""
    if x is None or y is None:
        return None
    return x["cpu_seconds_median"] / y["cpu_seconds_median"]


def paired_ratio(res: dict, a: str, b: str) -> float | None:
    """Median over rounds of cpu(a) / cpu(b) within a round (a and b ran back to back)."""
    if a not in res or b not in res:
        return None
    pairs = zip(res[a]["cpu_seconds"], res[b]["cpu_seconds"], strict=False)  # same rounds
    return statistics.median(x / y for x, y in pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000, 16000, 32000])
    ap.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=[25, 64, 128],
        help="instances per forward pass (max_instances_per_forward_pass); each value "
        "is a separate run of the chunked methods",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        nargs="+",
        default=[15, 11, 11, 5],
        help="interleaved timing rounds per size (last value repeats)",
    )
    ap.add_argument(
        "--original-rounds",
        type=int,
        nargs="+",
        default=[5, 3, 5, 1],
        help="how many of those rounds include the (slow) original scheme",
    )
    ap.add_argument(
        "--att-dim",
        type=int,
        default=ATT_DIM,
        help="hidden size of the ABMIL attention network (default %(default)s)",
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "trainer.json"))
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "memory":
            print(json.dumps(memory_worker(rest[0], int(rest[1]), int(rest[2]), args.att_dim)))
        else:
            n, k, rounds, orig_rounds, *methods = rest
            print(
                json.dumps(
                    timing_worker(
                        methods, int(n), int(k), int(rounds), int(orig_rounds), args.att_dim
                    )
                )
            )
        return

    t_start = time.time()
    load_start = os.getloadavg()
    grad_check = check_gradients(args.att_dim)
    print("gradients vs the naive pass (max relative difference, float64):", grad_check)
    if max(grad_check.values()) > 1e-6:
        raise SystemExit("the methods disagree: the benchmark would compare different things")
    # results[k][N][method]; the naive pass does not depend on k: it runs with the first k only
    results: dict[str, dict[str, dict[str, dict]]] = {str(k): {} for k in args.k}
    for i, n in enumerate(args.sizes):
        rounds = args.rounds[min(i, len(args.rounds) - 1)]
        orig_rounds = min(rounds, args.original_rounds[min(i, len(args.original_rounds) - 1)])
        for j, k in enumerate(args.k):
            methods = [m for m in args.methods if m != "naive" or j == 0]
            mem = {}
            for m in methods:  # peak RSS: one fresh process per (method, N, k)
                mem[m] = run_worker(args.att_dim, "memory", m, str(n), str(k))
                print(
                    f"k={k:4d} N={n:6d} {m:9s} peak RSS {mem[m]['peak_rss'] / 2**20:7.0f} MiB "
                    f"(one step {mem[m]['cpu']:.2f} s CPU)",
                    flush=True,
                )
            tim = run_worker(
                args.att_dim, "timing", str(n), str(k), str(rounds), str(orig_rounds), *methods
            )
            res = results[str(k)][str(n)] = {
                m: _row(tim[m], mem[m], orig_rounds if m == "original" else rounds) for m in methods
            }
            for m in methods:
                print(
                    f"k={k:4d} N={n:6d} {m:9s} {res[m]['cpu_seconds_median']:.3f} s/bag CPU "
                    f"({res[m]['wall_seconds_median']:.3f} s wall), median of "
                    f"{res[m]['rounds']}",
                    flush=True,
                )

    first = str(args.k[0])
    summary: dict[str, dict[str, dict[str, float | None]]] = {}
    growth: dict[str, dict[str, float]] = {}
    sizes = [str(s) for s in args.sizes]
    for k, by_n in results.items():
        summary[k] = {}
        for n, res in by_n.items():
            naive = results[first][n].get("naive")
            summary[k][n] = {
                "original_over_gigamil": paired_ratio(res, "original", "gigamil"),
                "gigamil_over_bare": paired_ratio(res, "gigamil", "bare"),
                "gigamil_over_bare_of_medians": ratio_of_medians(
                    res.get("gigamil"), res.get("bare")
                ),
                "gigamil_over_naive": ratio_of_medians(res.get("gigamil"), naive),
            }
        growth[k] = {
            m: by_n[sizes[-1]][m]["extra_mib"] / by_n[sizes[0]][m]["extra_mib"] - 1
            for m in by_n[sizes[0]]
        }
    report = {
        "benchmark": "trainer",
        "k": args.k,
        "patch_px": PX,
        "encoder": "smallcnn (D=64)",
        "head": f"ABMIL att_dim={args.att_dim}",
        "threads": 1,
        "time_measure": "process CPU seconds "
        "per bag (median of interleaved rounds); wall seconds also recorded",
        "ratios_how": "median over rounds of the ratio of two methods' CPU times within a "
        "round (they ran back to back in one process); *_of_medians: ratio of the medians",
        "gradients_vs_naive_max_rel_diff": grad_check,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "minutes": round((time.time() - t_start) / 60, 1),
        "results": results,
        "ratios_cpu_time": summary,
        "extra_memory_growth": {"from": sizes[0], "to": sizes[-1], "by_k": growth},
    }
    for k in results:
        print(f"\nk = {k}\nN       " + "".join(f"{m:>22s}" for m in args.methods))
        for n in sizes:
            row = results[k][n]
            print(
                f"{n:7s} "
                + "".join(
                    f"{row[m]['cpu_seconds_median']:9.2f} s {row[m]['extra_mib']:6.0f} MiB"
                    if m in row
                    else f"{'(k-independent)':>22s}"
                    for m in args.methods
                )
            )
        for n, r in summary[k].items():
            print(n, {a: None if v is None else round(v, 3) for a, v in r.items()})
        print("extra memory growth", {a: round(v, 3) for a, v in growth[k].items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
