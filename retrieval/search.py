"""Search a collection by text or image: filters, minimum score, pagination, near-duplicate collapse."""

from __future__ import annotations

import io
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy import select

from indexer.catalog_models import Embedding, Photo, PhotoFile, Tag
from indexer.collection import Collection, decode_vectors
from indexer.decode import DecodeError, decode_photo
from indexer.encoders import Encoder

from .filters import SearchFilters, allowed_ids
from .index_choice import SearchParams
from .index_store import open_index
from .query import QueryError, query_vector

log = logging.getLogger(__name__)

DEFAULT_COLLAPSE = 0.95


class SearchError(ValueError):
    """A search request that cannot be served (bad image, unknown id, bad parameters)."""


@dataclass
class SearchOptions:
    k: int = 20
    offset: int = 0
    min_score: float | None = None
    filters: SearchFilters | None = None
    collapse: float | None = DEFAULT_COLLAPSE  # cosine above which results count as near-duplicates
    params: SearchParams | None = None
    exclude_ids: tuple[int, ...] = ()


@dataclass
class SearchHit:
    id: int
    score: float
    paths: list[str]
    taken_at: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    gps: tuple[float, float] | None = None
    tags: list[str] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)  # collapsed near-duplicate ids

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Searcher:
    """Text and image search over one collection with its own encoder."""

    def __init__(self, coll: Collection, encoder: Encoder) -> None:
        coll.check_encoder(encoder.spec)
        self.coll = coll
        self.encoder = encoder

    # ---- query vectors -------------------------------------------------------------------
    def text_vector(self, text: str) -> np.ndarray:
        try:
            return query_vector(text, self.encoder.encode_texts)
        except QueryError as exc:
            raise SearchError(str(exc)) from exc

    def image_vector(self, data: bytes | None = None, path: str | None = None) -> np.ndarray:
        """Vector of an uploaded image or a file; a catalogued file reuses its stored vector."""
        if path is not None:
            stored = self._stored_vector_for_path(path)
            if stored is not None:
                return stored
        try:
            if data is not None:
                img, _ = decode_photo(io.BytesIO(data), self.encoder.image_size)  # type: ignore[arg-type]
            elif path is not None:
                img, _ = decode_photo(path, self.encoder.image_size)
            else:
                raise SearchError("give image bytes, a path or an id")
        except DecodeError as exc:
            raise SearchError(f"cannot use the query image: {exc}") from exc
        return self.encoder.encode_images([img])[0]

    def id_vector(self, photo_id: int) -> np.ndarray:
        with self.coll.catalog.session() as s:
            blob = s.scalar(select(Embedding.vector).where(Embedding.photo_id == photo_id))
        if blob is None:
            raise SearchError(f"photo id {photo_id} is not in the collection (or has no vector)")
        return decode_vectors([blob], self.coll.dim)[0]

    def _stored_vector_for_path(self, path: str) -> np.ndarray | None:
        with self.coll.catalog.session() as s:
            pid = s.scalar(select(PhotoFile.photo_id).where(PhotoFile.path == os.path.abspath(path)))
        if pid is None:
            return None
        try:
            return self.id_vector(pid)
        except SearchError:
            return None

    # ---- search --------------------------------------------------------------------------
    def search_text(self, text: str, options: SearchOptions | None = None) -> list[SearchHit]:
        return self.search_vector(self.text_vector(text), options)

    def search_similar(self, *, photo_id: int | None = None, path: str | None = None, data: bytes | None = None,
                       options: SearchOptions | None = None) -> list[SearchHit]:
        options = options or SearchOptions()
        if photo_id is not None:
            vec = self.id_vector(photo_id)
            options = replace(options, exclude_ids=(*options.exclude_ids, photo_id))
        else:
            vec = self.image_vector(data=data, path=path)
        return self.search_vector(vec, options)

    def search_vector(self, query: np.ndarray, options: SearchOptions | None = None) -> list[SearchHit]:
        """Top results for a unit query vector after filters, threshold, collapse and pagination."""
        options = options or SearchOptions()
        if options.k < 1 or options.offset < 0:
            raise SearchError("k must be >= 1 and offset >= 0")
        index = open_index(self.coll)
        allowed = allowed_ids(self.coll, options.filters)
        if options.exclude_ids:
            base = allowed if allowed is not None else index.ids
            allowed = np.setdiff1d(base, np.asarray(options.exclude_ids, np.int64))
        if allowed is not None and len(allowed) == 0:
            return []
        available = len(index) if allowed is None else len(allowed)
        want = options.offset + options.k
        fetch = min(available, max(2 * want, want + 16))
        while True:
            scores, ids = index.search(query[None, :], fetch, params=options.params, allowed_ids=allowed)
            keep = ids[0] >= 0
            hits_ids, hits_scores = ids[0][keep], scores[0][keep]
            if options.min_score is not None:
                above = hits_scores >= options.min_score
                exhausted_by_score = not above.all()
                hits_ids, hits_scores = hits_ids[above], hits_scores[above]
            else:
                exhausted_by_score = False
            groups = self._collapse(hits_ids, options.collapse)
            if len(groups) >= want or fetch >= available or exhausted_by_score:
                break
            fetch = min(available, fetch * 4)
        page = groups[options.offset: want]
        score_of = dict(zip(hits_ids.tolist(), hits_scores.tolist()))
        return self._hydrate([(g[0], score_of[g[0]], g[1:]) for g in page])

    def _collapse(self, ids: np.ndarray, threshold: float | None) -> list[list[int]]:
        """Greedy near-duplicate grouping in rank order: each group is [kept id, *collapsed ids]."""
        if threshold is None or len(ids) < 2:
            return [[int(i)] for i in ids]
        ids, vecs = self.coll.vectors_in_order(ids)
        groups: list[list[int]] = []
        kept_vecs: list[np.ndarray] = []
        for i, v in zip(ids.tolist(), vecs):
            if kept_vecs:
                sims = np.stack(kept_vecs) @ v
                j = int(np.argmax(sims))
                if sims[j] >= threshold:
                    groups[j].append(i)
                    continue
            groups.append([i])
            kept_vecs.append(v)
        return groups

    def _hydrate(self, rows: list[tuple[int, float, list[int]]]) -> list[SearchHit]:
        if not rows:
            return []
        ids = [r[0] for r in rows]
        with self.coll.catalog.session() as s:
            photos = {p.id: p for p in s.scalars(select(Photo).where(Photo.id.in_(ids)))}
            paths: dict[int, list[str]] = {}
            for pid, path in s.execute(select(PhotoFile.photo_id, PhotoFile.path).where(PhotoFile.photo_id.in_(ids))
                                       .order_by(PhotoFile.path)):
                paths.setdefault(pid, []).append(path)
            tags: dict[int, list[str]] = {}
            for pid, label in s.execute(select(Tag.photo_id, Tag.label).where(Tag.photo_id.in_(ids))):
                tags.setdefault(pid, []).append(label)
        hits = []
        for pid, score, dups in rows:
            p = photos.get(pid)
            if p is None:  # deleted since the index was read: never return it
                continue
            hits.append(SearchHit(
                id=pid, score=float(score), paths=paths.get(pid, []),
                taken_at=p.taken_at.isoformat() if p.taken_at else None, camera_make=p.camera_make,
                camera_model=p.camera_model, width=p.width, height=p.height, format=p.format,
                gps=(p.gps_lat, p.gps_lon) if p.gps_lat is not None and p.gps_lon is not None else None,
                tags=sorted(tags.get(pid, [])), duplicates=dups,
            ))
        return hits
