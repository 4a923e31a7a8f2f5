"""Input coercion and FAISS ``IDSelector`` construction for filtered searches.

A bitmap selector over positions (or photo ids) is O(1) per test inside faiss; ids past
``BITMAP_MAX_ID`` use ``IDSelectorBatch`` (a hash set) instead.
"""

from __future__ import annotations

import faiss
import numpy as np

BITMAP_MAX_ID = 1 << 27  # photo-id bitmaps up to 16 MiB; larger ids use IDSelectorBatch


def as_matrix(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {x.shape}")
    return x


def as_ids(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids).ravel(), dtype=np.int64)


def live_members(ids: np.ndarray, live_sorted: np.ndarray) -> np.ndarray:
    """The sorted, distinct ``ids`` that are in ``live_sorted`` (sorted, distinct).

    ``np.intersect1d`` re-sorts both arrays on every call: ~0.7 s for a 100 k-id filter over 1 M live ids
    on the 2-core box. A binary search of the (small) request in the (already sorted) live ids takes ~0.02 s."""
    ids = np.unique(ids)
    if not len(ids) or not len(live_sorted):
        return ids[:0]
    pos = np.searchsorted(live_sorted, ids)
    pos[pos == len(live_sorted)] = 0
    return ids[live_sorted[pos] == ids]


def bitmap_selector(members: np.ndarray, size: int) -> tuple[faiss.IDSelector, np.ndarray]:
    bits = np.zeros(max(size, 1), dtype=bool)
    bits[members] = True
    packed = np.packbits(bits, bitorder="little")
    return faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed)), packed  # keep packed alive


def id_selector(allowed: np.ndarray) -> tuple[faiss.IDSelector, object]:
    """Selector over sorted photo ids (IVF stores ids natively); returns (selector, keep-alive)."""
    if allowed[0] >= 0 and allowed[-1] < BITMAP_MAX_ID:
        return bitmap_selector(allowed, int(allowed[-1]) + 1)
    return faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed)), allowed
