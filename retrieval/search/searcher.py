"""Search a collection by text or image: filters, minimum score, pagination, near-duplicate collapse."""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from indexer.catalog.read import as_datetime, rows_for_ids, scalar
from indexer.collection import Collection
from indexer.core.errors import InputError
from indexer.core.vectors import decode_vectors
from retrieval.index.choice import SearchParams
from retrieval.index.store import SearchableIndex, open_index
from retrieval.visibility import hidden_ids

from .collapse import collapse_groups
from .defaults import DEFAULT_CAPTION_WEIGHT, DEFAULT_COLLAPSE
from .filters import SearchFilters, allowed_ids
from .query import query_vector

if TYPE_CHECKING:
    from indexer.encode.encoders import Encoder

log = logging.getLogger(__name__)

MAX_K = 10_000
MAX_CAPTION_WEIGHT = 10.0
MAX_FETCH_GROWTH = 3  # extra over-fetch rounds (x2 to x4 each) when collapse or filters thin the results


class SearchError(InputError):
    """A search request that cannot be served (bad image, unknown id, bad parameters)."""


@dataclass
class SearchOptions:
    """What to return: ``k`` results after ``offset``, above ``min_score``, collapsed at ``collapse``."""

    k: int = 20
    offset: int = 0
    min_score: float | None = None
    filters: SearchFilters | None = None
    collapse: float | None = DEFAULT_COLLAPSE  # cosine above which results count as near-duplicates
    params: SearchParams | None = None
    exclude_ids: tuple[int, ...] = ()

    def validate(self) -> "SearchOptions":
        """Raise :class:`SearchError` for out-of-range values; returns self."""
        if self.k < 1 or self.k > MAX_K:
            raise SearchError(f"k must be between 1 and {MAX_K}, got {self.k}")
        if self.offset < 0:
            raise SearchError(f"offset must be >= 0, got {self.offset}")
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise SearchError(f"min_score is a cosine similarity between -1 and 1, got {self.min_score}")
        if self.collapse is not None and not 0.0 < self.collapse <= 1.0:
            raise SearchError(f"collapse is a cosine threshold in (0, 1], got {self.collapse}")
        for name in ("nprobe", "ef_search"):
            value = getattr(self.params, name, None) if self.params is not None else None
            if value is not None and value < 1:
                raise SearchError(f"{name} must be >= 1, got {value}")
        return self


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HybridHit(SearchHit):
    """A hybrid text-search result: ``score = clip_score + caption_weight x caption_score``."""

    clip_score: float = 0.0
    caption_score: float = 0.0  # normalised BM25 match of the stored caption, in [0, 1]
    caption: str | None = None


class TextEncoder(Protocol):
    """What a text-only search needs: the spec and ``encode_texts`` (e.g. the exported text tower)."""

    spec: Any

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


