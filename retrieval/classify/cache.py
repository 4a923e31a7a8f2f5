"""Cache of zero-shot weights: LRU in memory, optionally ``.npy`` files on disk."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexer.core.atomic import atomic_write

from .labels import validate_classnames
from .templates import ensure_templates
from .weights import EncodeTexts, build_zero_shot_weights, classifier_key

log = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:64] or "encoder"


class ZeroShotCache:
    """Zero-shot weights keyed by :func:`classifier_key`: LRU in memory, optionally on disk.

    On disk each entry is ``<directory>/<encoder-slug>-<hash8>/<digest>.npy``, written
    atomically (temporary file in the same directory, then ``os.replace``). Returned
    arrays are read-only views shared between callers.
    """

    def __init__(self, directory: str | Path | None = None, max_memory_items: int = 64) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_memory_items = max(1, int(max_memory_items))
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path | None:
        """Where *key* is stored on disk (``None`` for a memory-only cache)."""
        if self.directory is None:
            return None
        spec_id, _, digest = key.rpartition(":")
        if not spec_id or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"not a classifier_key(): {key!r}")
        encoder_hash = hashlib.sha256(spec_id.encode("utf-8")).hexdigest()[:8]
        return self.directory / f"{_slug(spec_id)}-{encoder_hash}" / f"{digest}.npy"

    def _remember(self, key: str, weights: np.ndarray) -> None:
        with self._lock:
            self._memory[key] = weights
            self._memory.move_to_end(key)
            while len(self._memory) > self.max_memory_items:
                self._memory.popitem(last=False)

    def get(self, key: str) -> np.ndarray | None:
        """Cached weights for *key*, or ``None``. Counts hits and misses."""
        with self._lock:
            weights = self._memory.get(key)
            if weights is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return weights
        path = self.path_for(key)
        if path is not None and path.is_file():
            try:
                loaded = np.load(path, allow_pickle=False)
                if loaded.ndim != 2 or loaded.dtype != np.float32:
                    raise ValueError(f"unexpected array {loaded.dtype} {loaded.shape}")
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable zero-shot cache file %s: %s", path, exc)
            else:
                loaded.setflags(write=False)
                self._remember(key, loaded)
                with self._lock:
                    self.hits += 1
                    self.disk_hits += 1
                return loaded
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: str, weights: np.ndarray) -> np.ndarray:
        """Store *weights* (copied as read-only float32) and return the stored array."""
        stored = np.array(weights, dtype=np.float32, copy=True)
        if stored.ndim != 2:
            raise ValueError(f"weights must be 2-D (n_classes, dim), got shape {stored.shape}")
        stored.setflags(write=False)
        path = self.path_for(key)
        if path is not None:
            atomic_write(path, lambda fh: np.save(fh, stored, allow_pickle=False))
        self._remember(key, stored)
        return stored

    def get_or_build(
        self,
        spec_id: str,
        classnames: Sequence[str],
        templates: Sequence[str],
        encode_texts: EncodeTexts,
        batch_size: int = 256,
    ) -> np.ndarray:
        """Cached weights for (encoder, labels, templates), building them on a miss."""
        names = validate_classnames(classnames)
        templates = ensure_templates(templates)
        key = classifier_key(spec_id, names, templates)
        weights = self.get(key)
        if weights is not None and weights.shape[0] == len(names):
            return weights
        log.info("building zero-shot weights for %d classes x %d templates (%s)",
                 len(names), len(templates), spec_id)
        return self.put(key, build_zero_shot_weights(names, templates, encode_texts, batch_size))

    def clear_memory(self) -> None:
        """Drop the in-memory entries (disk files are kept)."""
        with self._lock:
            self._memory.clear()
