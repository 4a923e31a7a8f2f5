"""Zero-shot classification of stored image vectors with prompt-ensemble text weights.

The classifier is a pure function of the class names, the prompt templates and a
text encoder callable, so it can be built once per (encoder, label list, templates)
and cached (:class:`ZeroShotCache`). Scoring works on stored, L2-normalised image
vectors and is chunked so that whole libraries (millions of vectors) can be tagged
in bounded memory (:func:`classify_vectors`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from indexer.atomic import atomic_write
from retrieval.templates import ensure_templates

__all__ = [
    "EncodeTexts",
    "TopK",
    "ZeroShotCache",
    "build_zero_shot_weights",
    "classifier_key",
    "classify_vectors",
    "cosine_scores",
    "encode_prompt_embeddings",
    "expand_prompts",
    "multi_label",
    "normalize_rows",
    "softmax",
    "top_k",
    "validate_classnames",
    "zero_shot_probs",
]

log = logging.getLogger(__name__)

EncodeTexts = Callable[[list[str]], np.ndarray]
"""Maps a list of prompts to an (len(prompts), dim) array of text embeddings."""

_EPS = 1e-12


class TopK(NamedTuple):
    """Per-row top-k class indices (int64) and their scores, best first."""

    indices: np.ndarray
    values: np.ndarray


# --------------------------------------------------------------------------- inputs


def validate_classnames(classnames: Sequence[str]) -> tuple[str, ...]:
    """Return the labels as a tuple; raise ``ValueError`` if empty, blank or duplicated.

    Duplicates are detected case-insensitively and ignoring whitespace differences
    ("Golden  Retriever" duplicates "golden retriever").
    """
    if isinstance(classnames, str):
        raise ValueError("classnames must be a sequence of labels, not a single string")
    names = tuple(classnames)
    if not names:
        raise ValueError("no class labels given: the label list is empty")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"class label #{i} must be a str, got {type(name).__name__}")
        key = " ".join(name.split()).casefold()
        if not key:
            raise ValueError(f"class label #{i} is empty or whitespace-only")
        if key in seen:
            j = seen[key]
            raise ValueError(
                f"duplicate class labels #{j} {names[j]!r} and #{i} {name!r} "
                "(labels are compared case- and whitespace-insensitively)"
            )
        seen[key] = i
    return names


def expand_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, class-major: ``[t.format(c) for c in classnames for t in templates]``."""
    return [t.format(c) for c in classnames for t in templates]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise the rows of a 2-D array (zero rows stay zero); keeps float dtype."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, _EPS).astype(x.dtype)


# ------------------------------------------------------------------ text weights


