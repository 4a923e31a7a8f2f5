#!/usr/bin/env python
"""Benchmark zero-shot tagging of a whole library: ``classify_vectors`` vs plain matmul.

Tags ``--n`` stored unit-norm float32 vectors (generated in blocks, generation not
timed) against ``--classes`` random unit class weights (top-k), and measures the
machine's float32 matmul rate on the same vectors and (chunk x dim) x (dim x classes)
shapes with plain ``np.matmul`` and ``torch.mm`` loops, interleaved block by block
with the tagging so that all see the same machine load. Prints photos/s and
tagging FLOP rate / best plain matmul rate (target >= 0.7).

    python bench/bench_tagging.py                    # 1M x 512-d, 1000 classes
    python bench/bench_tagging.py --n 200000 --profile

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.classify.scoring import classify_vectors  # noqa: E402
from retrieval.scoring import l2_normalize as normalize_rows  # noqa: E402
from retrieval.scoring import softmax, top_k  # noqa: E402


def random_unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def plain_matmul_steps(rows: int, weights: np.ndarray) -> dict[str, Callable[[np.ndarray], None]]:
    """Plain (rows x d) @ (d x c) float32 matmuls into reused output buffers."""
    wt = np.ascontiguousarray(weights.T)
    wt_t = torch.from_numpy(wt)
    out_np = np.empty((rows, weights.shape[0]), dtype=np.float32)
    out_t = torch.from_numpy(np.empty_like(out_np))

    def np_step(x: np.ndarray) -> None:
        np.matmul(x, wt, out=out_np[: len(x)])

    def torch_step(x: np.ndarray) -> None:
        torch.mm(torch.from_numpy(x), wt_t, out=out_t[: len(x)])

    return {"np.matmul": np_step, "torch.mm": torch_step}


def bench_interleaved(args: argparse.Namespace, weights: np.ndarray) -> dict[str, float]:
    """Seconds spent per method over all N vectors.

    For every generated block (generation untimed) the block is tagged with
    ``classify_vectors`` and then multiplied chunk by chunk with plain matmul loops,
    so that all methods see the same data and (roughly) the same machine load.
    """
    rng = np.random.default_rng(args.seed)
    rows = min(args.chunk, args.n)
    steps = plain_matmul_steps(rows, weights)
    for step in steps.values():  # warm-up
        step(random_unit(rng, rows, args.dim))
    seconds = {"classify_vectors": 0.0, **{name: 0.0 for name in steps}}
    for start in range(0, args.n, args.block):
        block = random_unit(rng, min(args.block, args.n - start), args.dim)
        t0 = time.perf_counter()
        classify_vectors(block, weights, args.logit_scale, k=args.k, chunk=args.chunk,
                         normalize=not args.assume_normalized)
        seconds["classify_vectors"] += time.perf_counter() - t0
        for name, step in steps.items():
            t0 = time.perf_counter()
            for s in range(0, len(block), rows):
                step(block[s : s + rows])
            seconds[name] += time.perf_counter() - t0
    return seconds


def profile_stages(args: argparse.Namespace, weights: np.ndarray) -> None:
    """Time each stage (and rejected alternatives) of classify_vectors on one chunk, best of 3.

    classify_vectors = norm check + np.matmul + torch.amax + in-place sub_/exp_ + torch.topk + sum.
    """
    rng = np.random.default_rng(args.seed + 2)
    x_np = random_unit(rng, min(args.chunk, args.n), args.dim)
    wt_np = np.ascontiguousarray((weights * args.logit_scale).T)
    wt, x = torch.from_numpy(wt_np), torch.from_numpy(x_np)
    logits_np = x_np @ wt_np
    logits = torch.from_numpy(logits_np)

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
        "norm check": lambda: np.abs(np.einsum("ij,ij->i", x_np, x_np) - 1).max(),
        "normalize (copy)": lambda: x_np / np.linalg.norm(x_np, axis=1, keepdims=True),
        "np.matmul": lambda: np.matmul(x_np, wt_np, out=logits_np),
        "torch.mm": lambda: torch.mm(x, wt, out=logits),
        "torch.topk": lambda: torch.topk(logits, k, dim=1),
        "softmax (numpy)": lambda: softmax(logits_np, axis=1, out=scratch.numpy()),
        "torch.softmax": lambda: torch.softmax(logits, dim=1),
        "top_k (numpy)": lambda: top_k(logits_np, k),
        "sub_/exp_/sum": lambda: scratch.copy_(logits).sub_(logits[:, :1]).exp_().sum(dim=1),
        "  (copy only)": lambda: scratch.copy_(logits),
        "torch.logsumexp": lambda: torch.logsumexp(logits, dim=1, keepdim=True),
        "torch.amax": lambda: torch.amax(logits, dim=1, keepdim=True),
        "private fused softmax.out (dropped)": lambda: torch.ops.aten._softmax.out(logits, 1, False, out=scratch),
        "exp_ in place": lambda: scratch.copy_(logits).exp_(),
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

    seconds = bench_interleaved(args, weights)
    flop = 2.0 * args.n * args.dim * args.classes
    rates = {name: flop / t for name, t in seconds.items()}
    tag_rate = rates.pop("classify_vectors")
    print(f"classify_vectors: {seconds['classify_vectors']:.2f} s, "
          f"{args.n / seconds['classify_vectors']:,.0f} photos/s, {tag_rate / 1e9:.1f} GFLOP/s")
    for name, rate in rates.items():
        print(f"plain {name:9s} ({min(args.chunk, args.n)}x{args.dim})x({args.dim}x{args.classes}) loop: "
              f"{seconds[name]:.2f} s, {rate / 1e9:.1f} GFLOP/s")
    best_name = max(rates, key=rates.get)
    ratio = tag_rate / rates[best_name]
    print(f"ratio tagging / best plain matmul ({best_name}): {ratio:.2f} "
          f"({'meets' if ratio >= 0.7 else 'below'} target 0.7)")
    if args.profile:
        profile_stages(args, weights)


if __name__ == "__main__":
    main()
