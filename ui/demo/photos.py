"""Libraries of random-noise photos: distinct files in nested folders, for indexing runs that need no meaning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def random_photo(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0, **save_kw: object) -> Path:
    """A photo of seeded RGB noise at ``path`` (format from the suffix; ``save_kw`` go to ``Image.save``)."""
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **save_kw)
    return path


def make_library(root: Path, n: int, start: int = 0, size: tuple[int, int] = (64, 48)) -> list[Path]:
    """``n`` distinct JPEGs spread over nested folders (``{i % 3}/sub{i % 2}/img_{i:04d}.jpg``)."""
    return [random_photo(root / f"{i % 3}" / f"sub{i % 2}" / f"img_{i:04d}.jpg", size, seed=i)
            for i in range(start, start + n)]
