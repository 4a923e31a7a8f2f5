"""The collection's FAISS index: a derived artefact kept in step with the catalog's stored vectors.

The catalog's vector *generation* counter changes whenever vectors are added or removed; the
index records the generation it was built from and is brought up to date (by diff, or rebuilt
when its type no longer fits the collection size) before it is used.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from indexer.atomic import atomic_write_json
from indexer.collection import Collection

from .index_choice import choose_index_spec
from .vector_index import VectorIndex, gpu_available

log = logging.getLogger(__name__)

INDEX_DIR = "index"
INDEX_FILE = "vectors.faiss"
STATE_FILE = "state.json"

_cache: dict[str, tuple[int, VectorIndex]] = {}
_cache_lock = threading.Lock()


def _paths(coll: Collection) -> tuple[Path, Path]:
    folder = coll.path / INDEX_DIR
    return folder / INDEX_FILE, folder / STATE_FILE


def index_state(coll: Collection) -> dict[str, Any]:
    """What the index file was built from (generation, type, parameters); empty if none yet."""
    _, state_path = _paths(coll)
    try:
        return json.loads(state_path.read_text())
    except (OSError, ValueError):
        return {}


def _lookup(coll: Collection):  # noqa: ANN202 - returns the VectorsLookup callable
    def lookup(ids: np.ndarray) -> np.ndarray:
        got, vecs = coll.vectors_in_order(ids)
        if len(got) != len(ids):
            raise KeyError(f"{len(ids) - len(got)} of the requested photo ids have no stored vector")
        return vecs

    return lookup


def refresh_index(coll: Collection, force_rebuild: bool = False) -> dict[str, Any]:
    """Bring the index file up to date with the catalog; returns what was done."""
    index_path, state_path = _paths(coll)
    generation = coll.catalog.generation()
    state = index_state(coll)
    if not force_rebuild and state.get("generation") == generation and index_path.exists():
        return {**state, "action": "up-to-date"}
    ids = coll.vector_ids()
    spec = choose_index_spec(max(len(ids), 1), coll.dim)
    action = "rebuilt"
    index: VectorIndex | None = None
    if not force_rebuild and index_path.exists() and state.get("factory") == spec.factory:
        try:
            index = VectorIndex.load(index_path, mmap=False)
            have = index.ids
            gone = np.setdiff1d(have, ids)
            new_ids = np.setdiff1d(ids, have)
            if len(gone):
                index.remove(gone)
            if len(new_ids):  # read only the vectors the index lacks
                got, vecs = coll.load_vectors(new_ids)
                index.add(got, vecs)
            action = f"updated (+{len(new_ids)} -{len(gone)})"
            if index.needs_rebuild:
                index = None
        except Exception as exc:  # noqa: BLE001 - a broken derived file is rebuilt, never fatal
            log.warning("index file unusable (%s); rebuilding from stored vectors", exc)
            index = None
    if index is None:
        action = "rebuilt"
        ids, vecs = coll.load_vectors()
        index = VectorIndex.build(ids, vecs, spec) if len(ids) else VectorIndex(coll.dim, spec)
    index.save(index_path)
    new_state = {"generation": generation, "factory": index.spec.factory, "kind": index.spec.kind,
                 "params": index.spec.params, "vectors": len(index)}
    atomic_write_json(state_path, new_state)
    log.info("index %s: %s", action, new_state)
    return {**new_state, "action": action}


def open_index(coll: Collection) -> VectorIndex:
    """The up-to-date index of ``coll`` (memory-mapped), cached per process by generation."""
    generation = coll.catalog.generation()
    key = str(coll.path.resolve())
    with _cache_lock:
        hit = _cache.get(key)
        if hit and hit[0] == generation:
            return hit[1]
        refresh_index(coll)
        index_path, _ = _paths(coll)
        index = VectorIndex.load(index_path, mmap=True, vectors_lookup=_lookup(coll))
        use_gpu, why = gpu_available()
        if use_gpu:
            index.to_gpu()
        log.info("search index %s: %s", index.spec.factory, "GPU" if use_gpu else f"CPU ({why})")
        _cache[key] = (generation, index)
        return index
