"""``VectorIndex``: a FAISS index over int64 photo ids — build / add / remove / rebuild / search / save / load.

Pure arrays in, arrays out. Vectors are float32 and L2-normalised, so scores are cosines.

Id handling:
* ``flat`` and ``hnsw`` are wrapped in ``IndexIDMap2``; searches go to the inner index with a
  bitmap selector over *internal* positions, translated to photo ids with the id map. Flat
  removes natively; HNSW cannot, so removed/replaced entries become tombstones excluded by
  the selector (``needs_rebuild`` once they exceed ``rebuild_fraction``; ``rebuild()``).
* ``ivf`` stores photo ids natively (hash-table direct map, so vectors can be reconstructed).

Filtering (``allowed_ids``): the allowed set is applied *inside* the faiss search with an
``IDSelector`` and ``SearchParameters*`` built per call (the shared index's nprobe/efSearch are
never mutated). Rows that come back short of ``min(k, |allowed|)`` are retried with a wider
nprobe/efSearch. When the allowed set is tiny (``<= max(exact_subset_max,
exact_subset_fraction * len)``) the search is exact over just those vectors, fetched by
``vectors_lookup(ids) -> (m, dim)`` (per call or constructor; e.g. the catalog's embedding
store, giving exact scores) or, by default, reconstructed from the index (exact for ``Flat``
storage, SQ8-decoded otherwise).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from indexer.core.atomic import atomic_write_via_path
from retrieval.scoring import top_k

from . import persistence
from .choice import IndexSpec, SearchParams, choose_index_spec
from .gpu import mirror_to_gpu
from .locking import RWLock
from .selectors import as_ids, as_matrix, bitmap_selector, id_selector, live_members

__all__ = ["VectorIndex", "VectorsLookup"]

log = logging.getLogger(__name__)

VectorsLookup = Callable[[np.ndarray], np.ndarray]
_MAX_EF = 4096
EXACT_SUBSET_MAX = 4096  # filtered searches over at most this many ids are scored exactly


class VectorIndex:
    """Thread-safe (RW-locked) FAISS index keyed by int64 photo ids; see module docstring."""

    def __init__(self, dim: int, spec: IndexSpec, *, vectors_lookup: VectorsLookup | None = None,
                 exact_subset_max: int = EXACT_SUBSET_MAX, exact_subset_fraction: float = 0.02,
                 rebuild_fraction: float = 0.2, _index: faiss.Index | None = None) -> None:
        self.dim = int(dim)
        self._spec = spec
        self.vectors_lookup = vectors_lookup
        self.exact_subset_max = exact_subset_max
        self.exact_subset_fraction = exact_subset_fraction
        self.rebuild_fraction = rebuild_fraction
        self._lock = RWLock()
        self._journal: list[tuple[str, np.ndarray, np.ndarray | None]] | None = None  # set during rebuild()
        self._mmapped = False
        self._gpu: faiss.Index | None = None
        self._gpu_res = None
        self._index = _index if _index is not None else self._new_faiss_index()
        self._dead = np.zeros(0, dtype=bool)  # tombstones by internal position (hnsw)
        self._refresh()

    # ---------------------------------------------------------------- construction
    def _new_faiss_index(self) -> faiss.Index:
        spec, ip = self._spec, faiss.METRIC_INNER_PRODUCT
        if spec.kind == "ivf":
            index = faiss.index_factory(self.dim, spec.factory, ip)
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
            index.nprobe = int(spec.params.get("nprobe", 16))  # stored default only
            return index
        index = faiss.index_factory(self.dim, f"IDMap2,{spec.factory}", ip)
        if spec.kind == "hnsw":
            inner = faiss.downcast_index(index.index)
            inner.hnsw.efConstruction = int(spec.params.get("ef_construction", 80))
            inner.hnsw.efSearch = int(spec.params.get("ef_search", 64))
        return index

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, spec: IndexSpec | None = None, *,
              chunk_size: int = 65_536, seed: int = 0, **kwargs) -> "VectorIndex":
        """Create, train (IVF: on a bounded random sample) and fill an index in chunks.

        ``vectors`` may be a ``np.memmap``; only one chunk is converted/copied at a time."""
        ids = as_ids(ids)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError("ids and vectors must have matching lengths")
        spec = spec or choose_index_spec(len(ids), vectors.shape[1])
        vi = cls(vectors.shape[1], spec, **kwargs)
        if not vi._index.is_trained:  # IVF centroids and/or SQ ranges
            n_train = min(len(ids), int(spec.params.get("train_size", 100_000)))
            rows = np.sort(np.random.default_rng(seed).choice(len(ids), n_train, replace=False))
            vi.train(vectors[rows])
        vi.add(ids, vectors, chunk_size=chunk_size)
        return vi

    def train(self, sample: np.ndarray) -> None:
        """Train IVF centroids / SQ ranges on a sample (no-op for trained indexes)."""
        with self._lock.write():
            self._ensure_writable()
            if not self._index.is_trained:
                x = as_matrix(sample, self.dim)
                log.info("training %s on %d vectors", self._spec.factory, len(x))
                self._index.train(x)

    # ---------------------------------------------------------------- properties
    @property
    def spec(self) -> IndexSpec:
        return self._spec

    @property
    def ntotal(self) -> int:
        """Vectors stored in faiss, tombstoned ones included."""
        return int(self._index.ntotal)

    def __len__(self) -> int:
        """Live (searchable) vectors."""
        return len(self._live_ids)

    @property
    def ids(self) -> np.ndarray:
        """Sorted live photo ids (copy)."""
        return self._live_ids.copy()

    @property
    def num_tombstones(self) -> int:
        return int(self._dead.sum())

    @property
    def needs_rebuild(self) -> bool:
        return self.num_tombstones > self.rebuild_fraction * max(1, self.ntotal)

    @property
    def is_mmapped(self) -> bool:
        return self._mmapped

    @property
    def _mapped(self) -> bool:
        return self._spec.kind in ("flat", "hnsw")

    def _inner(self) -> faiss.Index:
        return faiss.downcast_index(self._index.index)

    def _refresh(self) -> None:
        """Recompute id maps after a mutation (O(n log n))."""
        self._gpu = None
        if self._mapped:
            self._labels = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            if len(self._dead) != len(self._labels):
                dead = np.zeros(len(self._labels), dtype=bool)
                dead[: min(len(self._dead), len(dead))] = self._dead[: len(dead)]
                self._dead = dead
            pos = np.flatnonzero(~self._dead)
            order = np.argsort(self._labels[pos], kind="stable")
            self._live_internal = pos[order]
            self._live_ids = self._labels[self._live_internal]
            self._live_bitmap = None
        elif not hasattr(self, "_live_ids"):
            self._live_ids = self._ivf_ids()

    def _ivf_ids(self) -> np.ndarray:
        invlists = faiss.extract_index_ivf(self._index).invlists
        parts = [faiss.rev_swig_ptr(invlists.get_ids(l), invlists.list_size(l)).copy()
                 for l in range(invlists.nlist) if invlists.list_size(l)]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    # ---------------------------------------------------------------- mutation
    def _ensure_writable(self) -> None:
        """Copy an mmapped (read-only) index into memory before mutating it."""
        if not self._mmapped:
            return
        log.info("copying memory-mapped index into RAM before mutation")
        if self._spec.kind == "ivf":
            ivf = faiss.extract_index_ivf(self._index)
            src = ivf.invlists
            dst = faiss.ArrayInvertedLists(src.nlist, src.code_size)
            for l in range(src.nlist):
                if src.list_size(l):
                    dst.add_entries(l, src.list_size(l), src.get_ids(l), src.get_codes(l))
            ivf.replace_invlists(dst, True)
            dst.this.disown()
        else:
            self._index = faiss.deserialize_index(faiss.serialize_index(self._index))
        self._mmapped = False

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, chunk_size: int = 65_536) -> None:
        """Add (or replace: upsert) vectors by photo id, in chunks."""
        ids = as_ids(ids)
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors must have matching lengths")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("duplicate ids in one add() call")
        if len(ids) == 0:
            return
        probe = as_matrix(vectors[: min(256, len(ids))], self.dim)
        if np.abs(np.linalg.norm(probe, axis=1) - 1).max() > 1e-2:
            log.warning("vectors are not L2-normalised; inner-product scores are not cosines")
        with self._lock.write():
            self._ensure_writable()
            if not self._index.is_trained:
                raise RuntimeError(f"{self._spec.factory} must be trained before add()")
            existing = live_members(ids, self._live_ids)
            if len(existing):
                self._remove_locked(existing)
            for s in range(0, len(ids), chunk_size):
                self._index.add_with_ids(as_matrix(vectors[s:s + chunk_size], self.dim),
                                         ids[s:s + chunk_size])
            if not self._mapped:
                self._live_ids = np.union1d(self._live_ids, ids)
            self._refresh()
            if self._journal is not None:
                self._journal.append(("add", ids.copy(), np.array(vectors, dtype=np.float32, copy=True)))

    def remove(self, ids: np.ndarray) -> int:
        """Remove by photo id; returns how many were live. HNSW: tombstones."""
        ids = as_ids(ids)
        with self._lock.write():
            n = self._remove_locked(live_members(ids, self._live_ids))
            self._refresh()
            if self._journal is not None:
                self._journal.append(("remove", ids.copy(), None))
            return n

    def _remove_locked(self, ids: np.ndarray) -> int:
        if not len(ids):
            return 0
        if self._spec.kind == "hnsw":
            self._dead[self._live_internal[np.searchsorted(self._live_ids, ids)]] = True
        else:
            self._ensure_writable()
            sel_cls = faiss.IDSelectorBatch if self._mapped else faiss.IDSelectorArray  # hash direct map
            self._index.remove_ids(sel_cls(len(ids), faiss.swig_ptr(ids)))
            if not self._mapped:
                self._live_ids = np.setdiff1d(self._live_ids, ids, assume_unique=True)
        return len(ids)

    def rebuild(self, vectors_lookup: VectorsLookup | None = None, *, chunk_size: int = 65_536) -> None:
        """Rebuild from live vectors (drops HNSW tombstones). Vectors from the lookup, else the index.

        The build runs outside the lock, so searches go on meanwhile; adds and removes made during
        it are journaled and replayed on the fresh index before it is swapped in, so none is lost."""
        with self._lock.write():
            if self._journal is not None:
                raise RuntimeError("rebuild() is already running on this index")
            self._journal = []
            ids = self._live_ids.copy()
        try:
            with self._lock.read():
                vecs = np.concatenate([self._vectors(ids[s:s + chunk_size], vectors_lookup)
                                       for s in range(0, len(ids), chunk_size)] or
                                      [np.zeros((0, self.dim), np.float32)])
            fresh = (VectorIndex.build(ids, vecs, self._spec, chunk_size=chunk_size) if len(ids)
                     else VectorIndex(self.dim, self._spec))
            with self._lock.write():
                for op, op_ids, op_vecs in self._journal:
                    if op == "add":
                        fresh.add(op_ids, op_vecs, chunk_size=chunk_size)
                    else:
                        fresh.remove(op_ids)
                self._index, self._dead, self._mmapped = fresh._index, fresh._dead, False
                self._live_ids = fresh._live_ids
                self._refresh()
                self._journal = None
        finally:
            if self._journal is not None:
                with self._lock.write():
                    self._journal = None

    # ---------------------------------------------------------------- search
    def _defaults(self, params: SearchParams | None) -> SearchParams:
        p = self._spec.params
        params = params or SearchParams()
        return SearchParams(nprobe=params.nprobe or p.get("nprobe"),
                            ef_search=params.ef_search or p.get("ef_search"))

    def _selector(self, allowed: np.ndarray | None) -> tuple[faiss.IDSelector | None, object]:
        if self._mapped:
            if allowed is not None:
                pos = self._live_internal[np.searchsorted(self._live_ids, allowed)]
                return bitmap_selector(pos, self.ntotal)
            if self.num_tombstones:
                if self._live_bitmap is None:
                    self._live_bitmap = bitmap_selector(self._live_internal, self.ntotal)
                return self._live_bitmap
            return None, None
        if allowed is None:
            return None, None
        return id_selector(allowed)

    def _faiss_search(self, q: np.ndarray, k: int, sp: SearchParams,
                      sel: faiss.IDSelector | None) -> tuple[np.ndarray, np.ndarray]:
        kind = self._spec.kind
        if kind == "ivf":
            if self._gpu is not None and sel is None:
                try:
                    return self._gpu.search(q, k, params=faiss.SearchParametersIVF(nprobe=sp.nprobe))
                except RuntimeError as e:  # pragma: no cover - GPU only
                    log.warning("GPU search failed (%s); using CPU", e)
            fp = faiss.SearchParametersIVF(nprobe=int(sp.nprobe or 16))
            if sel is not None:
                fp.sel = sel
            return self._index.search(q, k, params=fp)
        if kind == "hnsw":
            fp = faiss.SearchParametersHNSW(efSearch=max(int(sp.ef_search or 64), k))
        else:
            fp = faiss.SearchParameters()
        if sel is not None:
            fp.sel = sel
        target = self._gpu if (self._gpu is not None and sel is None) else self._inner()
        d, i = target.search(q, k, params=fp if sel is not None or kind == "hnsw" else None)
        return d, np.where(i >= 0, self._labels[np.maximum(i, 0)], -1)

    def _widen(self, sp: SearchParams) -> SearchParams | None:
        if self._spec.kind == "ivf":
            nlist = int(self._spec.params.get("nlist", 1))
            return None if (sp.nprobe or 1) >= nlist else SearchParams(nprobe=min(nlist, (sp.nprobe or 1) * 4))
        if self._spec.kind == "hnsw":
            return None if (sp.ef_search or 64) >= _MAX_EF else SearchParams(ef_search=min(_MAX_EF, (sp.ef_search or 64) * 4))
        return None

    def _vectors(self, ids: np.ndarray, lookup: VectorsLookup | None) -> np.ndarray:
        lookup = lookup or self.vectors_lookup
        if lookup is not None:
            return as_matrix(lookup(ids), self.dim)
        return self._reconstruct_locked(ids)

    def _reconstruct_locked(self, ids: np.ndarray) -> np.ndarray:
        if self._mapped:
            pos = self._live_internal[np.searchsorted(self._live_ids, ids)]
            return self._inner().reconstruct_batch(pos)
        return self._index.reconstruct_batch(ids)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The index's own copies of live vectors by photo id (exact for Flat storage, SQ8-decoded
        otherwise): no catalog read, for work such as near-duplicate collapse."""
        with self._lock.read():
            return self._reconstruct_locked(as_ids(ids))

    def _exact_subset(self, q: np.ndarray, k: int, ids: np.ndarray,
                      lookup: VectorsLookup | None) -> tuple[np.ndarray, np.ndarray]:
        idx, vals = top_k(q @ self._vectors(ids, lookup).T, k, ids, pad=True)
        return vals, idx

    def search(self, queries: np.ndarray, k: int, *, params: SearchParams | None = None,
               allowed_ids: np.ndarray | None = None,
               vectors_lookup: VectorsLookup | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product. Returns (scores float32 [nq,k] (-inf pad), ids int64 [nq,k] (-1 pad)).

        ``params`` are applied per call; ``allowed_ids`` restricts results to that subset."""
        q = as_matrix(queries, self.dim)
        nq = len(q)
        out_s = np.full((nq, k), -np.inf, dtype=np.float32)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        if k <= 0 or nq == 0:
            return out_s[:, :0], out_i[:, :0]
        with self._lock.read():
            allowed = None
            if allowed_ids is not None:
                allowed = live_members(as_ids(allowed_ids), self._live_ids)
                if not len(allowed):
                    return out_s, out_i
                limit = max(self.exact_subset_max, int(self.exact_subset_fraction * len(self)))
                if len(allowed) <= limit:
                    return self._exact_subset(q, k, allowed, vectors_lookup)
            if not len(self._live_ids):
                return out_s, out_i
            expected = min(k, len(allowed) if allowed is not None else len(self))
            sel, _keep = self._selector(allowed)
            sp = self._defaults(params)
            d, i = self._faiss_search(q, k, sp, sel)
            short = (i >= 0).sum(axis=1) < expected
            while short.any() and (sp := self._widen(sp)) is not None:
                d[short], i[short] = self._faiss_search(q[short], k, sp, sel)
                short = (i >= 0).sum(axis=1) < expected
            subset = allowed if allowed is not None else self._live_ids
            if short.any() and len(subset) <= 16 * max(self.exact_subset_max, 65_536):
                log.debug("%d queries short after widening; exact fallback", int(short.sum()))
                d[short], i[short] = self._exact_subset(q[short], k, subset, vectors_lookup)
            elif short.any():
                log.warning("%d queries returned < %d results (too many tombstones? rebuild())",
                            int(short.sum()), expected)
        d = d.astype(np.float32, copy=False)
        d[i < 0] = -np.inf
        return d, i

    # ---------------------------------------------------------------- GPU
    def to_gpu(self, device: int = 0) -> bool:
        """Mirror a Flat/IVF index on the GPU for unfiltered searches. False (logged) if not possible."""
        if self._spec.kind == "hnsw":
            log.info("using CPU FAISS: HNSW has no GPU implementation")
            return False
        with self._lock.write():
            mirrored = mirror_to_gpu(self._inner() if self._mapped else self._index, device)
            if mirrored is None:
                return False
            self._gpu, self._gpu_res = mirrored  # pragma: no cover - GPU only
        log.info("index mirrored on GPU %d (filtered searches stay on CPU)", device)  # pragma: no cover
        return True  # pragma: no cover

    # ---------------------------------------------------------------- persistence
    @staticmethod
    def sidecar_path(path: str | os.PathLike) -> Path:
        return persistence.sidecar_path(path)

    def save(self, path: str | os.PathLike) -> dict:
        """Atomically write the index, then its JSON sidecar (spec, counts, tombstones, checksums)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock.write():
            if self._mmapped and self._spec.kind == "ivf":
                self._ensure_writable()  # on-disk invlists would be written by reference
            atomic_write_via_path(path, lambda tmp: faiss.write_index(self._index, tmp))
            meta = {"format": persistence.FORMAT, "spec": self._spec.to_dict(), "dim": self.dim,
                    "ntotal": self.ntotal, "count": len(self),
                    "tombstones": np.flatnonzero(self._dead).tolist(),
                    "index_bytes": path.stat().st_size, "block": persistence.BLOCK,
                    "crc32": persistence.block_checksums(path)}
            atomic_write_via_path(self.sidecar_path(path),
                                  lambda tmp: Path(tmp).write_text(json.dumps(meta)))
        log.info("saved %s (%d vectors, %d tombstones) to %s", self._spec.factory, self.ntotal,
                 len(meta["tombstones"]), path)
        return meta

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, *, verify: bool = True, **kwargs) -> "VectorIndex":
        """Load an index saved by :meth:`save`, after checking it against its sidecar's size and
        checksums (``persistence.IndexFileError`` if they differ). Memory-maps it read-only where
        faiss allows (IVF inverted lists; flat codes incl. HNSW storage); mutations copy it into RAM."""
        path = Path(path)
        meta = persistence.verify_index_file(path) if verify else persistence.read_sidecar(path)
        spec = IndexSpec.from_dict(meta["spec"])
        index, mapped = None, False
        if mmap:
            flags = (faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if spec.kind == "ivf"
                     else getattr(faiss, "IO_FLAG_MMAP_IFC", None))
            if flags is None:
                log.info("this faiss cannot mmap %s indexes; reading into RAM", spec.kind)
            else:
                try:
                    index, mapped = faiss.read_index(str(path), flags), True
                except RuntimeError as e:
                    log.warning("mmap load of %s failed (%s); reading into RAM", path, e)
        if index is None:
            try:
                index = faiss.read_index(str(path))
            except RuntimeError as exc:
                raise persistence.IndexFileError(f"{path}: faiss cannot read it: {str(exc).splitlines()[0]}") from None
        if index.ntotal != meta["ntotal"] or index.d != meta["dim"]:
            raise persistence.IndexFileError(f"{path}: ntotal/dim {index.ntotal}/{index.d} != sidecar")
        vi = cls(meta["dim"], spec, _index=index, **kwargs)
        if spec.kind == "hnsw":
            vi._dead[np.asarray(meta.get("tombstones", []), dtype=np.int64)] = True
            vi._refresh()
        vi._mmapped = mapped
        return vi
