"""Near-duplicate collapse of ranked results: bursts of almost identical shots show once."""

from __future__ import annotations

import numpy as np


def collapse_groups(ids: np.ndarray, vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Greedy grouping in rank order: each group is ``[kept id, *collapsed ids]``.

    A result joins the most similar earlier kept result when their cosine is ``>= threshold``;
    otherwise it is kept. All pairwise cosines come from one matrix product, so the cost is one
    (n, d) x (d, n) GEMM plus an O(n * kept) scan, with no per-result vector fetch.
    """
    n = len(ids)
    if n == 0:
        return []
    sims = vectors @ vectors.T
    kept: list[int] = []  # row positions of kept results
    groups: list[list[int]] = []
    for i in range(n):
        if kept:
            row = sims[i, kept]
            j = int(np.argmax(row))
            if row[j] >= threshold:
                groups[j].append(int(ids[i]))
                continue
        kept.append(i)
        groups.append([int(ids[i])])
    return groups
