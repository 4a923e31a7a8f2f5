"""Array maths shared by search and classification: L2-normalisation, top-k and softmax.

Pure NumPy; every vector that reaches an index or a classifier is L2-normalised, so inner
product is cosine everywhere.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from indexer.core.vectors import l2_normalize

__all__ = ["TopK", "l2_normalize", "softmax", "top_k"]


class TopK(NamedTuple):
    """Per-row top-k labels (or column indices, int64) and their scores, best first."""

    indices: np.ndarray
    values: np.ndarray


def top_k(scores: np.ndarray, k: int, labels: np.ndarray | None = None, *, pad: bool = False) -> TopK:
    """Row-wise top-``k`` of a 2-D score matrix, best first (ties keep column order).

    ``labels`` (one per column) replace the column indices in the result. With ``pad`` the
    result always has ``k`` columns, filled with ``-1`` / ``-inf`` where a row has fewer
    candidates; otherwise ``k`` is clipped to the number of columns.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D, got shape {s.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    nq, m = s.shape
    kk = min(int(k), m)
    if kk == 0:
        idx = np.zeros((nq, 0), dtype=np.int64)
        vals = np.zeros((nq, 0), dtype=np.float32)
    else:
        part = (np.argpartition(-s, kk - 1, axis=1)[:, :kk] if m > kk
                else np.broadcast_to(np.arange(m), (nq, m)).copy())
        vals = np.take_along_axis(s, part, 1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx = np.take_along_axis(part, order, 1).astype(np.int64)
        vals = np.take_along_axis(vals, order, 1)
    if labels is not None:
        idx = np.asarray(labels, dtype=np.int64)[idx]
    if pad and kk < k:
        out_i = np.full((nq, k), -1, dtype=np.int64)
        out_s = np.full((nq, k), -np.inf, dtype=np.float32)
        out_i[:, :kk], out_s[:, :kk] = idx, vals
        return TopK(out_i, out_s)
    return TopK(idx, vals)


def softmax(logits: np.ndarray, axis: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """Numerically stable softmax (subtracts the maximum); float32, optionally into ``out``."""
    z = np.asarray(logits, dtype=np.float32)
    if out is None:
        out = np.empty_like(z)
    np.subtract(z, z.max(axis=axis, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out
