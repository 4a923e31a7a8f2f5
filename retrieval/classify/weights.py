"""Prompt-ensemble zero-shot weights: class names x templates → one unit vector per class.

A pure function of the class names, the templates and a text encoder callable (open_clip's
``build_zero_shot_classifier`` transposed), so weights can be cached by
:func:`classifier_key` (encoder spec id + digest of labels and templates).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from retrieval.scoring import l2_normalize

from .labels import expand_prompts, validate_classnames
from .templates import ensure_templates

EncodeTexts = Callable[[list[str]], np.ndarray]
"""Maps a list of prompts to an (len(prompts), dim) array of text embeddings."""


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
        emb = np.asarray(encode_texts(batch), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(batch):
            raise ValueError(
                f"encode_texts returned shape {emb.shape} for {len(batch)} prompts; "
                "expected (n_prompts, dim)"
            )
        if dim is None:
            dim = emb.shape[1]
        elif emb.shape[1] != dim:
            raise ValueError(f"encode_texts changed embedding dim from {dim} to {emb.shape[1]}")
        yield offset, l2_normalize(emb)


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
    return l2_normalize(sums / n_templates).astype(np.float32)


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
