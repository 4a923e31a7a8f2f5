"""Scoring vectors against a policy and turning scores into decisions (pure NumPy).

Per concept, each positive prompt is a prompt ensemble (its templates averaged, as zero-shot
weights); the concept's **score** is the best cosine over its positive ensembles, minus the best
cosine over its contrast ensembles when it has any (a margin). A concept is **hit** when its
score reaches its threshold, in **review** when it reaches only its review threshold.

Special care (the Stable Diffusion safety checker's rule): when any ``special_care`` concept is
hit, the thresholds (decision and review) of every concept that is not itself special care are lowered by
``special_care_adjustment``, i.e. made stricter. The decision is the strongest action among hit
concepts (``flag`` < ``quarantine`` < ``block``), else ``review`` if any concept is in its
review band, else ``allow``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from retrieval.classify.weights import build_zero_shot_weights
from retrieval.scoring import l2_normalize

from ..outcomes import OUTCOMES
from .policy import Policy, PolicyError

EncodeTexts = Callable[[list[str]], np.ndarray]

SCORE_RULE = "max-positive-minus-max-contrast/v1"  # part of every score key: change it if scoring changes
ALLOW, REVIEW = 0, 1  # outcome ranks; OUTCOMES[rank] is the name
LEVEL_NONE, LEVEL_REVIEW, LEVEL_HIT = 0, 1, 2


def prompt_rows(policy: Policy) -> list[tuple[int, int]]:
    """Per concept, (number of positive ensembles, number of contrast ensembles): the weights' layout."""
    return [(len(c.prompts), len(c.contrast)) for c in policy.concepts]


def build_policy_weights(policy: Policy, encode_texts: EncodeTexts) -> np.ndarray:
    """Unit prompt-ensemble vectors, concept by concept: positives then contrasts; (P, d) float32."""
    parts = []
    for c in policy.concepts:
        templates = c.template_list()
        parts.append(build_zero_shot_weights(c.prompts, templates, encode_texts))
        if c.contrast:
            parts.append(build_zero_shot_weights(c.contrast, templates, encode_texts))
    return np.concatenate(parts).astype(np.float32)


def concept_scores_from_similarities(sims: np.ndarray, layout: Sequence[tuple[int, int]]) -> np.ndarray:
    """(n, C) concept scores from (n, P) prompt cosines laid out as :func:`prompt_rows` says."""
    sims = np.asarray(sims, dtype=np.float32)
    if sims.ndim != 2 or sims.shape[1] != sum(p + q for p, q in layout):
        raise ValueError(f"similarities of shape {sims.shape} do not match the layout {list(layout)}")
    return _scores_by_row(np.ascontiguousarray(sims.T), layout).T


def _scores_by_row(sims_t: np.ndarray, layout: Sequence[tuple[int, int]]) -> np.ndarray:
    """(C, n) concept scores from (P, n) prompt cosines: maxima over contiguous rows, in place (fast)."""
    out = np.empty((len(layout), sims_t.shape[1]), dtype=np.float32)
    row = 0
    for j, (pos, con) in enumerate(layout):
        _row_max(sims_t, row, pos, out[j])
        if con:
            best = sims_t[row + pos] if con == 1 else _row_max(sims_t, row + pos, con, np.empty_like(out[j]))
            np.subtract(out[j], best, out=out[j])
        row += pos + con
    return out


def _row_max(sims_t: np.ndarray, row: int, count: int, out: np.ndarray) -> np.ndarray:
    if count == 1:
        out[...] = sims_t[row]
        return out
    np.maximum(sims_t[row], sims_t[row + 1], out=out)
    for k in range(row + 2, row + count):
        np.maximum(out, sims_t[k], out=out)
    return out


def score_keys(policy: Policy, weights: np.ndarray) -> list[bytes]:
    """Per concept, a digest of everything its score depends on besides the image vector: its prompt
    (and contrast) vectors and their layout. Equal keys mean equal scores for every stored vector."""
    keys, row = [], 0
    w = np.ascontiguousarray(weights, dtype="<f4")
    for pos, con in prompt_rows(policy):
        h = hashlib.blake2b(f"{SCORE_RULE}:{pos}:{con}:{w.shape[1]}".encode(), digest_size=16)
        h.update(w[row:row + pos + con].tobytes())
        keys.append(h.digest())
        row += pos + con
    return keys


@dataclass(frozen=True)
class DecisionArrays:
    """Decisions of n vectors under C concepts, as arrays (see :func:`decide_arrays`)."""

    scores: np.ndarray  # (n, C) float32
    levels: np.ndarray  # (n, C) int8: LEVEL_NONE / LEVEL_REVIEW / LEVEL_HIT
    outcome: np.ndarray  # (n,) int8 rank into OUTCOMES
    adjusted: np.ndarray  # (n,) bool: the special-care adjustment applied

    def __len__(self) -> int:
        return len(self.outcome)


