"""Scoring stored image vectors against class weights: cosines, probabilities, top-k, thresholds."""

from __future__ import annotations

import numpy as np

from retrieval.scoring import TopK, l2_normalize, softmax


def _as_2d_float32(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    return arr


def cosine_scores(image_vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Cosine similarity (n, c) between image vectors (n, d) and class weights (c, d)."""
    x = _as_2d_float32(image_vectors, "image_vectors")
    w = _as_2d_float32(weights, "weights")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"dimension mismatch: vectors have {x.shape[1]}, weights {w.shape[1]}")
    return l2_normalize(x) @ l2_normalize(w).T


SOFTMAX = "softmax"
SIGMOID = "sigmoid"


def scoring_kind(logit_bias: float | None) -> str:
    """How a model's label probabilities are made: CLIP's softmax over the labels, or SigLIP's sigmoid per label."""
    return SOFTMAX if logit_bias is None else SIGMOID


def zero_shot_probs(image_vectors: np.ndarray, weights: np.ndarray, logit_scale: float,
                    logit_bias: float | None = None) -> np.ndarray:
    """Class probabilities (n, c): ``softmax(logit_scale * cosine)`` over the given classes, or with a model's
    ``logit_bias`` (SigLIP) ``sigmoid(logit_scale * cosine + logit_bias)`` for each class on its own: the
    probability that the label applies, which does not change when other labels are added."""
    logits = float(logit_scale) * cosine_scores(image_vectors, weights)
    if logit_bias is None:
        return softmax(logits)
    return (1.0 / (1.0 + np.exp(-(logits + np.float32(logit_bias))))).astype(np.float32)


def multi_label(scores: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """Boolean (n, c) mask ``scores >= thresholds`` with a scalar or per-class threshold.

    Intended for **raw cosine similarities** (:func:`cosine_scores`): a class's cosine
    does not depend on which other labels are in the list, so per-class thresholds
    tuned once stay valid when labels are added or removed; softmax probabilities do
    not have that property (they are renormalised over the label list).
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (n, n_classes), got shape {s.shape}")
    t = np.asarray(thresholds, dtype=s.dtype if np.issubdtype(s.dtype, np.floating) else np.float32)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != s.shape[1]):
        raise ValueError(
            f"thresholds must be a scalar or have one value per class ({s.shape[1]}), got shape {t.shape}"
        )
    return s >= t


def classify_vectors(
    vectors: np.ndarray,
    weights: np.ndarray,
    logit_scale: float,
    k: int = 5,
    chunk: int = 65536,
    normalize: bool = True,
    logit_bias: float | None = None,
) -> TopK:
    """Top-k classes and softmax probabilities (sigmoid ones with a ``logit_bias``) for many vectors, in bounded memory.

    Per chunk of ``chunk`` rows: one float32 ``np.matmul`` of (chunk, d) x (d, c) into a reused
    buffer with ``logit_scale`` folded into the weights; the buffer is then turned into
    ``exp(logit - row max)`` in place and ``torch.topk`` picks the top-k (exp keeps the order), whose
    probabilities are their share of the row sum. Public torch kernels (multithreaded) throughout:
    NumPy's single-threaded argpartition and exp measured 2x slower here (``bench/bench_tagging.py
    --profile``), and no probability matrix is allocated.
    Results equal ``top_k(zero_shot_probs(vectors, weights, logit_scale, logit_bias), k)`` up to float rounding.
    ``vectors`` may be any sliceable 2-D array (e.g. ``np.memmap``). With ``normalize=True``
    rows are L2-normalised, skipping chunks already unit-norm to 1e-6.
    Memory: about ``chunk * (c + d) * 4`` bytes besides the (n, k) outputs.
    """
    import torch  # lazily: searching never needs it

    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if getattr(vectors, "ndim", 2) != 2:
        raise ValueError(f"vectors must be 2-D, got shape {getattr(vectors, 'shape', None)}")
    w = l2_normalize(_as_2d_float32(weights, "weights"))
    n, c = len(vectors), w.shape[0]
    if n and vectors.shape[1] != w.shape[1]:
        raise ValueError(f"dimension mismatch: vectors have {vectors.shape[1]}, weights {w.shape[1]}")
    k = min(int(k), c)
    scaled_wt = np.ascontiguousarray((w * np.float32(logit_scale)).T)
    out_idx = np.empty((n, k), dtype=np.int64)
    out_prob = np.empty((n, k), dtype=np.float32)
    logits_buf = np.empty((min(chunk, max(n, 1)), c), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            x = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
            if normalize:
                sq_norms = np.einsum("ij,ij->i", x, x)
                if np.abs(sq_norms - 1.0).max() > 2e-6:  # |norm - 1| > ~1e-6
                    x = x / np.maximum(np.sqrt(sq_norms), 1e-12)[:, None]
            logits = torch.from_numpy(np.matmul(x, scaled_wt, out=logits_buf[: stop - start]))  # O(n*d*c)
            if logit_bias is not None:  # SigLIP: each label on its own; sigmoid is monotone, so rank the logits
                top = torch.topk(logits, k, dim=1, largest=True, sorted=True)
                out_prob[start:stop] = torch.sigmoid(top.values + float(logit_bias)).numpy()
                out_idx[start:stop] = top.indices.numpy()
                continue
            exps = logits.sub_(torch.amax(logits, dim=1, keepdim=True)).exp_()  # in place: no new matrix
            top = torch.topk(exps, k, dim=1, largest=True, sorted=True)  # exp is monotone: same ranking
            out_prob[start:stop] = (top.values / exps.sum(dim=1, keepdim=True)).numpy()
            out_idx[start:stop] = top.indices.numpy()
    return TopK(out_idx, out_prob)
