"""Image<->text Recall@K as clip_benchmark's ``zeroshot_retrieval`` computes it (the figures papers publish).

Every caption is a query over all images: ``image_retrieval_recall@k`` is the share of captions whose
own image is among the k images scored highest for it. Every image is a query over all captions:
``text_retrieval_recall@k`` is the share of images for which at least one of their captions is among
the k captions scored highest for it. Scores are cosines of unit vectors.

A query's answer is "in the top k" when fewer than k candidates score strictly higher than its best
positive, so exact ties (identical captions of different images) count in the query's favour;
clip_benchmark's ``torch.topk`` breaks such ties by position instead. Off ties the two agree exactly,
down to the float32 division clip_benchmark reports (``hits / n`` rounded to float32), which is
reproduced so that a figure here equals the one in its leaderboard files bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_KS", "RetrievalRecall", "retrieval_recall"]

DEFAULT_KS = (1, 5, 10)
_BLOCK = 1 << 24  # score-matrix entries per block: 64 MiB of float32 at a time, whatever the data set size


@dataclass(frozen=True)
class RetrievalRecall:
    """Hit counts per k in both directions, and the figures named as clip_benchmark names them."""

    n_images: int
    n_captions: int
    image_hits: dict[int, int]  # captions whose image was found in the top k (text -> image)
    text_hits: dict[int, int]  # images with one of their captions in the top k (image -> text)

    def metrics(self) -> dict[str, float]:
        """``{"image_retrieval_recall@1": ..., "text_retrieval_recall@1": ..., ...}`` in clip_benchmark's order."""
        out: dict[str, float] = {}
        for k in self.image_hits:
            out[f"image_retrieval_recall@{k}"] = _ratio(self.image_hits[k], self.n_captions)
            out[f"text_retrieval_recall@{k}"] = _ratio(self.text_hits[k], self.n_images)
        return out


def _ratio(hits: int, n: int) -> float:
    """``hits / n`` as clip_benchmark gets it: the float32 mean of 0/1 values (exact sum, one rounding)."""
    return float(np.float32(hits) / np.float32(n))


def retrieval_recall(image_vectors: np.ndarray, caption_vectors: np.ndarray, caption_image: np.ndarray,
                     ks: Sequence[int] = DEFAULT_KS) -> RetrievalRecall:
    """Recall@k both ways for unit ``image_vectors`` (n, d), ``caption_vectors`` (m, d) and each caption's image."""
    img = np.ascontiguousarray(image_vectors, dtype=np.float32)
    cap = np.ascontiguousarray(caption_vectors, dtype=np.float32)
    owner = np.asarray(caption_image, dtype=np.int64)
    n, m = len(img), len(cap)
    if img.ndim != 2 or cap.ndim != 2 or img.shape[1] != cap.shape[1]:
        raise ValueError(f"vectors of one dimension expected, got {img.shape} and {cap.shape}")
    if owner.shape != (m,) or (m and (owner.min() < 0 or owner.max() >= n)):
        raise ValueError("caption_image must give each caption the index of one of the images")
    if n == 0 or m == 0 or np.bincount(owner, minlength=n).min() == 0:
        raise ValueError("every image needs at least one caption, and there must be some")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"k must be at least 1, got {ks}")
    # text -> image: rank of the caption's own image among all images
    caption_rank = np.empty(m, np.int64)
    step = max(1, _BLOCK // n)
    for s in range(0, m, step):
        scores = cap[s:s + step] @ img.T  # (b, n)
        own = scores[np.arange(len(scores)), owner[s:s + step]]
        caption_rank[s:s + step] = (scores > own[:, None]).sum(axis=1)
    # image -> text: rank of the image's best-scored own caption among all captions
    image_rank = np.empty(n, np.int64)
    step = max(1, _BLOCK // m)
    for s in range(0, n, step):
        scores = img[s:s + step] @ cap.T  # (b, m)
        rows = np.arange(s, min(s + step, n))
        positive = owner[None, :] == rows[:, None]
        best = np.where(positive, scores, -np.inf).max(axis=1)
        image_rank[s:s + step] = (scores > best[:, None]).sum(axis=1)
    return RetrievalRecall(n, m, {k: int((caption_rank < k).sum()) for k in ks},
                           {k: int((image_rank < k).sum()) for k in ks})
