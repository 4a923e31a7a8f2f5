"""Zero-shot classification wired to encoders and collections: images, lists, whole libraries.

Library tagging reads only stored vectors (no photo is re-read) and replaces the tags of one
taxonomy in a single transaction, so a later label list cleanly supersedes an earlier one. Like
search, it leaves out quarantined and blocked photos unless the caller names a moderation value
(:mod:`retrieval.visibility`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select

from indexer.catalog.models import Tag
from indexer.collection import Collection
from indexer.encode.decode import DecodeError, decode_photo
from indexer.encode.encoders import Encoder
from indexer.core.errors import InputError
from retrieval.visibility import visible_mask

from .cache import ZeroShotCache
from .labels import validate_classnames
from .scoring import classify_vectors, cosine_scores, multi_label, scoring_kind
from .templates import ensure_templates

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = "photos"


@dataclass
class Labelled:
    """Classification of one image: top labels with probabilities (or multi-label matches)."""

    source: str
    labels: list[tuple[str, float]]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "labels": [{"label": lab, "score": round(s, 6)} for lab, s in self.labels],
                "error": self.error}


class ZeroShotClassifier:
    """Class names × templates → cached weights for one encoder; classifies vectors."""

    def __init__(self, encoder: Encoder, classnames: Sequence[str], templates: str | Sequence[str] = DEFAULT_TEMPLATES,
                 cache_dir: str | Path | None = None) -> None:
        self.encoder = encoder
        self.classnames = validate_classnames(classnames)
        self.templates = ensure_templates(templates)
        self.cache = ZeroShotCache(cache_dir)
        self.weights = self.cache.get_or_build(encoder.spec.id, self.classnames, self.templates, encoder.encode_texts)

    @property
    def scoring(self) -> str:
        """``softmax`` (CLIP: over the label list) or ``sigmoid`` (a model with a logit bias: per label)."""
        return scoring_kind(getattr(self.encoder, "logit_bias", None))

    def top_k(self, vectors: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top ``k`` labels per vector with probabilities in the model's own scoring (see :attr:`scoring`)."""
        res = classify_vectors(vectors, self.weights, self.encoder.logit_scale, k=min(k, len(self.classnames)),
                               logit_bias=getattr(self.encoder, "logit_bias", None))
        return [[(self.classnames[i], float(p)) for i, p in zip(idx, prob)] for idx, prob in zip(res.indices, res.values)]

    def multi_label(self, vectors: np.ndarray, thresholds: float | Sequence[float]) -> list[list[tuple[str, float]]]:
        """Every label whose cosine similarity reaches its threshold (one or one per class)."""
        scores = cosine_scores(vectors, self.weights)
        mask = multi_label(scores, np.asarray(thresholds, dtype=np.float32))
        out = []
        for row, m in zip(scores, mask):
            hits = [(self.classnames[j], float(row[j])) for j in np.flatnonzero(m)]
            out.append(sorted(hits, key=lambda t: -t[1]))
        return out


def encode_files(encoder: Encoder, paths: Sequence[str], batch: int = 32) -> tuple[np.ndarray, list[str | None]]:
    """Vectors of image files (rows of zeros for failures) and each file's error or None."""
    vecs = np.zeros((len(paths), encoder.spec.embed_dim), np.float32)
    errors: list[str | None] = [None] * len(paths)
    for start in range(0, len(paths), batch):
        imgs, rows = [], []
        for i in range(start, min(start + batch, len(paths))):
            try:
                img, _ = decode_photo(paths[i], encoder.image_size)
                imgs.append(img)
                rows.append(i)
            except DecodeError as exc:
                errors[i] = str(exc)
        if imgs:
            vecs[rows] = encoder.encode_images(imgs)
    return vecs, errors


def classify_files(clf: ZeroShotClassifier, paths: Sequence[str], k: int = 5,
                   thresholds: float | Sequence[float] | None = None) -> list[Labelled]:
    vecs, errors = encode_files(clf.encoder, paths)
    ok = [i for i, e in enumerate(errors) if e is None]
    results = clf.multi_label(vecs[ok], thresholds) if thresholds is not None else clf.top_k(vecs[ok], k)
    by_row = dict(zip(ok, results))
    return [Labelled(str(p), by_row.get(i, []), errors[i]) for i, p in enumerate(paths)]


def tag_library(coll: Collection, clf: ZeroShotClassifier, taxonomy: str, k: int = 1, min_score: float = 0.0,
                thresholds: float | Sequence[float] | None = None, chunk: int = 65536,
                moderation: str | None = None) -> dict[str, Any]:
    """Tag indexed photos from their stored vectors; replaces the taxonomy's previous (non-manual) tags.

    Quarantined and blocked photos are skipped (and lose this taxonomy's tags) unless ``moderation``
    names what to tag, with the values of the search filter ``moderation=``: ``any`` tags every photo,
    ``quarantine`` only the quarantined ones, and so on.
    """
    if not taxonomy.strip():
        raise InputError("taxonomy name must not be empty")
    ids = coll.vector_ids()
    keep = visible_mask(coll, ids, moderation)
    skipped = int((~keep).sum())
    ids, vecs = coll.load_vectors(ids[keep]) if skipped else coll.load_vectors()
    rows: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    for start in range(0, len(ids), chunk):
        part_ids, part = ids[start:start + chunk], vecs[start:start + chunk]
        labelled = clf.multi_label(part, thresholds) if thresholds is not None else clf.top_k(part, k)
        for pid, labels in zip(part_ids.tolist(), labelled):
            for label, score in labels:
                if thresholds is None and score < min_score:
                    continue
                rows.append({"photo_id": pid, "taxonomy": taxonomy, "label": label, "score": score, "manual": False})
                counts[label] += 1
    with coll.catalog.session() as s, s.begin():
        s.execute(delete(Tag).where(Tag.taxonomy == taxonomy, Tag.manual.is_(False)))
        for start in range(0, len(rows), 5000):
            s.execute(Tag.__table__.insert(), rows[start:start + 5000])
    log.info("tagged %d photos with %d tags (taxonomy %s); %d left out by moderation", len(ids), len(rows),
             taxonomy, skipped)
    return {"taxonomy": taxonomy, "photos": int(len(ids)), "tags": len(rows), "per_label": dict(counts.most_common()),
            "skipped_by_moderation": skipped, "scoring": clf.scoring}


def list_tags(coll: Collection, taxonomy: str | None = None) -> list[dict[str, Any]]:
    """Label counts per taxonomy."""
    with coll.catalog.session() as s:
        stmt = select(Tag.taxonomy, Tag.label, func.count()).group_by(Tag.taxonomy, Tag.label)
        if taxonomy:
            stmt = stmt.where(Tag.taxonomy == taxonomy)
        rows = s.execute(stmt.order_by(Tag.taxonomy, func.count().desc(), Tag.label)).all()
    return [{"taxonomy": t, "label": lab, "photos": n} for t, lab, n in rows]
