"""Caption match scores for hybrid text search: BM25 over the VLM captions stored in the catalog.

The answerer writes captions (``photodex caption --all`` → table ``photo_captions``); this module
only reads them. A query's caption match score for a photo is a BM25 score (k1 = 1.2, b = 0.75)
normalised to [0, 1] by the score of a caption of average length holding each query term once::

    match(q, d) = min(1, BM25(q, d) / sum_{t in q, t in vocabulary} idf(t))

Query terms that no caption contains are left out of the normaliser (captions cannot answer
them either way), so a caption that holds every answerable query term once scores 1. Tokens are
lower-case words with a plural ``s`` stripped ("circles" matches "circle").

The index is built in memory from the table and cached per collection until the captions change
(their count or newest ``created_at``). Nothing here imports torch.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from indexer.catalog.read import rows_for_ids
from indexer.collection import Collection

log = logging.getLogger(__name__)

__all__ = ["BM25_B", "BM25_K1", "CaptionIndex", "caption_index", "caption_matches", "captions_of", "tokenize"]

BM25_K1 = 1.2
BM25_B = 0.75
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-case words, plural ``s`` stripped (``"Three red circles"`` → ``["three", "red", "circle"]``)."""
    words = _WORD.findall(text.lower())
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words]


@dataclass
class CaptionIndex:
    """An inverted index of captions: postings per term, document lengths and idf."""

    ids: np.ndarray  # photo id per document
    doc_len: np.ndarray
    postings: dict[str, tuple[np.ndarray, np.ndarray]]  # term -> (document rows, term frequencies)

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str]]) -> CaptionIndex:
        ids: list[int] = []
        lengths: list[int] = []
        acc: dict[str, tuple[list[int], list[int]]] = {}
        for row, (pid, caption) in enumerate(rows):
            tokens = tokenize(caption)
            ids.append(int(pid))
            lengths.append(len(tokens))
            counts: dict[str, int] = {}
            for t in tokens:
                counts[t] = counts.get(t, 0) + 1
            for t, n in counts.items():
                docs, tfs = acc.setdefault(t, ([], []))
                docs.append(row)
                tfs.append(n)
        postings = {t: (np.asarray(d, np.int64), np.asarray(f, np.float32)) for t, (d, f) in acc.items()}
        return cls(np.asarray(ids, np.int64), np.asarray(lengths, np.float32), postings)

    def __len__(self) -> int:
        return len(self.ids)

    def idf(self, term: str) -> float:
        """BM25 idf, always positive: ``log(1 + (N - n + 0.5) / (n + 0.5))``."""
        n = len(self.postings[term][0])
        return math.log(1.0 + (len(self) - n + 0.5) / (n + 0.5))

    def scores(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """(photo ids, normalised match scores in (0, 1]) of the captions matching ``query``, best first."""
        terms = [t for t in dict.fromkeys(tokenize(query)) if t in self.postings]
        if not terms or not len(self):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        avg = float(self.doc_len.mean()) or 1.0
        norm = 1.0 - BM25_B + BM25_B * self.doc_len / avg
        total = np.zeros(len(self), np.float32)
        best = 0.0
        for t in terms:
            docs, tf = self.postings[t]
            idf = self.idf(t)
            total[docs] += idf * tf * (BM25_K1 + 1.0) / (tf + BM25_K1 * norm[docs])
            best += idf
        rows = np.flatnonzero(total > 0)
        match = np.minimum(1.0, total[rows] / best).astype(np.float32)
        order = np.lexsort((self.ids[rows], -match))
        return self.ids[rows][order], match[order]


_cache: dict[str, tuple[tuple, CaptionIndex]] = {}
_cache_lock = threading.Lock()


def caption_index(coll: Collection) -> CaptionIndex:
    """The collection's caption index, rebuilt only when the stored captions changed."""
    count, newest = coll.reader.rows("SELECT COUNT(*), MAX(created_at) FROM photo_captions")[0]
    stamp = (int(count), str(newest))
    key = coll.url
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    index = CaptionIndex.build(coll.reader.rows("SELECT photo_id, caption FROM photo_captions ORDER BY photo_id"))
    log.debug("caption index built: %d captions, %d terms", len(index), len(index.postings))
    with _cache_lock:
        _cache[key] = (stamp, index)
    return index


def caption_matches(coll: Collection, query: str, allowed: np.ndarray | None = None, limit: int | None = None,
                    index: CaptionIndex | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, match scores) of captions matching ``query``, best first, among ``allowed`` ids, at most ``limit``."""
    ids, scores = (index if index is not None else caption_index(coll)).scores(query)
    if allowed is not None and len(ids):
        keep = np.isin(ids, allowed)
        ids, scores = ids[keep], scores[keep]
    if limit is not None:
        ids, scores = ids[:limit], scores[:limit]
    return ids, scores


def captions_of(coll: Collection, ids: Iterable[int]) -> dict[int, str]:
    """Stored captions of ``ids`` (photos without one are absent)."""
    wanted = [int(i) for i in ids]
    if not wanted:
        return {}
    return {int(pid): text for pid, text in rows_for_ids(
        coll.reader, "SELECT photo_id, caption FROM photo_captions WHERE photo_id IN ({ids})", wanted)}
