"""Sharded search: one index per photo-id range, every shard searched, top-k merged exactly.

For an index larger than one host's memory (see ``docs/scaling.md``): the ids are cut into
contiguous ranges of about equal count (:func:`shard_bounds`), each range gets its own
:class:`~retrieval.index.vector_index.VectorIndex`, and a query goes to every shard holding
candidates: in-process threads here (faiss releases the GIL), or Ray actors, one per shard, across
hosts (:func:`ray_shards`). Because each shard returns its own top-k, the merged top-k is exactly
what one index over all vectors returns: for Flat shards, and for IVF shards built by
:meth:`ShardedIndex.build`, which share one coarse quantizer (the same lists are probed in every
shard, so the shards together scan exactly what one IVF would).

:class:`ShardedIndex` has the search surface of ``VectorIndex`` that the search layer uses
(``search(q, k, params=, allowed_ids=)``, ``ids``, ``len``, ``reconstruct``), so it can stand as the
``base`` of a :class:`~retrieval.index.store.SearchableIndex`: filters (``allowed_ids``, split per
shard by range) and near-duplicate collapse (``reconstruct``) work unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from indexer.core.atomic import atomic_write_json
from retrieval.scoring import top_k

from .choice import IndexSpec, SearchParams, choose_index_spec
from .selectors import as_ids
from .vector_index import VectorIndex

log = logging.getLogger(__name__)

SHARDS_FILE = "shards.json"


class Shard(Protocol):
    """What a shard must answer: a ``VectorIndex`` in-process, or a proxy of one elsewhere."""

    @property
    def ids(self) -> np.ndarray: ...

    def search(self, queries: np.ndarray, k: int, *, params: SearchParams | None = None,
               allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def reconstruct(self, ids: np.ndarray) -> np.ndarray: ...


def shard_bounds(ids: np.ndarray, n_shards: int) -> np.ndarray:
    """Edges ``[b0, b1, ..., bn]`` of ``n`` contiguous id ranges ``[b_i, b_{i+1})`` of about equal count.

    The first edge is 0 and the last is past the largest id, so photos added later with larger
    ids fall in the last range (indexes grow at the end; re-shard when it outgrows the others)."""
    ids = np.unique(as_ids(ids))
    if n_shards < 1:
        raise ValueError("n_shards must be >= 1")
    if not len(ids):
        return np.array([0, 1], np.int64)
    cuts = ids[(np.arange(1, n_shards) * len(ids)) // n_shards] if n_shards > 1 else np.zeros(0, np.int64)
    edges = np.concatenate([[min(0, int(ids[0]))], cuts, [int(ids[-1]) + 1]]).astype(np.int64)
    return np.unique(edges)


def shard_of(ids: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Which range each id falls in (ids beyond the last edge go to the last shard)."""
    return np.clip(np.searchsorted(bounds, as_ids(ids), side="right") - 1, 0, len(bounds) - 2)


