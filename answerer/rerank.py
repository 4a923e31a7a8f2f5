"""VLM re-ranking of search results: P(yes) to "Does this photo show {query}?", blended with CLIP.

Each candidate gets one forward pass (no generation, batched): the next-token distribution after
the question, summed over the tokenizer's variants of "yes" ("yes", "Yes", " yes", ...) and of
"no", gives ``p_yes = P(yes) / (P(yes) + P(no))``. The final score is

    score = (1 - weight) * clip_minmax + weight * p_yes

where ``clip_minmax`` is the CLIP cosine min-max scaled over the candidates (so both terms span
[0, 1]); ``weight = 1`` ranks by the VLM alone, ``weight = 0`` keeps the CLIP order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from indexer.core.errors import InputError
from retrieval.search.searcher import Searcher, SearchHit, SearchOptions

from .budget import ImageBudget
from .vlm import VLM, Request

log = logging.getLogger(__name__)

__all__ = ["RERANK_TEMPLATE", "RerankedHit", "answer_token_ids", "blend", "p_yes", "rerank", "rerank_hits"]

RERANK_TEMPLATE = "Does this photo show {query}? Answer yes or no."
YES_VARIANTS = ("yes", "Yes", "YES", " yes", " Yes", "YES.", "yes.")
NO_VARIANTS = ("no", "No", "NO", " no", " No", "no.", "No.")


@dataclass
class RerankedHit:
    """A search hit with its blended score and both of its parts."""

    id: int
    score: float
    clip_score: float
    p_yes: float
    paths: list[str] = field(default_factory=list)
    clip_rank: int = 0  # 1-based rank before re-ranking

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def answer_token_ids(tokenizer: Any, variants: Sequence[str]) -> list[int]:
    """Ids of the variants that are one token each (unknown-token ids left out), without repeats."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids: dict[int, None] = {}
    for v in variants:
        got = tokenizer(v, add_special_tokens=False)["input_ids"]
        if len(got) == 1 and got[0] != unk:
            ids.setdefault(int(got[0]), None)
    if not ids:
        raise InputError(f"the VLM's tokenizer has no single token for any of {list(variants)}")
    return list(ids)


def p_yes(vlm: VLM, images: Sequence[Image.Image], question: str, batch_size: int = 16,
          budget: ImageBudget | None = None) -> np.ndarray:
    """``P(yes) / (P(yes) + P(no))`` for ``question`` about each image (one forward pass per batch)."""
    import torch

    yes = answer_token_ids(vlm.tokenizer, YES_VARIANTS)
    no = answer_token_ids(vlm.tokenizer, NO_VARIANTS)
    out: list[float] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        prepared = vlm.prepare([Request.question([im], question) for im in chunk], budget)
        probs = torch.softmax(vlm.next_token_logits(prepared), dim=-1)
        py, pn = probs[:, yes].sum(dim=1), probs[:, no].sum(dim=1)
        out += (py / (py + pn).clamp_min(1e-12)).tolist()
    return np.asarray(out, dtype=np.float64)


def blend(clip_scores: np.ndarray, p: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * minmax(clip) + weight * p`` (see the module docstring)."""
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"rerank weight must be in [0, 1], got {weight}")
    clip_scores = np.asarray(clip_scores, dtype=np.float64)
    span = clip_scores.max() - clip_scores.min() if len(clip_scores) else 0.0
    scaled = (clip_scores - clip_scores.min()) / span if span > 0 else np.ones_like(clip_scores)
    return (1.0 - weight) * scaled + weight * np.asarray(p, dtype=np.float64)


def rerank_hits(vlm: VLM, hits: Sequence[SearchHit], images: Sequence[Image.Image], query: str, *,
                weight: float = 0.5, template: str = RERANK_TEMPLATE, batch_size: int = 16) -> list[RerankedHit]:
    """Re-score ``hits`` (with their decoded ``images``) best first."""
    if "{query}" not in template:
        raise InputError("the rerank template must contain {query}")
    if not hits:
        return []
    p = p_yes(vlm, images, template.format(query=query.strip()), batch_size)
    clip = np.asarray([h.score for h in hits])
    scores = blend(clip, p, weight)
    order = np.argsort(-scores, kind="stable")
    return [RerankedHit(hits[i].id, float(scores[i]), float(clip[i]), float(p[i]), hits[i].paths, int(i) + 1)
            for i in order]


def rerank(searcher: Searcher, vlm: VLM, query: str, options: SearchOptions | None = None, *, rerank_k: int = 50,
           weight: float = 0.5, template: str = RERANK_TEMPLATE,
           image_loader: Callable[[SearchHit, int], Image.Image] | None = None,
           max_image_side: int = 1024) -> list[RerankedHit]:
    """Text search for ``query``, then re-rank its top ``rerank_k`` with the VLM; returns ``options.k`` (after offset)."""
    from .rag import load_photo

    options = (options or SearchOptions()).validate()
    if rerank_k < 1:
        raise InputError(f"--rerank-k must be at least 1, got {rerank_k}")
    loader = image_loader or load_photo
    want = options.offset + options.k
    hits = searcher.search_text(query, replace(options, k=max(rerank_k, want), offset=0))
    images, usable = [], []
    for h in hits:
        try:
            images.append(loader(h, max_image_side))
            usable.append(h)
        except InputError as exc:
            log.warning("re-rank skips %s", exc)
    ranked = rerank_hits(vlm, usable, images, query, weight=weight, template=template)
    return ranked[options.offset: want]
