"""Exact k-NN ground truth and recall@k, for choosing and checking index types."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from retrieval.scoring import top_k

from .choice import SearchParams


class _Searchable(Protocol):
    def search(self, queries: np.ndarray, k: int, *args: Any, **kw: Any) -> tuple[np.ndarray, np.ndarray]: ...


def exact_knn(vectors: np.ndarray, queries: np.ndarray, k: int,
              ids: np.ndarray | None = None, chunk: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k in chunks (bounded memory). Returns (scores, ids), padded."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start:start + chunk], dtype=np.float32)
        lab = (np.arange(start, start + len(block), dtype=np.int64) if ids is None
               else np.asarray(ids[start:start + len(block)], dtype=np.int64))
        i, s = top_k(q @ block.T, k, lab, pad=True)
        pos, best_s = top_k(np.concatenate([best_s, s], 1), k, pad=True)
        best_i = np.take_along_axis(np.concatenate([best_i, i], 1), pos, 1)
    return best_s, best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of true top-k ids present in the found top-k (per row, averaged)."""
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth))
    total = int((truth >= 0).sum())
    return hits / total if total else 1.0


def measure_recall(index: _Searchable, vectors: np.ndarray, queries: np.ndarray, k: int = 10, *,
                   ids: np.ndarray | None = None, params: SearchParams | None = None,
                   truth: np.ndarray | None = None) -> float:
    """recall@k of ``index.search`` against exact search over ``vectors`` (labelled ``ids``,
    default ``arange``). Works for a ``VectorIndex`` or a raw faiss index."""
    if truth is None:
        _, truth = exact_knn(vectors, queries, k, ids)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if params is not None:
        _, found = index.search(q, k, params=params)
    else:
        _, found = index.search(q, k)
    return recall_at_k(np.asarray(found), truth)
