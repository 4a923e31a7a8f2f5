"""The fast text path: query vectors without torch or the vision tower.

For a text search on a collection whose encoder was not chosen explicitly, query texts are
encoded by, in order: the collection's query-vector cache (``retrieval.search.query_cache``), the text
tower exported into the collection (``retrieval.search.text_tower``, ONNX Runtime, no torch), and only
then the full open_clip model (loaded lazily). The export is written by the collection's writer
(``photodex index`` / ``photodex reindex``); a search never writes it, so read-only collections
work and a search never waits for an export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.core.spec import EncoderSpec

log = logging.getLogger(__name__)


class FastTextEncoder:
    """``encode_texts`` for one collection: query cache → exported text tower → full model."""

    def __init__(self, collection_path: Path, spec: EncoderSpec, load_full: Callable[[], Any],
                 one_shot: bool = False) -> None:
        self.collection_path = Path(collection_path)
        self.spec = spec
        self._load_full = load_full
        self._prepack = not one_shot  # a one-shot CLI query builds the ONNX session ~0.2 s faster without it
        self._full: Any = None
        self._tower: Any = None
        self._tower_checked = False
        self._cache: Any = None
        self.sources: list[str] = []  # where each call's vectors came from (cache / tower / model)

    def _query_cache(self) -> Any:
        if self._cache is None:
            from retrieval.search.query_cache import open_query_cache

            self._cache = open_query_cache(self.collection_path, self.spec.id)
        return self._cache

    def _text_tower(self) -> Any:
        if not self._tower_checked:
            from retrieval.search.text_tower import try_load_text_tower

            self._tower = try_load_text_tower(self.collection_path, self.spec.id, prepack=self._prepack)
            self._tower_checked = True
            if self._tower is None:
                log.info("no usable text tower export in %s; using the full model "
                         "(`photodex reindex` exports it)", self.collection_path)
        return self._tower

    def full_encoder(self) -> Any:
        """The full open_clip encoder (loaded on first use), e.g. for image queries."""
        if self._full is None:
            self._full = self._load_full()
        return self._full

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        cache = self._query_cache()
        found = [cache.get(t) for t in texts]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            todo = [texts[i] for i in missing]
            tower = self._text_tower()
            if tower is not None:
                vecs, source = tower.encode_texts(todo), "tower"
            else:
                vecs, source = self.full_encoder().encode_texts(todo), "model"
            for i, v in zip(missing, vecs):
                found[i] = np.asarray(v, dtype=np.float32)
                cache.put(texts[i], found[i])
            self.sources.append(source)
        else:
            self.sources.append("cache")
        return np.stack(found).astype(np.float32, copy=False)
