"""The collection's FAISS index file: kept in step with the catalog by the writer, read by everyone.

* **Writer** (an index run or ``photodex reindex``, holding the collection's writer lock):
  :func:`refresh_index` brings ``index/vectors.faiss`` up to date with the stored vectors — by
  diff, or by a rebuild when the file is unusable (truncated, corrupted, sidecar missing) or
  its type no longer fits the collection size — and records the catalog generation it matches.
  With ``shards=N`` (``photodex reindex --shards N``, ``PHOTODEX_INDEX_SHARDS``) the index is kept
  as N files, one per photo-id range (:mod:`.sharded`); later refreshes keep that layout, rewrite
  only the shards that changed, and re-split the ranges when one outgrows the others.
* **Readers** (searches): :func:`open_index` never builds and never waits. It returns a
  :class:`SearchableIndex`: the newest complete index file plus an exact scan of the vectors
  committed after it was built (and minus the photos removed since), so results are always
  complete. Nothing is written, so a read-only collection can be searched. An unusable file is
  left for the writer; meanwhile every vector is scanned exactly (logged). A sharded index opens
  as a :class:`~.sharded.ShardedIndex` base (the same search surface); an unusable shard file
  leaves only its own range to the exact scan.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.core.atomic import atomic_write_json
from indexer.collection import Collection
from indexer.core.errors import InputError
from retrieval.scoring import top_k

from .choice import SearchParams, choose_index_spec, flat_spec
from .gpu import gpu_available
from .persistence import IndexFileError
from .sharded import ShardedIndex, shard_of
from .state import (STATE_FILE, current_index_file, index_dir, index_files, index_state, index_version, shard_layout,
                    target_shards)
from .vector_index import EXACT_SUBSET_MAX, VectorIndex

log = logging.getLogger(__name__)

MAX_SHARDS = 1024
UNBALANCED = 2.0  # re-split the id ranges when a shard holds more than this many times its share


def _prune(folder: Path, keep: set[str], previous: dict[str, Any]) -> None:
    """Delete superseded index files (and sidecars), keeping ``keep`` and the previous version's
    files, which readers may be opening right now."""
    keep = keep | set(index_files(previous))
    for path in folder.glob("vectors-*.faiss"):
        if path.name in keep:
            continue
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
def refresh_index(coll: Collection, force_rebuild: bool = False, shards: int | None = None) -> dict[str, Any]:
    """Bring the index file up to date with the catalog; returns what was done.

    Call with the collection's writer lock held: this is the only code that writes the index.
    Each version goes to a new file, then ``state.json`` is switched to it atomically, so a
    reader always finds a complete, matching pair. ``shards``: keep the index in that many
    photo-id-range shards from now on (1: one file); None keeps the collection's current layout."""
    if shards is not None and not 1 <= shards <= MAX_SHARDS:
        raise InputError(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
    folder = index_dir(coll)
    generation = coll.generation()
    state = index_state(coll)
    target = target_shards(state) if shards is None else int(shards)
    if target > 1:
        return _refresh_sharded(coll, folder, generation, state, target, force_rebuild)
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
    _prune(folder, {name}, state)
    log.info("index %s: %s", action, new_state)
    return {**new_state, "action": action}


def _load_shards_for_update(folder: Path, names: list[str]) -> list[VectorIndex] | None:
    """Every shard of the current version, verified (memory-mapped: a shard is copied into RAM only
    if it changes); None (logged) if any is unusable."""
    try:
        return [VectorIndex.load(folder / name, mmap=True) for name in names]
    except (IndexFileError, OSError) as exc:
        log.warning("index shard unusable (%s); rebuilding every shard from stored vectors", exc)
        return None


def _unbalanced(counts: list[int], target: int) -> bool:
    """A shard holds more than ``UNBALANCED`` times its share (ranges fill unevenly: new photos
    go to the last one, removals thin any), or fewer shards exist than there are photos to fill them."""
    share = -(-sum(counts) // target)
    return max(counts, default=0) > UNBALANCED * max(share, 1)


def _refresh_sharded(coll: Collection, folder: Path, generation: int, state: dict[str, Any], target: int,
                     force_rebuild: bool) -> dict[str, Any]:
    """:func:`refresh_index` for an index kept in ``target`` id-range shards.

    A diff touches only the shards whose ranges gained or lost photos; only those are written
    (under new names), the others stay the files they were, shared by both versions."""
    layout = shard_layout(state)
    same_layout = layout is not None and target_shards(state) == target
    shards: list[VectorIndex] | None = None
    if not force_rebuild and same_layout:
        shards = _load_shards_for_update(folder, layout[0])
        if shards is not None and state.get("generation") == generation:
            return {**state, "action": "up-to-date"}
    ids = coll.vector_ids()
    spec = choose_index_spec(max(len(ids), 1), coll.dim)
    action = "rebuilt"
    names: list[str | None] = list(layout[0]) if same_layout else []
    bounds = np.asarray(layout[1], np.int64) if same_layout else np.zeros(0, np.int64)
    changed: set[int] = set()
    if shards is not None and state.get("factory") == spec.factory:
        have = np.concatenate([s.ids for s in shards])
        gone, new_ids = np.setdiff1d(have, ids), np.setdiff1d(ids, have)
        for k in np.unique(shard_of(gone, bounds)).tolist():
            shards[k].remove(gone[shard_of(gone, bounds) == k])
            changed.add(k)
        if len(new_ids):  # read only the vectors the index lacks
            got, vecs = coll.load_vectors(new_ids)
            which = shard_of(got, bounds)
            for k in np.unique(which).tolist():
                shards[k].add(got[which == k], vecs[which == k])
                changed.add(k)
        counts = [len(s) for s in shards]
        action = f"updated (+{len(new_ids)} -{len(gone)})"
        if any(s.needs_rebuild for s in shards):
            shards, action = None, "rebuilt"
        elif _unbalanced(counts, target):
            log.info("shard sizes %s are uneven for %d shards: re-splitting the id ranges", counts, target)
            shards, action = None, "rebuilt (re-sharded)"
    if shards is None:
        all_ids, vecs = coll.load_vectors()
        built = ShardedIndex.build(all_ids, vecs, target, spec, threads=1)
        built.close()
        shards, bounds = [s for s in built.shards if isinstance(s, VectorIndex)], built.bounds
        names, changed = [None] * len(shards), set(range(len(shards)))
    tag = uuid.uuid4().hex[:8]
    for k in sorted(changed):
        names[k] = f"vectors-{generation}-{tag}-shard{k:04d}of{len(shards):04d}.faiss"
        shards[k].save(folder / names[k])
    counts = [len(s) for s in shards]
    new_state = {"files": names, "bounds": bounds.tolist(), "shards": target, "counts": counts,
                 "generation": generation, "factory": shards[0].spec.factory, "kind": shards[0].spec.kind,
                 "params": shards[0].spec.params, "vectors": sum(counts)}
    atomic_write_json(folder / STATE_FILE, new_state)
    _prune(folder, {n for n in names if n}, state)
    log.info("index %s (%d of %d shards written): %s", action, len(changed), len(shards), new_state)
    return {**new_state, "action": action}


# ---- readers -----------------------------------------------------------------------------------
@dataclass
class SearchableIndex:
    """A complete view for searching: ``base`` (the index file, may be None) + ``delta`` exact scan.

    ``gone`` are ids in ``base`` whose photos were removed since it was built; they are never
    returned."""

    dim: int
    base: VectorIndex | ShardedIndex | None
    delta_ids: np.ndarray
    delta_vecs: np.ndarray
    gone: np.ndarray
    generation: int
    version: str | None = None  # the index version ``base`` is (:func:`~.state.index_version`)

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


Base = VectorIndex | ShardedIndex
_cache: dict[str, tuple[tuple, SearchableIndex]] = {}
_loaded: dict[str, tuple[str, Base | None]] = {}  # key -> (version, index loaded in the background)
_loading: set[str] = set()
_cache_lock = threading.Lock()


def _complete(base: Base) -> bool:
    """Whether ``base`` holds its whole version (a sharded one may stand in for unusable shards)."""
    return not isinstance(base, ShardedIndex) or base.complete


def load_base(coll: Collection, state: dict[str, Any], reuse: Base | None = None) -> Base | None:
    """Load and verify the index version ``state`` names; None (logged) when it is unusable.

    ``reuse``: an index already loaded; the shards of a sharded version that are the same files
    are taken from it instead of being read again."""
    layout = shard_layout(state)
    if layout is not None:
        return _load_sharded(coll, layout[0], layout[1], reuse)
    index_file = current_index_file(coll, state)
    if index_file is None:
        return None
    return _load_single(coll, index_file)


def _load_sharded(coll: Collection, names: list[str], bounds: list[int], reuse: Base | None) -> ShardedIndex | None:
    """A sharded base; a shard that cannot be used stands empty (logged), so only its range is
    scanned exactly; None when no shard can be used."""
    known: dict[str, Any] = {}
    if isinstance(reuse, ShardedIndex) and reuse.names:
        known = {n: s for n, s in zip(reuse.names, reuse.shards) if n}
    use_gpu, why = gpu_available()
    shards: list[Any] = []
    loaded: list[str] = []  # "" where a shard stands empty for an unusable file
    for name in names:
        shard = known.get(name)
        if shard is None:
            try:
                # exact-subset thresholds split across shards: a filter scans as many vectors
                # exactly in all shards together as it would in one index, not that many per shard
                shard = VectorIndex.load(index_dir(coll) / name, mmap=True, vectors_lookup=_lookup(coll),
                                         exact_subset_max=max(1, EXACT_SUBSET_MAX // len(names)))
            except (IndexFileError, OSError) as exc:
                log.warning("index shard unusable (%s): searching its photos exactly until `photodex reindex` "
                            "or the next index run rebuilds it", exc)
                shards.append(VectorIndex(coll.dim, flat_spec()))
                loaded.append("")
                continue
            if use_gpu:
                shard.to_gpu()
        shards.append(shard)
        loaded.append(name)
    usable = sum(1 for n in loaded if n)
    if not usable:
        return None
    log.info("search index: %d shards (%d unusable), %s", len(shards), len(shards) - usable,
             "GPU" if use_gpu else f"CPU ({why})")
    return ShardedIndex(shards, np.asarray(bounds, np.int64), dim=coll.dim, names=loaded,
                        complete=usable == len(shards))


def _load_single(coll: Collection, index_file: Path) -> VectorIndex | None:
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


def _load_in_background(key: str, coll: Collection, state: dict[str, Any], reuse: Base | None) -> None:
    """Load a new index version off the search path; the next ``open_index`` swaps it in."""
    with _cache_lock:
        if key in _loading:
            return
        _loading.add(key)
    version = index_version(state)

    def work() -> None:
        try:
            base = load_base(coll, state, reuse)
            with _cache_lock:
                _loaded[key] = (version, base)
        finally:
            with _cache_lock:
                _loading.discard(key)

    threading.Thread(target=work, name="photodex-index-load", daemon=True).start()


def clear_cache() -> None:
    """Forget every index view and background load this process holds: the next ``open_index`` of each
    collection reads its index file again (after a collection's files were changed behind this process's back)."""
    with _cache_lock:
        _cache.clear()
        _loaded.clear()


def with_delta(coll: Collection, base: Base | None, base_current: bool, generation: int,
               previous: SearchableIndex | None = None, version: str | None = None) -> SearchableIndex:
    """The complete view at ``generation``: ``base`` plus an exact scan of the vectors committed after it
    (minus the photos removed since). ``base_current``: ``base`` is the version built at ``generation``
    (then nothing is read when it is complete); ``previous``: a view whose delta over the same base is
    reused, so only vectors committed since it are read."""
    if base is not None and base_current and _complete(base):
        return SearchableIndex(coll.dim, base, np.zeros(0, np.int64), np.zeros((0, coll.dim), np.float32),
                               np.zeros(0, np.int64), generation, version)
    ids = coll.vector_ids()
    have = base.ids if base is not None else np.zeros(0, np.int64)
    new_ids, gone = np.setdiff1d(ids, have), np.setdiff1d(have, ids)
    known_ids, known_vecs = np.zeros(0, np.int64), np.zeros((0, coll.dim), np.float32)
    if previous is not None and previous.base is base and len(previous.delta_ids):  # keep the delta already read
        keep = np.isin(previous.delta_ids, new_ids)
        known_ids, known_vecs = previous.delta_ids[keep], previous.delta_vecs[keep]
    to_read = np.setdiff1d(new_ids, known_ids)
    read_ids, read_vecs = coll.load_vectors(to_read) if len(to_read) else (to_read, known_vecs[:0])
    delta_ids = np.concatenate([known_ids, read_ids])
    delta_vecs = np.concatenate([known_vecs, read_vecs])
    if len(delta_ids):
        log.info("searching %d vectors committed after the index file exactly", len(delta_ids))
    return SearchableIndex(coll.dim, base, delta_ids, delta_vecs, gone, generation, version)


def open_index(coll: Collection) -> SearchableIndex:
    """A complete searchable view of ``coll``; never builds, never waits, writes nothing.

    Cached per process by (index file, catalog generation). When the writer switches to a new
    index version, a process that already searches keeps using the version it has (plus an exact
    scan of what it lacks) while the new one loads in a background thread, so no search pays
    for loading and verifying it."""
    generation = coll.generation()
    state = index_state(coll)
    version = index_version(state)
    key = str(coll.path.resolve())
    ident = (version, generation)
    with _cache_lock:
        hit = _cache.get(key)
        ready = _loaded.get(key)
    if hit and hit[0] == ident:
        return hit[1]
    base: Base | None = None
    base_name: str | None = None
    if hit and hit[0][0] == ident[0] and hit[1].base is not None:
        base, base_name = hit[1].base, ident[0]  # same file, newer catalog: reuse the loaded index
    elif version is not None and ready is not None and ready[0] == version:
        base, base_name = ready[1], ready[0]  # the new version, loaded in the background
        with _cache_lock:
            _loaded.pop(key, None)
    elif version is not None and hit and hit[1].base is not None:
        _load_in_background(key, coll, state, hit[1].base)
        base, base_name = hit[1].base, hit[0][0]  # meanwhile: the version we have + an exact delta
    elif version is not None:
        base, base_name = load_base(coll, state), version
    else:
        log.info("no index file yet: searching every stored vector exactly")
    view = with_delta(coll, base, base_name == ident[0] and state.get("generation") == generation, generation,
                      hit[1] if hit else None, base_name if base is not None else None)
    with _cache_lock:
        _cache[key] = ((base_name, generation), view)
    return view
