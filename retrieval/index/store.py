"""The collection's FAISS index file: kept in step with the catalog by the writer, read by everyone.

* **Writer** (an index run or ``photodex reindex``, holding the collection's writer lock):
  :func:`refresh_index` brings ``index/vectors.faiss`` up to date with the stored vectors — by
  diff, or by a rebuild when the file is unusable (truncated, corrupted, sidecar missing) or
  its type no longer fits the collection size — and records the catalog generation it matches.
* **Readers** (searches): :func:`open_index` never builds and never waits. It returns a
  :class:`SearchableIndex`: the newest complete index file plus an exact scan of the vectors
  committed after it was built (and minus the photos removed since), so results are always
  complete. Nothing is written, so a read-only collection can be searched. An unusable file is
  left for the writer; meanwhile every vector is scanned exactly (logged).
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.atomic import atomic_write_json
from indexer.collection import Collection
from retrieval.scoring import top_k

from .choice import SearchParams, choose_index_spec
from .gpu import gpu_available
from .persistence import IndexFileError
from .state import STATE_FILE, current_index_file, index_dir, index_state
from .vector_index import VectorIndex

log = logging.getLogger(__name__)

KEEP_OLD_FILES = 1  # superseded index files kept for readers that are just opening them


def _prune(folder: Path, keep: set[str]) -> None:
    """Delete superseded index files (and sidecars), keeping ``keep`` and the newest few others."""
    old = sorted((p for p in folder.glob("vectors-*.faiss") if p.name not in keep),
                 key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for path in old[KEEP_OLD_FILES:]:
        for victim in (path, VectorIndex.sidecar_path(path)):
            try:
                victim.unlink()
            except FileNotFoundError:
                pass


def _lookup(coll: Collection):  # noqa: ANN202 - returns a VectorsLookup
    def lookup(ids: np.ndarray) -> np.ndarray:
        got, vecs = coll.vectors_in_order(ids)
        if len(got) != len(ids):
            raise KeyError(f"{len(ids) - len(got)} of the requested photo ids have no stored vector")
        return vecs

    return lookup


# ---- writer ------------------------------------------------------------------------------------
def refresh_index(coll: Collection, force_rebuild: bool = False) -> dict[str, Any]:
    """Bring the index file up to date with the catalog; returns what was done.

    Call with the collection's writer lock held: this is the only code that writes the index.
    Each version goes to a new file, then ``state.json`` is switched to it atomically, so a
    reader always finds a complete, matching pair."""
    folder = index_dir(coll)
    generation = coll.catalog.generation()
    state = index_state(coll)
    current = current_index_file(coll, state)
    if not force_rebuild and state.get("generation") == generation and current is not None:
        try:
            VectorIndex.load(current, mmap=True)  # verifies size and checksums
            return {**state, "action": "up-to-date"}
        except (IndexFileError, OSError) as exc:
            log.warning("index file unusable (%s); rebuilding from stored vectors", exc)
    ids = coll.vector_ids()
    spec = choose_index_spec(max(len(ids), 1), coll.dim)
    index: VectorIndex | None = None
    action = "rebuilt"
    if not force_rebuild and current is not None and state.get("factory") == spec.factory:
        try:
            index = VectorIndex.load(current, mmap=False)
        except (IndexFileError, OSError) as exc:
            log.warning("index file unusable (%s); rebuilding from stored vectors", exc)
        if index is not None:
            have = index.ids
            gone, new_ids = np.setdiff1d(have, ids), np.setdiff1d(ids, have)
            if len(gone):
                index.remove(gone)
            if len(new_ids):  # read only the vectors the index lacks
                got, vecs = coll.load_vectors(new_ids)
                index.add(got, vecs)
            action = f"updated (+{len(new_ids)} -{len(gone)})"
            if index.needs_rebuild:
                index, action = None, "rebuilt"
    if index is None:
        all_ids, vecs = coll.load_vectors()
        index = VectorIndex.build(all_ids, vecs, spec) if len(all_ids) else VectorIndex(coll.dim, spec)
    name = f"vectors-{generation}-{uuid.uuid4().hex[:8]}.faiss"
    index.save(folder / name)
    new_state = {"file": name, "generation": generation, "factory": index.spec.factory, "kind": index.spec.kind,
                 "params": index.spec.params, "vectors": len(index)}
    atomic_write_json(folder / STATE_FILE, new_state)
    _prune(folder, {name})
    log.info("index %s: %s", action, new_state)
    return {**new_state, "action": action}


# ---- readers -----------------------------------------------------------------------------------
@dataclass
class SearchableIndex:
    """A complete view for searching: ``base`` (the index file, may be None) + ``delta`` exact scan.

    ``gone`` are ids in ``base`` whose photos were removed since it was built; they are never
    returned."""

    dim: int
    base: VectorIndex | None
    delta_ids: np.ndarray
    delta_vecs: np.ndarray
    gone: np.ndarray
    generation: int

    def __post_init__(self) -> None:
        base_ids = self.base.ids if self.base is not None else np.zeros(0, np.int64)
        self._ids = np.union1d(np.setdiff1d(base_ids, self.gone, assume_unique=True), self.delta_ids)

    @property
    def ids(self) -> np.ndarray:
        """Sorted searchable photo ids."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def exact_rows(self) -> int:
        """How many vectors each query scans exactly (those committed after the index file)."""
        return len(self.delta_ids)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Unit vectors of searchable ids, in the order given, from memory (index + delta)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), np.float32)
        in_delta = np.isin(ids, self.delta_ids)
        if in_delta.any():
            order = np.argsort(self.delta_ids)
            out[in_delta] = self.delta_vecs[order[np.searchsorted(self.delta_ids, ids[in_delta], sorter=order)]]
        if (~in_delta).any():
            if self.base is None:
                raise KeyError("ids outside the searchable set")
            out[~in_delta] = self.base.reconstruct(ids[~in_delta])
        return out

    def search(self, queries: np.ndarray, k: int, *, params: SearchParams | None = None,
               allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) over base + delta, like :meth:`VectorIndex.search`."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        parts_s, parts_i = [], []
        if self.base is not None and len(self.base):
            base_allowed = None
            if allowed_ids is not None:
                base_allowed = np.setdiff1d(np.asarray(allowed_ids, np.int64), self.gone)
            fetch = k + len(self.gone) if base_allowed is None else k
            if base_allowed is None or len(base_allowed):
                s, i = self.base.search(q, fetch, params=params, allowed_ids=base_allowed)
                if len(self.gone):
                    s = np.where(np.isin(i, self.gone), -np.inf, s)
                    i = np.where(np.isin(i, self.gone), -1, i)
                parts_s.append(s)
                parts_i.append(i)
        if len(self.delta_ids):
            rows = np.arange(len(self.delta_ids))
            if allowed_ids is not None:
                rows = rows[np.isin(self.delta_ids, allowed_ids)]
            if len(rows):
                idx, vals = top_k(q @ self.delta_vecs[rows].T, k, self.delta_ids[rows], pad=True)
                parts_s.append(vals)
                parts_i.append(idx)
        if not parts_s:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        scores, ids = np.concatenate(parts_s, 1), np.concatenate(parts_i, 1)
        pos, vals = top_k(scores, k, pad=True)
        out_i = np.take_along_axis(ids, np.maximum(pos, 0), 1)
        out_i[pos < 0] = -1
        out_i[~np.isfinite(vals)] = -1
        return vals.astype(np.float32), out_i