def _encoded_prompt_batches(
    classnames: Sequence[str],
    templates: Sequence[str],
    encode_texts: EncodeTexts,
    batch_size: int,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(offset, embeddings)`` for consecutive prompt batches, rows L2-normalised."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = expand_prompts(classnames, templates)
    dim: int | None = None
    for offset in range(0, len(prompts), batch_size):
        batch = prompts[offset : offset + batch_size]
        emb = encode_texts(batch)
        if isinstance(emb, torch.Tensor):
            emb = emb.detach().cpu().numpy()
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(batch):
            raise ValueError(
                f"encode_texts returned shape {emb.shape} for {len(batch)} prompts; "
                "expected (n_prompts, dim)"
            )
        if dim is None:
            dim = emb.shape[1]
        elif emb.shape[1] != dim:
            raise ValueError(f"encode_texts changed embedding dim from {dim} to {emb.shape[1]}")
        yield offset, normalize_rows(emb)


def encode_prompt_embeddings(
    classnames: Sequence[str],
    templates: Sequence[str],
    encode_texts: EncodeTexts,
    batch_size: int = 256,
) -> np.ndarray:
    """Normalised embeddings of every prompt as a (n_classes, n_templates, dim) float32 array.

    Holds all prompt embeddings in memory; :func:`build_zero_shot_weights` does not.
    """
    names = validate_classnames(classnames)
    templates = ensure_templates(templates)
    parts = [emb for _, emb in _encoded_prompt_batches(names, templates, encode_texts, batch_size)]
    return np.concatenate(parts).reshape(len(names), len(templates), -1)


def build_zero_shot_weights(
    classnames: Sequence[str],
    templates: Sequence[str],
    encode_texts: EncodeTexts,
    batch_size: int = 256,
) -> np.ndarray:
    """Prompt-ensemble zero-shot classifier weights, shape (n_classes, dim), float32.

    For each class, every template is filled with the class name, the prompts are
    encoded in batches of ``batch_size``, each embedding is L2-normalised, the
    embeddings are averaged over templates and the mean is re-normalised. This is
    ``open_clip.build_zero_shot_classifier(...)`` transposed, with the encoder
    abstracted as a callable. Memory is O(n_classes * dim + batch_size * dim).
    """
    names = validate_classnames(classnames)
    templates = ensure_templates(templates)
    n_templates = len(templates)
    sums: np.ndarray | None = None
    for offset, emb in _encoded_prompt_batches(names, templates, encode_texts, batch_size):
        if sums is None:
            sums = np.zeros((len(names), emb.shape[1]), dtype=np.float64)
        rows = np.arange(offset, offset + emb.shape[0])
        cls = rows // n_templates
        first, rel = cls[0], cls - cls[0]
        onehot = np.zeros((rel[-1] + 1, emb.shape[0]), dtype=np.float64)
        onehot[rel, np.arange(emb.shape[0])] = 1.0
        sums[first : first + rel[-1] + 1] += onehot @ emb.astype(np.float64)
    assert sums is not None  # validate_classnames/ensure_templates guarantee >= 1 prompt
    return normalize_rows(sums / n_templates).astype(np.float32)


# ------------------------------------------------------------------------- cache


def classifier_key(spec_id: str, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """Cache key ``"<spec_id>:<sha256 of JSON {classnames, templates}>"``.

    ``spec_id`` identifies the text encoder (model + weights); any change of label
    order, spelling or templates changes the digest.
    """
    if not spec_id:
        raise ValueError("spec_id (encoder identifier) must be a non-empty string")
    payload = json.dumps(
        {"classnames": list(classnames), "templates": list(templates)},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return f"{spec_id}:{hashlib.sha256(payload.encode('utf-8')).hexdigest()}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:64] or "encoder"


class ZeroShotCache:
    """Zero-shot weights keyed by :func:`classifier_key`: LRU in memory, optionally on disk.

    On disk each entry is ``<directory>/<encoder-slug>-<hash8>/<digest>.npy``, written
    atomically (temporary file in the same directory, then ``os.replace``). Returned
    arrays are read-only views shared between callers.
    """

    def __init__(self, directory: str | Path | None = None, max_memory_items: int = 64) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_memory_items = max(1, int(max_memory_items))
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path | None:
        """Where *key* is stored on disk (``None`` for a memory-only cache)."""
        if self.directory is None:
            return None
        spec_id, _, digest = key.rpartition(":")
        if not spec_id or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"not a classifier_key(): {key!r}")
        encoder_hash = hashlib.sha256(spec_id.encode("utf-8")).hexdigest()[:8]
        return self.directory / f"{_slug(spec_id)}-{encoder_hash}" / f"{digest}.npy"

    def _remember(self, key: str, weights: np.ndarray) -> None:
        with self._lock:
            self._memory[key] = weights
            self._memory.move_to_end(key)
            while len(self._memory) > self.max_memory_items:
                self._memory.popitem(last=False)

    def get(self, key: str) -> np.ndarray | None:
        """Cached weights for *key*, or ``None``. Counts hits and misses."""
        with self._lock:
            weights = self._memory.get(key)
            if weights is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return weights
        path = self.path_for(key)
        if path is not None and path.is_file():
            try:
                loaded = np.load(path, allow_pickle=False)
                if loaded.ndim != 2 or loaded.dtype != np.float32:
                    raise ValueError(f"unexpected array {loaded.dtype} {loaded.shape}")
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable zero-shot cache file %s: %s", path, exc)
            else:
                loaded.setflags(write=False)
                self._remember(key, loaded)
                with self._lock:
                    self.hits += 1
                    self.disk_hits += 1
                return loaded
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: str, weights: np.ndarray) -> np.ndarray:
        """Store *weights* (copied as read-only float32) and return the stored array."""
        stored = np.array(weights, dtype=np.float32, copy=True)
        if stored.ndim != 2:
            raise ValueError(f"weights must be 2-D (n_classes, dim), got shape {stored.shape}")
        stored.setflags(write=False)
        path = self.path_for(key)
        if path is not None:
            atomic_write(path, lambda fh: np.save(fh, stored, allow_pickle=False))
        self._remember(key, stored)
        return stored

    def get_or_build(
        self,
        spec_id: str,
        classnames: Sequence[str],
        templates: Sequence[str],
        encode_texts: EncodeTexts,
        batch_size: int = 256,
    ) -> np.ndarray:
        """Cached weights for (encoder, labels, templates), building them on a miss."""
        names = validate_classnames(classnames)
        templates = ensure_templates(templates)
        key = classifier_key(spec_id, names, templates)
        weights = self.get(key)
        if weights is not None and weights.shape[0] == len(names):
            return weights
        log.info("building zero-shot weights for %d classes x %d templates (%s)",
                 len(names), len(templates), spec_id)
        return self.put(key, build_zero_shot_weights(names, templates, encode_texts, batch_size))

    def clear_memory(self) -> None:
        """Drop the in-memory entries (disk files are kept)."""
        with self._lock:
            self._memory.clear()


# ----------------------------------------------------------------------- scoring


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
    return normalize_rows(x) @ normalize_rows(w).T


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (subtracts the row maximum)."""
    z = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def zero_shot_probs(image_vectors: np.ndarray, weights: np.ndarray, logit_scale: float) -> np.ndarray:
    """Class probabilities (n, c): ``softmax(logit_scale * cosine)`` over the given classes."""
    return softmax(float(logit_scale) * cosine_scores(image_vectors, weights))


def top_k(probs: np.ndarray, k: int) -> TopK:
    """Top-k classes per row, best first (``k`` is clipped to the number of classes)."""
    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D, got shape {p.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), p.shape[1])
    if k < p.shape[1]:
        idx = np.argpartition(-p, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(k), p.shape).copy()
    vals = np.take_along_axis(p, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1).astype(np.int64)
    return TopK(idx, np.take_along_axis(vals, order, axis=1))


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


def _softmax_rows_into(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Row softmax written into a preallocated buffer (fused, stable CPU kernel)."""
    try:
        return torch.ops.aten._softmax.out(logits, 1, False, out=out)
    except (AttributeError, RuntimeError, NotImplementedError):  # op not exposed: allocate
        return out.copy_(torch.softmax(logits, dim=1))


def classify_vectors(
    vectors: np.ndarray,
    weights: np.ndarray,
    logit_scale: float,
    k: int = 5,
    chunk: int = 65536,
    normalize: bool = True,
) -> TopK:
    """Top-k classes and softmax probabilities for many vectors, in bounded memory.

    Per chunk of ``chunk`` rows: one float32 ``np.matmul`` of (chunk, d) x (d, c) into
    a reused buffer, with ``logit_scale`` folded into the weights (``np.matmul``
    measured ~20% faster than ``torch.mm`` on the 2-core dev box), ``torch.topk`` on
    the logits (exact ranking), and the fused row-softmax kernel into a second
    reused buffer from which the top-k probabilities are gathered; probabilities
    for all n rows are never held at once.
    Results equal ``top_k(zero_shot_probs(vectors, weights, logit_scale), k)`` up to
    float rounding. ``vectors`` may be any sliceable 2-D array (e.g. ``np.memmap``).
    With ``normalize=True`` rows are L2-normalised, skipping the division for chunks
    whose rows are already unit-norm to 1e-6; ``normalize=False`` trusts the caller.
    Memory: about ``chunk * (2c + d) * 4`` bytes (524 MB at chunk=65536, c=1000)
    besides the (n, k) outputs; lower ``chunk`` to bound it further.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if getattr(vectors, "ndim", 2) != 2:
        raise ValueError(f"vectors must be 2-D, got shape {getattr(vectors, 'shape', None)}")
    w = normalize_rows(_as_2d_float32(weights, "weights"))
    n, c = len(vectors), w.shape[0]
    if n and vectors.shape[1] != w.shape[1]:
        raise ValueError(f"dimension mismatch: vectors have {vectors.shape[1]}, weights {w.shape[1]}")
    k = min(int(k), c)
    scaled_wt = np.ascontiguousarray((w * np.float32(logit_scale)).T)
    out_idx = np.empty((n, k), dtype=np.int64)
    out_prob = np.empty((n, k), dtype=np.float32)
    rows = min(chunk, max(n, 1))
    logits_buf = np.empty((rows, c), dtype=np.float32)
    probs_buf = torch.empty((rows, c), dtype=torch.float32)
    unit_buf = np.empty((rows, w.shape[1]), dtype=np.float32) if normalize else None
    with torch.inference_mode():
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            m = stop - start
            x = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
            if unit_buf is not None:
                sq_norms = np.einsum("ij,ij->i", x, x)
                if np.abs(sq_norms - 1.0).max() > 2e-6:  # |norm - 1| > ~1e-6
                    norms = np.sqrt(sq_norms, out=sq_norms)
                    x = np.divide(x, np.maximum(norms, _EPS)[:, None], out=unit_buf[:m])
            np.matmul(x, scaled_wt, out=logits_buf[:m])  # the O(n*d*c) work
            logits = torch.from_numpy(logits_buf[:m])
            idx = torch.topk(logits, k, dim=1, largest=True, sorted=True).indices
            probs = _softmax_rows_into(logits, probs_buf[:m])
            out_prob[start:stop] = torch.gather(probs, 1, idx).numpy()
            out_idx[start:stop] = idx.numpy()
    return TopK(out_idx, out_prob)