def decide_arrays(
    scores: np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    review_thresholds: Sequence[float | None] | np.ndarray,
    action_ranks: Sequence[int] | np.ndarray,
    special_care: Sequence[bool] | np.ndarray,
    adjustment: float = 0.0,
) -> DecisionArrays:
    """Decisions from (n, C) concept scores; ``review_thresholds`` may hold None/NaN (no band).

    ``action_ranks`` are ranks into :data:`~retrieval.moderation.policy.OUTCOMES` (flag 2,
    quarantine 3, block 4).
    """
    s = np.asarray(scores, dtype=np.float32)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (n, concepts), got shape {s.shape}")
    thr = np.asarray(thresholds, dtype=np.float64)
    rev = np.asarray([np.nan if r is None else r for r in review_thresholds], dtype=np.float64)
    rev = np.minimum(np.where(np.isnan(rev), thr, rev), thr)  # no band: review only where already hit
    ranks = np.asarray(action_ranks, dtype=np.int8)
    special = np.asarray(special_care, dtype=bool)
    if not (len(thr) == len(rev) == len(ranks) == len(special) == s.shape[1]):
        raise ValueError("one threshold, review threshold, action and special-care flag per concept is needed")
    by_concept = np.ascontiguousarray(s.T)  # (C, n): each concept's scores contiguous
    n = s.shape[0]
    hit32, rev32 = _ceil32(thr), _ceil32(rev)
    adjusted = np.zeros(n, bool)
    for j in np.flatnonzero(special):
        adjusted |= by_concept[j] >= hit32[j]
    any_adjusted = bool(adjusted.any())
    hit_adj, rev_adj = _ceil32(thr - adjustment), _ceil32(rev - adjustment)
    levels = np.empty_like(by_concept, dtype=np.int8)
    outcome = np.zeros(n, np.int8)
    for j, row in enumerate(by_concept):
        if any_adjusted and not special[j]:
            level = (row >= np.where(adjusted, rev_adj[j], rev32[j])).view(np.int8) \
                + (row >= np.where(adjusted, hit_adj[j], hit32[j])).view(np.int8)
        else:
            level = (row >= rev32[j]).view(np.int8) + (row >= hit32[j]).view(np.int8)
        levels[j] = level  # 0 none, 1 review, 2 hit (a hit also reaches the lower review threshold)
        np.maximum(outcome, np.array([ALLOW, REVIEW, ranks[j]], np.int8)[level], out=outcome)
    return DecisionArrays(s, levels.T, outcome, adjusted)


def _ceil32(values: np.ndarray) -> np.ndarray:
    """The smallest float32 >= each value: ``s >= t`` in float32 then equals the exact comparison."""
    t = np.asarray(values, dtype=np.float64).astype(np.float32)
    return np.where(t.astype(np.float64) < values, np.nextafter(t, np.float32(np.inf)), t).astype(np.float32)


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy ready to score vectors: its prompt weights and per-concept arrays."""

    policy: Policy
    weights: np.ndarray  # (P, d) unit rows, laid out by prompt_rows(policy)

    def __post_init__(self) -> None:
        rows = sum(p + q for p, q in prompt_rows(self.policy))
        if self.weights.ndim != 2 or self.weights.shape[0] != rows:
            raise PolicyError(f"policy {self.policy.name!r} needs {rows} prompt vectors, "
                              f"got shape {self.weights.shape}")

    @property
    def names(self) -> list[str]:
        return self.policy.concept_names

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(n, C) concept scores of unit vectors (n, d)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vectors must be (n, {self.dim}), got shape {x.shape}")
        sims_t = self.weights @ x.T  # (P, n) with contiguous rows, no transpose copy; one BLAS call
        return _scores_by_row(sims_t, prompt_rows(self.policy)).T  # (C, n) contiguous, seen as (n, C)

    def score_keys(self) -> list[bytes]:
        """See :func:`score_keys`."""
        return score_keys(self.policy, self.weights)

    def decide_scores(self, scores: np.ndarray) -> DecisionArrays:
        cs = self.policy.concepts
        return decide_arrays(scores, [c.threshold for c in cs], [c.review_threshold for c in cs],
                             [OUTCOMES.index(c.action) for c in cs], [c.special_care for c in cs],
                             self.policy.special_care_adjustment)

    def decide(self, vectors: np.ndarray) -> DecisionArrays:
        return self.decide_scores(self.scores(l2_normalize(np.asarray(vectors, dtype=np.float32))))


@dataclass
class ConceptResult:
    """One concept's part of a decision: score, effective thresholds, margin and level."""

    name: str
    score: float
    threshold: float  # effective (after the special-care adjustment)
    review_threshold: float | None
    margin: float  # score - threshold: >= 0 means hit
    level: str  # "hit" | "review" | "none"
    action: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Decision:
    """The decision for one image: the outcome, every concept's result and the policy version."""

    source: str
    action: str
    concepts: list[ConceptResult]
    policy: str
    version: int | None
    adjusted: bool = False
    photo_id: int | None = None
    error: str | None = None

    @property
    def hits(self) -> list[str]:
        return [c.name for c in self.concepts if c.level == "hit"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hits"] = self.hits
        return out


_LEVEL_NAMES = {LEVEL_NONE: "none", LEVEL_REVIEW: "review", LEVEL_HIT: "hit"}


def explain_row(compiled: CompiledPolicy, arrays: DecisionArrays, row: int, source: str,
                version: int | None, photo_id: int | None = None) -> Decision:
    """The :class:`Decision` of one row of ``arrays``."""
    adj = bool(arrays.adjusted[row])
    results = []
    for j, c in enumerate(compiled.policy.concepts):
        shift = compiled.policy.special_care_adjustment if adj and not c.special_care else 0.0
        thr = c.threshold - shift
        score = float(arrays.scores[row, j])
        results.append(ConceptResult(
            name=c.name, score=round(score, 6), threshold=round(thr, 6),
            review_threshold=None if c.review_threshold is None else round(c.review_threshold - shift, 6),
            margin=round(score - thr, 6), level=_LEVEL_NAMES[int(arrays.levels[row, j])], action=c.action))
    return Decision(source=source, action=OUTCOMES[int(arrays.outcome[row])], concepts=results,
                    policy=compiled.policy.name, version=version, adjusted=adj, photo_id=photo_id)