_cache: dict[str, tuple[tuple, SearchableIndex]] = {}
_loaded: dict[str, tuple[str, VectorIndex | None]] = {}  # key -> (file name, index loaded in the background)
_loading: set[str] = set()
_cache_lock = threading.Lock()


def _load_base(coll: Collection, index_file: Path) -> VectorIndex | None:
    """Load and verify an index file; None (logged) when it is unusable."""
    try:
        base = VectorIndex.load(index_file, mmap=True, vectors_lookup=_lookup(coll))
    except (IndexFileError, OSError) as exc:
        log.warning("index file unusable (%s): searching every stored vector exactly until "
                    "`photodex reindex` or the next index run rebuilds it", exc)
        return None
    use_gpu, why = gpu_available()
    if use_gpu:
        base.to_gpu()
    log.info("search index %s: %s", base.spec.factory, "GPU" if use_gpu else f"CPU ({why})")
    return base


def _load_in_background(key: str, coll: Collection, index_file: Path) -> None:
    """Load a new index version off the search path; the next ``open_index`` swaps it in."""
    with _cache_lock:
        if key in _loading:
            return
        _loading.add(key)

    def work() -> None:
        try:
            base = _load_base(coll, index_file)
            with _cache_lock:
                _loaded[key] = (index_file.name, base)
        finally:
            with _cache_lock:
                _loading.discard(key)

    threading.Thread(target=work, name="photodex-index-load", daemon=True).start()


