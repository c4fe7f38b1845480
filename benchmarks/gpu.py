"""GPU benchmark of the end-to-end trainer (run by hand on a CUDA machine: `python benchmarks/gpu.py`).

One run, one GPU, ResNet-50 (random initialisation, frozen BatchNorm, the default augmentation
in front, ABMIL head) on 224-px patches, k = 256 instances per forward pass, in bf16 and fp32
(float32 with TF32 off: IEEE single precision). Patches per second of one training step over a
bag of ``--n`` patches (forward AND backward, no optimizer step), for

- (a) ``encoder``: the bare encoder, forward + backward of every chunk of k once (a lower bound:
  GradCache runs the encoder twice per patch, once without grad);
- (b) ``bare``: a bare GradCache loop written here (no-grad pass, head + loss once on the
  feature matrix, re-encoding with grad per chunk; no RNG replay, no BatchNorm bookkeeping);
- (c) ``gigamil``: ``MILModel.forward_train`` on the same in-memory bag (uint8, on the GPU);
- (d) ``zarr``: ``forward_train`` on a zarr patch store on disk, read as the trainer reads it
  (``ZarrBag(workers=--threads, pin_memory=True).with_cache()``; the store's pages are evicted from
  the page cache before every round, so each round reads from disk);
- (e) ``full``: the plain full-bag pass (``max_instances_per_forward_pass=None``, one graph).

(c) runs a second time with the encoder in the default (contiguous) memory format instead of
channels-last: the channels-last gain. Methods run interleaved for ``--rounds`` rounds after a
warm-up; the median time is reported, and ratios are medians of per-round ratios of two methods
run back to back. Peak GPU memory (``torch.cuda.max_memory_allocated``) of one ``forward_train``
step for N = 1k, 4k, 16k (the bag in pinned host memory, so its pixels do not count), and of
the full-bag pass (e) until it runs out of memory. Before timing, the script checks in float64
on the CPU that (b), (c) and (e) give the same gradients, so the timings compare one computation.

Targets (issue): (c)/(b) >= 0.95; (d)/(c) >= 0.9; bf16 >= 1.8x fp32 patches/s (gigamil);
peak memory from N = 1k to 16k grows by no more than the N x D feature matrix + 5 %.
Writes ``benchmarks/results/gpu.json`` (``--out``). ``--device cpu --tiny`` is a smoke run of the
script (the small CNN, 32 px, a few patches: ResNet-18 in bf16 on a CPU without native bf16 takes
20 s a step) whose numbers mean nothing and are not written to gpu.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.data.bags import ZarrBag  # noqa: E402
from gigamil.data.store_writer import StoreWriter, unresampled_store_attrs  # noqa: E402
from gigamil.models.factory import build_mil_model  # noqa: E402
from gigamil.models.mil import MILModel  # noqa: E402
from gigamil.nn.losses import BagLoss  # noqa: E402
from gigamil.train.accel import prepare_model  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "gpu.json"
METHODS = ("encoder", "bare", "gigamil", "zarr", "full", "gigamil_contiguous")
PRECISIONS = {"bf16": torch.bfloat16, "fp32": None}
CMU = REPO / "workflow" / "gigamil" / "data" / "CMU-1-Small-Region.svs"
LABEL = 1


# ------------------------------------------------------------------ setup
def build(
    encoder: str,
    px: int,
    device: torch.device,
    channels_last: bool = True,
    augment: dict[str, Any] | None = None,
) -> MILModel:
    """The model the trainer builds from config defaults with ``encoder`` (random weights;
    ``augment``: ``training.augment``, None = its defaults)."""
    torch.manual_seed(0)
    aug = {} if augment is None else augment
    model = build_mil_model({"encoder": encoder}, 2, px, augment=aug, loss_fn=BagLoss("ce"))
    model = model.to(device).train()
    if channels_last:
        prepare_model(model, device)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model


def tissue_patches(n: int, px: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 (px, px, 3) H&E patches: random crops, flips and rotations of the packaged CMU
    slide (real tissue, so the store compresses like a real one)."""
    import openslide

    with openslide.OpenSlide(str(CMU)) as s:
        img = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    out = np.empty((n, px, px, 3), np.uint8)
    for i in range(n):
        y, x = int(rng.integers(0, h - px)), int(rng.integers(0, w - px))
        p = img[y : y + px, x : x + px]
        p = np.rot90(p, int(rng.integers(4)))
        out[i] = p[:, ::-1] if rng.random() < 0.5 else p
    return out


