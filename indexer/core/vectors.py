"""Stored vector format: float16 bytes in the catalog, L2-normalised float32 in memory."""

from __future__ import annotations

import numpy as np

VECTOR_DTYPE = np.float16
_EPS = 1e-12


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """L2-normalise the rows (last axis) of an array; zero rows stay zero; float32 for non-floats."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, _EPS).astype(x.dtype)


def encode_vector(vec: np.ndarray) -> bytes:
    """Bytes of one vector as stored in the catalog."""
    return np.asarray(vec, dtype=VECTOR_DTYPE).tobytes()


def decode_vectors(blobs: list[bytes], dim: int) -> np.ndarray:
    """Stored blobs → (n, dim) float32 unit vectors (re-normalised: float16 rounding drifts)."""
    if not blobs:
        return np.zeros((0, dim), np.float32)
    arr = np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE).reshape(len(blobs), dim).astype(np.float32)
    return l2_normalize(arr)