def open_index(coll: Collection) -> SearchableIndex:
    """A complete searchable view of ``coll``; never builds, never waits, writes nothing.

    Cached per process by (index file, catalog generation). When the writer switches to a new
    index version, a process that already searches keeps using the version it has (plus an exact
    scan of what it lacks) while the new one loads in a background thread, so no search pays
    for loading and verifying it."""
    generation = coll.catalog.generation()
    state = index_state(coll)
    index_file = current_index_file(coll, state)
    key = str(coll.path.resolve())
    ident = (index_file.name if index_file else None, generation)
    with _cache_lock:
        hit = _cache.get(key)
        ready = _loaded.get(key)
    if hit and hit[0] == ident:
        return hit[1]
    base: VectorIndex | None = None
    base_name: str | None = None
    if hit and hit[0][0] == ident[0] and hit[1].base is not None:
        base, base_name = hit[1].base, ident[0]  # same file, newer catalog: reuse the loaded index
    elif index_file is not None and ready is not None and ready[0] == index_file.name:
        base, base_name = ready[1], ready[0]  # the new version, loaded in the background
        with _cache_lock:
            _loaded.pop(key, None)
    elif index_file is not None and hit and hit[1].base is not None:
        _load_in_background(key, coll, index_file)
        base, base_name = hit[1].base, hit[0][0]  # meanwhile: the version we have + an exact delta
    elif index_file is not None:
        base, base_name = _load_base(coll, index_file), index_file.name
    else:
        log.info("no index file yet: searching every stored vector exactly")
    if base is not None and base_name == ident[0] and state.get("generation") == generation:
        delta_ids, delta_vecs, gone = np.zeros(0, np.int64), np.zeros((0, coll.dim), np.float32), np.zeros(0, np.int64)
    else:
        ids = coll.vector_ids()
        have = base.ids if base is not None else np.zeros(0, np.int64)
        new_ids, gone = np.setdiff1d(ids, have), np.setdiff1d(have, ids)
        known_ids, known_vecs = np.zeros(0, np.int64), np.zeros((0, coll.dim), np.float32)
        if hit and hit[1].base is base and len(hit[1].delta_ids):  # keep the delta already read
            keep = np.isin(hit[1].delta_ids, new_ids)
            known_ids, known_vecs = hit[1].delta_ids[keep], hit[1].delta_vecs[keep]
        to_read = np.setdiff1d(new_ids, known_ids)
        read_ids, read_vecs = coll.load_vectors(to_read) if len(to_read) else (to_read, known_vecs[:0])
        delta_ids = np.concatenate([known_ids, read_ids])
        delta_vecs = np.concatenate([known_vecs, read_vecs])
        if len(delta_ids):
            log.info("searching %d vectors committed after the index file exactly", len(delta_ids))
    view = SearchableIndex(coll.dim, base, delta_ids, delta_vecs, gone, generation)
    with _cache_lock:
        _cache[key] = ((base_name, generation), view)
    return view