def write_store(path: Path, patches: np.ndarray, threads: int) -> Path:
    from concurrent.futures import ThreadPoolExecutor

    n, px = len(patches), patches.shape[1]
    grid = np.stack([np.arange(n) // 64, np.arange(n) % 64], axis=1)
    attrs = unresampled_store_attrs(path.stem, px, 0.5, [64 * px, (n // 64 + 1) * px], str(CMU))
    with StoreWriter(path, n, px, grid * px, grid) as w:
        c = w.chunk
        with ThreadPoolExecutor(threads) as pool:
            list(
                pool.map(
                    lambda i: w.write_chunk(i, patches[i * c : (i + 1) * c]), range(-(-n // c))
                )
            )
        w.commit(attrs)
    return path


def evict(path: Path) -> None:
    """Drop the store's files from the page cache (posix_fadvise DONTNEED; no root needed)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# ------------------------------------------------------------------ the methods
def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def step_encoder(model: MILModel, bag: torch.Tensor, k: int, dtype: torch.dtype | None) -> None:
    """(a) forward + backward of every chunk once (the gradient of the features' sum)."""
    dev = model.device
    for s in range(0, len(bag), k):
        with autocast(dev, dtype):
            h = model.feature_encoder(bag[s : s + k].to(dev, non_blocking=True))
        h.float().sum().backward()


def step_bare(model: MILModel, bag: torch.Tensor, k: int, dtype: torch.dtype | None) -> None:
    """(b) a bare GradCache loop: no RNG replay, no BatchNorm bookkeeping."""
    enc, head, dev = model.feature_encoder, model.attention_model, model.device
    with torch.no_grad(), autocast(dev, dtype):
        h = torch.cat(
            [enc(bag[s : s + k].to(dev, non_blocking=True)) for s in range(0, len(bag), k)]
        )
    h = h.float() if dtype is not None else h  # H in float32 under autocast, as gigamil
    h.requires_grad_(True)
    logits, _ = head(h)
    model.loss_fn(logits, LABEL).backward()
    g = h.grad
    del h
    for s in range(0, len(bag), k):
        with autocast(dev, dtype):
            out = enc(bag[s : s + k].to(dev, non_blocking=True))
        out.backward(g[s : s + k].to(out.dtype))


def step_gigamil(model: MILModel, bag: Any, k: int | None, dtype: torch.dtype | None) -> None:
    """(c), (d), (e): the trainer's own step (k None: the plain full-bag pass)."""
    model.amp_dtype = dtype
    model.forward_train(bag, LABEL, max_instances_per_forward_pass=k)


def check_gradients(n: int = 40, k: int = 16, px: int = 32) -> dict[str, float]:
    """Max relative difference from the full-bag pass of (b) and (c) gradients, float64 on
    the CPU, without augmentation (the bare loop does not replay random numbers)."""
    no_aug = {"flips": False, "rot90": False, "color_jitter": 0.0, "stain_jitter": 0.0}
    model = build("resnet18", px, torch.device("cpu"), augment=no_aug).double()
    bag = torch.from_numpy(tissue_patches(n, px, seed=1))
    grads = {}
    for name, fn in (
        ("full", lambda m: step_gigamil(m, bag, None, None)),
        ("bare", lambda m: step_bare(m, bag, k, None)),
        ("gigamil", lambda m: step_gigamil(m, bag, k, None)),
    ):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        fn(model)
        grads[name] = torch.cat(
            [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        )
    ref = grads["full"]
    return {m: float((g - ref).norm() / ref.norm()) for m, g in grads.items()}


# ------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], model: MILModel, device: torch.device) -> float | str:
    model.zero_grad(set_to_none=True)
    sync(device)
    t0 = time.perf_counter()
    try:
        fn()
        sync(device)
    except torch.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return "out of memory"
    return time.perf_counter() - t0


def speed(
    args: argparse.Namespace, device: torch.device, store: Path, gpu_bag: torch.Tensor
) -> dict:
    """Per precision: median seconds and patches/s of every method, paired ratios."""
    n, k = len(gpu_bag), args.k
    out: dict[str, Any] = {}
    for pname, dtype in PRECISIONS.items():
        if device.type == "cpu" and pname == "bf16" and not args.tiny:
            continue
        model = build(args.encoder, args.px, device)
        contiguous = build(args.encoder, args.px, device, channels_last=False)

        def zarr_bag() -> ZarrBag:
            evict(store)
            return ZarrBag(store, workers=args.threads, pin_memory=True).with_cache()

        runs: dict[str, Callable[[], None]] = {
            "encoder": lambda m=model, d=dtype: step_encoder(m, gpu_bag, k, d),
            "bare": lambda m=model, d=dtype: step_bare(m, gpu_bag, k, d),
            "gigamil": lambda m=model, d=dtype: step_gigamil(m, gpu_bag, k, d),
            "zarr": None,  # type: ignore[dict-item]  # its bag is opened (and evicted) per round
            "full": lambda m=model, d=dtype: step_gigamil(m, gpu_bag, None, d),
            "gigamil_contiguous": lambda m=contiguous, d=dtype: step_gigamil(m, gpu_bag, k, d),
        }
        times: dict[str, list[float | str]] = {m: [] for m in METHODS}
        oom: set[str] = set()
        for r in range(args.rounds + 1):  # round 0: warm-up (cuDNN autotuning, allocator)
            order = list(METHODS) if r % 2 else list(reversed(METHODS))
            for m in order:
                if m in oom:  # out of memory once: not tried again
                    if r:
                        times[m].append("out of memory")
                    continue
                torch.manual_seed(r)
                if m == "zarr":
                    bag = zarr_bag()
                    t = timed(
                        lambda b=bag, m=model, d=dtype: step_gigamil(m, b, k, d), model, device
                    )
                    del bag
                else:
                    t = timed(runs[m], contiguous if m == "gigamil_contiguous" else model, device)
                if t == "out of memory":
                    oom.add(m)
                if r:
                    times[m].append(t)
            print(
                f"  {pname} round {r}: "
                + ", ".join(f"{m} {_fmt(times[m][-1]) if r else 'warm-up'}" for m in METHODS),
                flush=True,
            )
        res: dict[str, Any] = {}
        for m in METHODS:
            ok = [t for t in times[m] if isinstance(t, float)]
            res[m] = {
                "seconds": times[m],
                "median_seconds": statistics.median(ok) if ok else None,
                "patches_per_s": n / statistics.median(ok) if ok else None,
                "out_of_memory": len(ok) < len(times[m]),
            }
        res["ratios"] = {
            "gigamil/bare (c/b)": paired(times, "bare", "gigamil"),
            "zarr/gigamil (d/c)": paired(times, "gigamil", "zarr"),
            "bare/encoder (b/a)": paired(times, "encoder", "bare"),
            "channels_last gain (contiguous time / channels-last time)": paired(
                times, "gigamil_contiguous", "gigamil"
            ),
        }
        out[pname] = res
        del model, contiguous
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def paired(times: dict[str, list], a_name: str, b_name: str) -> float | None:
    """Median over rounds of time[a] / time[b], i.e. the patches/s of b over those of a, from
    runs back to back (bf16 over fp32 is a ratio of medians: the precisions run one after the
    other, each with its own model)."""
    pairs = [
        a / b
        for a, b in zip(times[a_name], times[b_name], strict=True)
        if isinstance(a, float) and isinstance(b, float)
    ]
    return statistics.median(pairs) if pairs else None


def _fmt(t: float | str) -> str:
    return f"{t:.3f} s" if isinstance(t, float) else str(t)


# ------------------------------------------------------------------ memory
def memory(args: argparse.Namespace, device: torch.device, patches: np.ndarray) -> dict:
    """Peak GPU memory of one step at every N, for gigamil (k) and the full-bag pass."""
    out: dict[str, Any] = {}
    for pname, dtype in PRECISIONS.items():
        if device.type == "cpu" and pname == "bf16" and not args.tiny:
            continue
        model = build(args.encoder, args.px, device)
        rows = []
        full_oom = False
        for n in args.mem_n:
            reps = -(-n // len(patches))
            host = torch.from_numpy(np.concatenate([patches] * reps)[:n])
            if device.type == "cuda":
                host = host.pin_memory()
            row: dict[str, Any] = {"n": n}
            for name, chunk in (("gigamil", args.k), ("full", None)):
                if name == "full" and full_oom:
                    row[name] = "not run: out of memory at a smaller N"
                    continue
                model.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                t = timed(
                    lambda c=chunk, h=host, m=model, d=dtype: step_gigamil(m, h, c, d),
                    model,
                    device,
                )
                if t == "out of memory":
                    row[name] = "out of memory"
                    full_oom = full_oom or name == "full"
                else:
                    peak = (
                        torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
                    )
                    row[name] = {"peak_bytes": peak, "seconds": t}
            print(
                f"  memory {pname} N={n}: "
                + json.dumps({k: v for k, v in row.items() if k != "n"}),
                flush=True,
            )
            rows.append(row)
        with torch.no_grad():
            d = int(model.feature_encoder(torch.from_numpy(patches[:2]).to(device)).shape[1])
        out[pname] = {"rows": rows, "feature_dim": d, "growth": growth(rows, d)}
        del model
    return out


def growth(rows: list[dict], d: int | None) -> dict[str, Any] | None:
    """Peak growth of gigamil from the smallest to the largest N against the allowance: the
    N x D float32 feature matrix (of the largest N) + 5 % of the smallest N's peak."""
    first, last = rows[0].get("gigamil"), rows[-1].get("gigamil")
    if (
        not isinstance(first, dict)
        or not isinstance(last, dict)
        or first["peak_bytes"] is None
        or d is None
    ):
        return None
    grow = last["peak_bytes"] - first["peak_bytes"]
    feat = rows[-1]["n"] * d * 4
    allowance = feat + 0.05 * first["peak_bytes"]
    return {
        "from_n": rows[0]["n"],
        "to_n": rows[-1]["n"],
        "growth_bytes": grow,
        "feature_matrix_bytes": feat,
        "allowance_bytes": allowance,
        "within_target": grow <= allowance,
    }


# ------------------------------------------------------------------ main
def targets(res: dict) -> dict[str, Any]:
    sp = res["speed"]
    out: dict[str, Any] = {}
    for p in sp:
        r = sp[p]["ratios"]
        out[f"{p}: (c)/(b) >= 0.95"] = _cmp(r["gigamil/bare (c/b)"], 0.95)
        out[f"{p}: (d)/(c) >= 0.9"] = _cmp(r["zarr/gigamil (d/c)"], 0.9)
        out[f"{p}: channels-last gain"] = r[
            "channels_last gain (contiguous time / channels-last time)"
        ]
    if "bf16" in sp and "fp32" in sp:
        b, f = sp["bf16"]["gigamil"]["patches_per_s"], sp["fp32"]["gigamil"]["patches_per_s"]
        out["bf16 / fp32 patches/s (gigamil) >= 1.8"] = _cmp(b / f if b and f else None, 1.8)
    for p, m in res["memory"].items():
        g = m["growth"]
        out[f"{p}: memory growth 1k->16k <= N x D + 5 %"] = (
            None
            if g is None
            else {
                "growth_MiB": g["growth_bytes"] / 2**20,
                "allowance_MiB": g["allowance_bytes"] / 2**20,
                "met": g["within_target"],
            }
        )
    return out


def _cmp(value: float | None, target: float) -> dict[str, Any]:
    return {"value": value, "target": target, "met": None if value is None else value >= target}


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpus": os.cpu_count(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return env


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument(
        "--tiny", action="store_true", help="smoke run: the small CNN, 32 px, few patches"
    )
    ap.add_argument("--encoder", default="resnet50")
    ap.add_argument("--px", type=int, default=224)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--n", type=int, default=2048, help="patches per bag of the speed runs")
    ap.add_argument("--mem-n", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument(
        "--out", type=Path, default=None, help=f"results JSON (default {RESULT} on CUDA)"
    )
    args = ap.parse_args(argv)
    if args.tiny:
        args.encoder, args.px, args.k, args.n, args.mem_n, args.rounds = (
            "smallcnn",
            32,
            16,
            48,
            [16, 32, 64],
            1,
        )
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: no CUDA device (torch.cuda.is_available() is False)")
    out = args.out if args.out is not None else (RESULT if device.type == "cuda" else None)
    if device.type != "cuda" and out is not None and out.resolve() == RESULT.resolve():
        raise SystemExit(f"benchmarks/gpu.py: a {device.type} run is not written to {RESULT}")
    if device.type == "cuda":  # fp32 means IEEE float32 (bf16 autocast is not affected)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    t0 = time.time()
    if device.type != "cuda":
        print("CPU smoke run of the script: its numbers say nothing about a GPU", flush=True)
    print("gradient check (float64, CPU):", check := check_gradients(), flush=True)
    if max(check.values()) > 1e-10:
        raise SystemExit("the benchmark's methods do not compute the same gradients")
    base = tissue_patches(min(args.n, 4096), args.px)
    patches = np.concatenate([base] * (-(-args.n // len(base))))[: args.n]
    tmp = Path(tempfile.mkdtemp(prefix="gigamil-gpu-bench-"))
    try:
        store = write_store(tmp / "bench.zarr", patches, args.threads)
        gpu_bag = torch.from_numpy(patches).to(device)
        print(
            f"speed: N = {args.n}, k = {args.k}, {args.encoder} at {args.px} px on {device}",
            flush=True,
        )
        res: dict[str, Any] = {"complete": False, "speed": speed(args, device, store, gpu_bag)}
        del gpu_bag
        save(res, out)  # partial results survive a time limit in the memory runs
        res["memory"] = memory(args, device, base)
        res["complete"] = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["targets"] = targets(res)
    res["settings"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"
    }
    res["settings"]["tf32"] = False
    res["gradient_check"] = check
    res["environment"] = environment(device)
    res["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res["targets"], indent=1))
    save(res, out)
    return res


def save(res: dict[str, Any], out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