class Searcher:
    """Text and image search over one collection with its own encoder."""

    def __init__(self, coll: Collection, encoder: "Encoder | TextEncoder",
                 index: Callable[[], SearchableIndex] | None = None) -> None:
        """``index``: where each search gets its view (default :func:`open_index`, which catches up on the
        caller's thread; a server passes :meth:`retrieval.index.loader.IndexLoader.current`)."""
        coll.check_encoder(encoder.spec)
        self.coll = coll
        self.encoder = encoder
        self._index = index

    # ---- query vectors -------------------------------------------------------------------
    def text_vector(self, text: str) -> np.ndarray:
        return query_vector(text, self.encoder.encode_texts)

    def image_vector(self, data: bytes | None = None, path: str | None = None) -> np.ndarray:
        """Vector of an uploaded image or a file; a catalogued file reuses its stored vector."""
        if path is not None:
            stored = self._stored_vector_for_path(path)
            if stored is not None:
                return stored
        from indexer.encode.decode import DecodeError, decode_photo

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
        blob = scalar(self.coll.reader, "SELECT vector FROM embeddings WHERE photo_id = :id", {"id": int(photo_id)})
        if blob is None:
            raise SearchError(f"photo id {photo_id} is not in the collection (or has no vector)")
        return decode_vectors([bytes(blob)], self.coll.dim)[0]

    def _stored_vector_for_path(self, path: str) -> np.ndarray | None:
        pid = scalar(self.coll.reader, "SELECT photo_id FROM photo_files WHERE path_bytes = :path",
                     {"path": os.fsencode(os.path.abspath(path))})
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
        options = (options or SearchOptions()).validate()
        index, allowed, available = self._scope(options)
        if available == 0:
            return []
        want = options.offset + options.k
        fetch = min(available, max(2 * want, want + 16))
        for round_ in range(MAX_FETCH_GROWTH + 1):
            scores, ids = index.search(query[None, :], fetch, params=options.params, allowed_ids=allowed)
            keep = ids[0] >= 0
            hits_ids, hits_scores = ids[0][keep], scores[0][keep]
            exhausted_by_score = False
            if options.min_score is not None:
                above = hits_scores >= options.min_score
                exhausted_by_score = not above.all()
                hits_ids, hits_scores = hits_ids[above], hits_scores[above]
            groups = self._collapse(index, hits_ids, options.collapse)
            if len(groups) >= want or fetch >= available or exhausted_by_score or round_ == MAX_FETCH_GROWTH:
                break
            # grow by how much collapse thinned this round (at least x2, at most x4)
            ratio = len(hits_ids) / max(1, len(groups))
            fetch = min(available, int(fetch * min(4.0, max(2.0, ratio * 1.5))))
        page = groups[options.offset: want]
        score_of = dict(zip(hits_ids.tolist(), hits_scores.tolist()))
        return self._hydrate([(g[0], score_of[g[0]], g[1:]) for g in page])

    def search_hybrid(self, text: str, options: SearchOptions | None = None,
                      caption_weight: float = DEFAULT_CAPTION_WEIGHT) -> list[HybridHit]:
        """Text search scored ``CLIP cosine + caption_weight x caption match`` (see :mod:`.captions`).

        Candidates are CLIP's top ``max(4 (offset + k), offset + k + 64)`` results and as many best
        caption matches (ties by photo id), so a photo whose caption matches can enter even if CLIP
        did not retrieve it; a photo in neither pool is not ranked. Filters, moderation,
        ``min_score`` (on the hybrid score), collapse and pagination apply as in :meth:`search_vector`."""
        from .captions import caption_index, caption_matches, captions_of

        options = (options or SearchOptions()).validate()
        if not (math.isfinite(caption_weight) and 0.0 <= caption_weight <= MAX_CAPTION_WEIGHT):
            raise SearchError(f"caption weight must be between 0 and {MAX_CAPTION_WEIGHT}, got {caption_weight}")
        captions = caption_index(self.coll)
        if len(captions) == 0:
            log.warning("no captions are stored: hybrid search ranks by CLIP alone (run `photodex caption --all`)")
        query = self.text_vector(text)
        index, allowed, available = self._scope(options)
        if available == 0:
            return []
        want = options.offset + options.k
        pool = min(available, max(4 * want, want + 64))
        scores, ids = index.search(query[None, :], pool, params=options.params, allowed_ids=allowed)
        keep = ids[0] >= 0
        clip = dict(zip(ids[0][keep].tolist(), scores[0][keep].tolist()))
        cap_ids, cap_scores = caption_matches(self.coll, text, allowed if allowed is not None else index.ids, pool,
                                              index=captions)
        caption = dict(zip(cap_ids.tolist(), cap_scores.tolist()))
        missing = np.asarray([i for i in caption if i not in clip], np.int64)
        if len(missing):  # caption matches CLIP did not retrieve: their exact cosine
            clip.update(zip(missing.tolist(), (index.vectors(missing) @ query).tolist()))
        cand = np.asarray(sorted(clip), np.int64)
        clip_s = np.asarray([clip[i] for i in cand.tolist()], np.float64)
        cap_s = np.asarray([caption.get(i, 0.0) for i in cand.tolist()], np.float64)
        total = clip_s + caption_weight * cap_s
        order = np.lexsort((cand, -total))
        cand, clip_s, cap_s, total = cand[order], clip_s[order], cap_s[order], total[order]
        if options.min_score is not None:
            above = total >= options.min_score
            cand, clip_s, cap_s, total = cand[above], clip_s[above], cap_s[above], total[above]
        page = self._collapse(index, cand, options.collapse)[options.offset: want]
        at = {int(i): n for n, i in enumerate(cand.tolist())}
        hits = self._hydrate([(g[0], float(total[at[g[0]]]), g[1:]) for g in page])
        texts = captions_of(self.coll, [h.id for h in hits])
        return [HybridHit(**asdict(h), clip_score=float(clip_s[at[h.id]]), caption_score=float(cap_s[at[h.id]]),
                          caption=texts.get(h.id)) for h in hits]

    def _scope(self, options: SearchOptions) -> tuple[SearchableIndex, np.ndarray | None, int]:
        """The current index, the ids a search may return (None: all) and how many photos that is."""
        index = self._index() if self._index is not None else open_index(self.coll)
        allowed = self._allowed(index, options)
        return index, allowed, len(index) if allowed is None else len(allowed)

    def _allowed(self, index: SearchableIndex, options: SearchOptions) -> np.ndarray | None:
        """Ids a search may return (filters, minus moderation-hidden and excluded ids); None: all."""
        allowed = allowed_ids(self.coll, options.filters)
        excluded = np.union1d(np.asarray(options.exclude_ids, np.int64), hidden_ids(self.coll, options.filters))
        if len(excluded):  # moderation: quarantined/blocked photos unless the filters ask for them
            base = allowed if allowed is not None else index.ids
            allowed = np.setdiff1d(base, excluded)
        return allowed

    def _collapse(self, index: SearchableIndex, ids: np.ndarray, threshold: float | None) -> list[list[int]]:
        if threshold is None or len(ids) < 2:
            return [[int(i)] for i in ids]
        return collapse_groups(ids, index.vectors(ids), threshold)

    def _hydrate(self, rows: list[tuple[int, float, list[int]]]) -> list[SearchHit]:
        if not rows:
            return []
        ids = [r[0] for r in rows]
        read = self.coll.reader
        photos = {r[0]: r for r in rows_for_ids(
            read, "SELECT id, taken_at, camera_make, camera_model, width, height, format, gps_lat, gps_lon "
                  "FROM photos WHERE id IN ({ids})", ids)}
        paths: dict[int, list[str]] = {}
        for pid, path in sorted(rows_for_ids(read, "SELECT photo_id, path FROM photo_files WHERE photo_id IN ({ids})",
                                             ids), key=lambda r: r[1]):
            paths.setdefault(pid, []).append(path)
        tags: dict[int, list[str]] = {}
        for pid, label in rows_for_ids(read, "SELECT photo_id, label FROM tags WHERE photo_id IN ({ids})", ids):
            tags.setdefault(pid, []).append(label)
        hits = []
        for pid, score, dups in rows:
            p = photos.get(pid)
            if p is None:  # deleted since the index was read: never return it
                continue
            _, taken_at, make, model, width, height, fmt, lat, lon = p
            taken = as_datetime(taken_at)
            hits.append(SearchHit(
                id=pid, score=float(score), paths=paths.get(pid, []),
                taken_at=taken.isoformat() if taken else None, camera_make=make, camera_model=model,
                width=width, height=height, format=fmt,
                gps=(lat, lon) if lat is not None and lon is not None else None,
                tags=sorted(tags.get(pid, [])), duplicates=dups,
            ))
        return hits
