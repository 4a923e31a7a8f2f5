"""The one stratified split: each item's rank inside its class after a seeded shuffle.

``rank < shots`` takes ``shots`` items per class (few-shot training sets); ``rank % n`` spreads
each class round-robin over ``n`` folds (cross-validation).
"""

from __future__ import annotations

import numpy as np


def class_ranks(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rank (0, 1, ...) of each item within its class, in a seeded random order per class."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    ranks = np.empty(len(y), dtype=np.int64)
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        ranks[idx] = np.arange(len(idx))
    return ranks


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold id per item; each class is spread round-robin over the folds."""
    return class_ranks(labels, seed) % n_folds


def shots_split(labels: np.ndarray, shots: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices with ``shots`` per class, the other indices), both sorted."""
    train = class_ranks(labels, seed) < shots
    return np.flatnonzero(train), np.flatnonzero(~train)
