#!/usr/bin/env python
"""Filtered search latency: intersecting the filter with the live ids by binary search vs ``np.intersect1d``.

    python bench/bench_filtered_search.py --n 1000000 --filter-fraction 0.1

Builds an IVF index over ``--n`` random unit vectors, then times ``VectorIndex.search`` with a filter of
``--filter-fraction`` of the ids (sorted, as the catalog returns them), once with the product's
``live_members`` and once with ``np.intersect1d`` swapped in; prints p50 of each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import retrieval.index.vector_index as vector_index  # noqa: E402
from retrieval.index.choice import IndexSpec  # noqa: E402
from retrieval.index.vector_index import VectorIndex  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--filter-fraction", type=float, default=0.1)
    p.add_argument("--queries", type=int, default=20)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    t0 = time.perf_counter()
    index = VectorIndex.build(ids, x, IndexSpec("ivf", "IVF1024,Flat", {"nlist": 1024, "nprobe": 32}))
    print(f"built IVF1024,Flat over {args.n:,} x {args.dim}-d in {time.perf_counter() - t0:.1f}s; "
          f"load {os.getloadavg()[0]:.2f}")
    allowed = np.sort(rng.choice(ids, int(args.n * args.filter_fraction), replace=False))
    queries = x[rng.choice(args.n, args.queries)]

    def p50() -> float:
        times = []
        for q in queries:
            t = time.perf_counter()
            index.search(q, 10, allowed_ids=allowed)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    ours = p50()
    product = vector_index.live_members
    vector_index.live_members = lambda a, live: np.intersect1d(a, live)
    try:
        baseline = p50()
    finally:
        vector_index.live_members = product
    print(f"filter of {len(allowed):,} ids: p50 np.intersect1d {baseline * 1e3:.1f} ms, live_members "
          f"{ours * 1e3:.1f} ms, ratio {baseline / ours:.1f}x; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
