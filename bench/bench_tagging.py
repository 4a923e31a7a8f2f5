#!/usr/bin/env python
"""Benchmark zero-shot tagging of a whole library: ``classify_vectors`` vs plain matmul.

Tags ``--n`` stored unit-norm float32 vectors (generated in blocks, generation not
timed) against ``--classes`` random unit class weights (top-k), then measures
the machine's float32 matmul rate on the same (chunk x dim) x (dim x classes)
shapes with plain ``torch.mm`` and ``np.matmul`` loops, and prints
tagging FLOP rate / best matmul rate (target >= 0.7).

    python bench/bench_tagging.py                    # 1M x 512-d, 1000 classes
    python bench/bench_tagging.py --n 200000 --profile

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.zeroshot import classify_vectors, normalize_rows  # noqa: E402


def random_unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench_tagging(args: argparse.Namespace, weights: np.ndarray) -> tuple[float, float]:
    """Returns (seconds spent in classify_vectors, checksum)."""
    rng = np.random.default_rng(args.seed)
    total, checksum = 0.0, 0.0
    for start in range(0, args.n, args.block):
        block = random_unit(rng, min(args.block, args.n - start), args.dim)
        t0 = time.perf_counter()
        res = classify_vectors(block, weights, args.logit_scale, k=args.k, chunk=args.chunk,
                               normalize=not args.assume_normalized)
        total += time.perf_counter() - t0
        checksum += float(res.values[:, 0].sum())
    return total, checksum


def bench_matmul(args: argparse.Namespace, weights: np.ndarray) -> dict[str, float]:
    """Best-of-``--repeat`` FLOP/s of plain (chunk x d) @ (d x c) loops."""
    rng = np.random.default_rng(args.seed + 1)
    rows = min(args.chunk, args.n)
    x = random_unit(rng, rows, args.dim)
    wt = np.ascontiguousarray(weights.T)
    iters = max(1, min(args.n, args.matmul_rows) // rows)
    flop = 2.0 * rows * args.dim * weights.shape[0] * iters
    rates: dict[str, float] = {}

    out_np = np.empty((rows, weights.shape[0]), dtype=np.float32)
    xt, wtt = torch.from_numpy(x), torch.from_numpy(wt)
    out_t = torch.empty((rows, weights.shape[0]), dtype=torch.float32)
    for name, step in (
        ("torch.mm", lambda: torch.mm(xt, wtt, out=out_t)),
        ("np.matmul", lambda: np.matmul(x, wt, out=out_np)),
    ):
        step()  # warm-up
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for _ in range(iters):
                step()
            best = min(best, time.perf_counter() - t0)
        rates[name] = flop / best
    return rates


def profile_stages(args: argparse.Namespace, weights: np.ndarray) -> None:
    """Time each stage of classify_vectors on one chunk (best of 3)."""
    rng = np.random.default_rng(args.seed + 2)
    x_np = random_unit(rng, min(args.chunk, args.n), args.dim)
    wt = torch.from_numpy(np.ascontiguousarray((weights * args.logit_scale).T))
    x = torch.from_numpy(x_np)
    logits = torch.mm(x, wt)

    def best(fn) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    k = args.k
    scratch = torch.empty_like(logits)
    stages = {
        "norm check": lambda: float((torch.linalg.vector_norm(x, dim=1) - 1).abs().max()),
        "normalize (copy)": lambda: x / torch.linalg.vector_norm(x, dim=1, keepdim=True),
        "torch.mm": lambda: torch.mm(x, wt, out=logits),
        "torch.topk": lambda: torch.topk(logits, k, dim=1),
        "sub_/exp_/sum": lambda: scratch.copy_(logits).sub_(logits[:, :1]).exp_().sum(dim=1),
        "  (copy only)": lambda: scratch.copy_(logits),
        "torch.logsumexp": lambda: torch.logsumexp(logits, dim=1, keepdim=True),
        "np.argpartition": lambda: np.argpartition(-logits.numpy(), k - 1, axis=1)[:, :k],
    }
    print(f"stage times for one chunk of {len(x_np)} rows:")
    for name, fn in stages.items():
        print(f"  {name:16s} {best(fn) * 1e3:8.1f} ms")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="number of stored vectors to tag")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--chunk", type=int, default=65536, help="classify_vectors chunk rows")
    p.add_argument("--block", type=int, default=262144, help="rows generated per block (untimed)")
    p.add_argument("--logit-scale", type=float, default=100.0)
    p.add_argument("--assume-normalized", action="store_true", help="skip per-chunk normalisation")
    p.add_argument("--matmul-rows", type=int, default=262144, help="rows per matmul timing loop")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--profile", action="store_true", help="also time each stage on one chunk")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    weights = normalize_rows(np.random.default_rng(args.seed + 3).standard_normal(
        (args.classes, args.dim), dtype=np.float32))
    print(f"torch {torch.__version__}, numpy {np.__version__}, torch threads {torch.get_num_threads()}")
    print(f"tagging N={args.n:,} x d={args.dim} vectors against {args.classes} classes, "
          f"top-{args.k}, chunk={args.chunk}, normalize={not args.assume_normalized}")

    seconds, _ = bench_tagging(args, weights)
    flop = 2.0 * args.n * args.dim * args.classes
    tag_rate = flop / seconds
    print(f"classify_vectors: {seconds:.2f} s, {args.n / seconds:,.0f} photos/s, "
          f"{tag_rate / 1e9:.1f} GFLOP/s")

    rates = bench_matmul(args, weights)
    for name, rate in rates.items():
        print(f"plain {name:9s} ({min(args.chunk, args.n)}x{args.dim})x({args.dim}x{args.classes}): "
              f"{rate / 1e9:.1f} GFLOP/s")
    best_name = max(rates, key=rates.get)
    ratio = tag_rate / rates[best_name]
    print(f"ratio tagging / best plain matmul ({best_name}): {ratio:.2f} "
          f"({'meets' if ratio >= 0.7 else 'below'} target 0.7)")
    if args.profile:
        profile_stages(args, weights)


if __name__ == "__main__":
    main()
