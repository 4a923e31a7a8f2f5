"""Accuracy reports for zero-shot (and few-shot) classifiers over labelled vectors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from retrieval.scoring import l2_normalize

from .labels import validate_classnames
from .scoring import zero_shot_probs
from .templates import ensure_templates
from .weights import EncodeTexts, encode_prompt_embeddings

__all__ = [
    "EvalReport",
    "TemplateComparison",
    "compare_templates",
    "evaluate_scores",
    "evaluate_zero_shot",
]


@dataclass(frozen=True)
class EvalReport:
    """Classification accuracy summary.

    ``per_class`` maps class name (or index) to accuracy (its recall), for classes that
    occur in the labels; ``confusions`` lists the most frequent ``(true, predicted, count)``
    errors, most frequent first; ``mean_per_class_recall`` is the mean of ``per_class``
    (clip_benchmark's figure: scikit-learn's ``balanced_accuracy_score``, which averages the
    recall of the classes present in the labels).
    """

    n: int
    top1: float
    top5: float
    per_class: dict[str | int, float] = field(default_factory=dict)
    confusions: list[tuple[str | int, str | int, int]] = field(default_factory=list)
    mean_per_class_recall: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TemplateComparison:
    """Top-1 accuracy of each single template and of their ensemble."""

    per_template: list[tuple[str, float]]
    ensemble_top1: float

    @property
    def worst_single_top1(self) -> float:
        return min(acc for _, acc in self.per_template)

    @property
    def best_single_top1(self) -> float:
        return max(acc for _, acc in self.per_template)


def _check_labels(labels: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must be 1-D with {n} entries, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes}), got range [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def evaluate_scores(
    scores: np.ndarray,
    labels: np.ndarray,
    classnames: Sequence[str] | None = None,
    n_confusions: int = 10,
) -> EvalReport:
    """Report for any (n, c) score matrix (probabilities, logits or cosines) vs int labels."""
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (n, n_classes), got shape {s.shape}")
    n, c = s.shape
    y = _check_labels(labels, n, c)
    if classnames is not None and len(classnames) != c:
        raise ValueError(f"{len(classnames)} classnames for {c} score columns")
    names: Sequence[str | int] = list(classnames) if classnames is not None else list(range(c))
    if n == 0:
        return EvalReport(n=0, top1=float("nan"), top5=float("nan"))
    pred = s.argmax(axis=1)
    correct = pred == y
    k = min(5, c)
    topk = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < c else np.broadcast_to(np.arange(c), s.shape)
    top5 = float((topk == y[:, None]).any(axis=1).mean())
    counts = np.bincount(y, minlength=c)
    hits = np.bincount(y, weights=correct, minlength=c)
    per_class = {names[i]: float(hits[i] / counts[i]) for i in range(c) if counts[i]}
    wrong = ~correct
    pairs, pair_counts = np.unique(np.stack([y[wrong], pred[wrong]], axis=1), axis=0, return_counts=True)
    order = sorted(range(len(pair_counts)), key=lambda i: (-pair_counts[i], *pairs[i]))[:n_confusions]
    confusions = [(names[pairs[i][0]], names[pairs[i][1]], int(pair_counts[i])) for i in order]
    recalls = hits[counts > 0] / counts[counts > 0]
    return EvalReport(n=n, top1=float(correct.mean()), top5=top5, per_class=per_class, confusions=confusions,
                      mean_per_class_recall=float(recalls.mean()))


def evaluate_zero_shot(
    image_vectors: np.ndarray,
    labels: np.ndarray,
    classnames: Sequence[str],
    weights: np.ndarray,
    logit_scale: float,
) -> EvalReport:
    """Top-1/top-5, per-class accuracy and top-10 confusions of zero-shot weights."""
    names = validate_classnames(classnames)
    if len(names) != np.shape(weights)[0]:
        raise ValueError(f"{len(names)} classnames for {np.shape(weights)[0]} weight rows")
    return evaluate_scores(zero_shot_probs(image_vectors, weights, logit_scale), labels, names)


def compare_templates(
    image_vectors: np.ndarray,
    labels: np.ndarray,
    classnames: Sequence[str],
    template_set: str | Sequence[str],
    encode_texts: EncodeTexts,
    logit_scale: float,
    batch_size: int = 256,
) -> TemplateComparison:
    """Top-1 of each template on its own versus the prompt ensemble of all of them.

    Each prompt is encoded once; single-template weights are the normalised prompt
    embeddings and the ensemble weights their normalised mean (as in
    :func:`retrieval.zeroshot.build_zero_shot_weights`).
    """
    names = validate_classnames(classnames)
    templates = ensure_templates(template_set)
    emb = encode_prompt_embeddings(names, templates, encode_texts, batch_size)  # (c, t, d)

    def top1(weights: np.ndarray) -> float:
        return evaluate_scores(zero_shot_probs(image_vectors, weights, logit_scale), labels).top1

    per_template = [(t, top1(emb[:, j, :])) for j, t in enumerate(templates)]
    ensemble = l2_normalize(emb.astype(np.float64).mean(axis=1)).astype(np.float32)
    return TemplateComparison(per_template=per_template, ensemble_top1=top1(ensemble))