def merge_top_k(parts: Sequence[tuple[np.ndarray, np.ndarray]], nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of per-shard top-k lists (scores ``-inf`` / ids ``-1`` pad, as everywhere)."""
    if not parts:
        return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
    scores = np.concatenate([s for s, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    pos, vals = top_k(scores, k, pad=True)
    out = np.take_along_axis(ids, np.maximum(pos, 0), 1)
    out[(pos < 0) | ~np.isfinite(vals)] = -1
    return vals.astype(np.float32), out


class ShardedIndex:
    """Shards by photo-id range, searched in parallel and merged exactly; see the module docstring."""

    def __init__(self, shards: Sequence[Shard], bounds: np.ndarray, *, dim: int, threads: int | None = None,
                 names: Sequence[str] | None = None, complete: bool = True) -> None:
        """``names``: the file each shard was loaded from (lets a reload reuse unchanged shards);
        ``complete``: False when some shard could not be loaded and stands empty in its range (the
        readers' view then scans that range's stored vectors exactly)."""
        if len(bounds) != len(shards) + 1:
            raise ValueError(f"{len(shards)} shards need {len(shards) + 1} bounds, got {len(bounds)}")
        if names is not None and len(names) != len(shards):
            raise ValueError(f"{len(shards)} shards need {len(shards)} names, got {len(names)}")
        self.shards = list(shards)
        self.bounds = np.asarray(bounds, np.int64)
        self.dim = int(dim)
        self.names = list(names) if names is not None else None
        self.complete = complete
        workers = threads or max(1, len(self.shards))
        # faiss parallelises each search with OpenMP; S shards searched at once with a full OpenMP team
        # each oversubscribe the cores. The team size is a per-thread setting: split the cores.
        per_search = max(1, faiss.omp_get_max_threads() // workers)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard",
                                        initializer=faiss.omp_set_num_threads, initargs=(per_search,))
        self._ids = (np.concatenate([np.asarray(s.ids, np.int64) for s in self.shards])
                     if self.shards else np.zeros(0, np.int64))
        self._ids.sort()

    # ---- build / persist ----------------------------------------------------------------------
    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, n_shards: int, spec: IndexSpec | None = None,
              *, threads: int | None = None, shared_quantizer: bool = True, seed: int = 0,
              **kwargs: Any) -> "ShardedIndex":
        """Split by id range and build one index per shard.

        ``spec`` (default: the choice for the whole collection) applies to every shard. IVF shards
        share one coarse quantizer, trained once on a sample of all vectors (``shared_quantizer``):
        a query then probes the same ``nprobe`` lists in every shard, so sharding splits the work of
        one IVF search instead of multiplying it, and recall equals the unsharded index's."""
        ids = as_ids(ids)
        dim = vectors.shape[1]
        spec = spec or choose_index_spec(max(len(ids), 1), dim)
        bounds = shard_bounds(ids, n_shards)
        which = shard_of(ids, bounds)
        trained = None
        if spec.kind == "ivf" and shared_quantizer and len(ids):
            template = VectorIndex(dim, spec)
            n_train = min(len(ids), int(spec.params.get("train_size", 100_000)))
            template.train(vectors[np.sort(np.random.default_rng(seed).choice(len(ids), n_train, replace=False))])
            trained = faiss.serialize_index(template._index)
        shards = []
        for s in range(len(bounds) - 1):
            rows = np.flatnonzero(which == s)
            if trained is not None:
                shard = VectorIndex(dim, spec, _index=faiss.deserialize_index(trained), **kwargs)
                shard.add(ids[rows], vectors[rows])
            elif len(rows):
                shard = VectorIndex.build(ids[rows], vectors[rows], spec, seed=seed, **kwargs)
            else:
                shard = VectorIndex(dim, spec, **kwargs)
            shards.append(shard)
        log.info("built %d %s shards over %d vectors: sizes %s", len(shards), spec.factory, len(ids),
                 [len(s) for s in shards])
        return cls(shards, bounds, dim=dim, threads=threads)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Each shard as its own index file (with sidecar), then ``shards.json`` naming them, atomically."""
        folder = Path(folder)
        files = []
        for n, shard in enumerate(self.shards):
            if not isinstance(shard, VectorIndex):
                raise TypeError("only in-process shards can be saved")
            name = f"shard-{n:04d}-of-{len(self.shards):04d}.faiss"
            shard.save(folder / name)
            files.append(name)
        atomic_write_json(folder / SHARDS_FILE, {"dim": self.dim, "bounds": self.bounds.tolist(), "files": files,
                                                 "counts": [len(s.ids) for s in self.shards]})
        return folder / SHARDS_FILE

    @staticmethod
    def read_layout(folder: str | os.PathLike[str]) -> dict[str, Any]:
        return json.loads((Path(folder) / SHARDS_FILE).read_text())

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, mmap: bool = True, threads: int | None = None) -> "ShardedIndex":
        """Open every shard of a saved layout in this process (checksums verified per shard)."""
        layout = cls.read_layout(folder)
        shards = [VectorIndex.load(Path(folder) / name, mmap=mmap) for name in layout["files"]]
        return cls(shards, np.asarray(layout["bounds"], np.int64), dim=layout["dim"], threads=threads)

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    @property
    def spec(self) -> IndexSpec | None:
        """The shards' index spec (every in-process shard has the same); None for remote shards."""
        specs = [s.spec for s in self.shards if isinstance(s, VectorIndex) and len(s)]
        return specs[0] if specs else None

    def to_gpu(self, device: int = 0) -> bool:
        """Mirror every in-process shard on the GPU (as ``VectorIndex.to_gpu``); True if all were."""
        return all([s.to_gpu(device) for s in self.shards if isinstance(s, VectorIndex)])

    # ---- the VectorIndex search surface -------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        """Sorted live photo ids over all shards."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, queries: np.ndarray, k: int, *, params: SearchParams | None = None,
               allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) over every shard, merged exactly; ``allowed_ids`` split by range."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        jobs: list[tuple[int, np.ndarray | None]] = []
        if allowed_ids is None:
            jobs = [(n, None) for n in range(len(self.shards))]
        else:
            allowed = np.unique(as_ids(allowed_ids))
            which = shard_of(allowed, self.bounds)
            jobs = [(n, allowed[which == n]) for n in np.unique(which).tolist()]
        futures = [self._pool.submit(self.shards[n].search, q, k, params=params, allowed_ids=sub)
                   for n, sub in jobs]
        return merge_top_k([f.result() for f in futures], len(q), k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors by photo id, from the shards holding them (for near-duplicate collapse)."""
        ids = as_ids(ids)
        out = np.empty((len(ids), self.dim), np.float32)
        which = shard_of(ids, self.bounds)
        for n in np.unique(which).tolist():
            rows = np.flatnonzero(which == n)
            out[rows] = self.shards[n].reconstruct(ids[rows])
        return out


# ---- shards as Ray actors (across hosts) ---------------------------------------------------------
class _ShardServer:
    """A Ray actor serving one shard file (which every host reads from shared storage)."""

    def __init__(self, path: str, mmap: bool = True) -> None:
        self.index = VectorIndex.load(path, mmap=mmap)

    def ids(self) -> np.ndarray:
        return self.index.ids

    def search(self, q: np.ndarray, k: int, params: SearchParams | None, allowed: np.ndarray | None):
        return self.index.search(q, k, params=params, allowed_ids=allowed)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self.index.reconstruct(ids)


class RemoteShard:
    """A :class:`Shard` answered by a ``_ShardServer`` actor."""

    def __init__(self, actor: Any) -> None:
        import ray

        self._ray, self.actor = ray, actor
        self._ids = np.asarray(ray.get(actor.ids.remote()), np.int64)

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def search(self, queries: np.ndarray, k: int, *, params: SearchParams | None = None,
               allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self._ray.get(self.actor.search.remote(queries, k, params, allowed_ids))

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self._ray.get(self.actor.reconstruct.remote(ids))


def ray_shards(folder: str | os.PathLike[str], *, num_cpus: float = 1.0, memory: int | None = None,
               threads: int | None = None) -> ShardedIndex:
    """A ``ShardedIndex`` whose shards are Ray actors, one per shard file of a saved layout.

    Needs Ray initialised (``ray.init(address=...)``) and ``folder`` readable on every host; Ray
    places each actor where ``num_cpus``/``memory`` fit (size ``memory`` to the shard's index)."""
    import ray

    layout = ShardedIndex.read_layout(folder)
    server = ray.remote(_ShardServer).options(num_cpus=num_cpus, memory=memory, max_restarts=-1,
                                              max_task_retries=-1)
    actors = [server.remote(str(Path(folder).resolve() / name)) for name in layout["files"]]
    shards = [RemoteShard(a) for a in actors]
    return ShardedIndex(shards, np.asarray(layout["bounds"], np.int64), dim=layout["dim"], threads=threads)
