"""Calibration: a concept's precision-recall curve on labelled examples and the threshold to use.

Pure part (plain arrays): :func:`pr_curve`, :func:`choose_threshold`. A photo is predicted
positive when its score reaches the threshold. The chosen threshold lies halfway between the
lowest score kept positive and the next lower score, so the labelled sets are split exactly
as reported and small numeric differences do not flip a decision.

Service part: score positive and negative examples (image files, folders, catalogued ids)
with a stored policy version, choose the threshold, optionally plot the curve (matplotlib)
and store a new policy version carrying the threshold, the curve and the chosen point.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.collection import Collection
from indexer.core.errors import ConfigError, InputError
from indexer.sync.scan import ScanProblem, scan

from .policy import Concept
from .service import ImageEncoder, check_encoder, unknown_ids_error
from .store import PolicyRecord, save_policy, utcnow

log = logging.getLogger(__name__)

MIN_PER_CLASS = 5
MAX_STORED_POINTS = 200


class CalibrationError(InputError):
    """Examples or targets that cannot give a threshold (one class, too few, unreachable target)."""


@dataclass
class PRCurve:
    """Precision and recall at every distinct score, thresholds descending."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    negatives: int

    def average_precision(self) -> float:
        """Step-wise area under the curve: sum of (recall increase) x precision."""
        return float(np.sum(np.diff(np.concatenate([[0.0], self.recall])) * self.precision))

    def to_dict(self, max_points: int = MAX_STORED_POINTS) -> dict[str, Any]:
        idx = np.unique(np.linspace(0, len(self.thresholds) - 1, min(max_points, len(self.thresholds))).round()
                        .astype(int))
        return {"thresholds": [round(float(x), 6) for x in self.thresholds[idx]],
                "precision": [round(float(x), 6) for x in self.precision[idx]],
                "recall": [round(float(x), 6) for x in self.recall[idx]],
                "positives": self.positives, "negatives": self.negatives,
                "average_precision": round(self.average_precision(), 6)}


def pr_curve(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray,
             min_per_class: int = MIN_PER_CLASS) -> PRCurve:
    """The precision-recall curve of ``scores`` against boolean ``labels`` (positive = True)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.ndim != 1 or s.shape != y.shape:
        raise CalibrationError(f"scores and labels must be 1-D of the same length, got {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise CalibrationError("scores must be finite")
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise CalibrationError(f"calibration needs positive and negative examples; got {pos} positive, "
                               f"{neg} negative (one class only)")
    if min(pos, neg) < min_per_class:
        raise CalibrationError(f"too few examples: {pos} positive and {neg} negative; at least {min_per_class} "
                               "of each are needed")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last row of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return PRCurve(s[last], tp / (tp + fp), tp / pos, tp, fp, pos, neg)


@dataclass
class OperatingPoint:
    """The chosen threshold and what it reaches on the labelled examples."""

    threshold: float
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    tn: int
    target: str  # "precision" | "recall"
    target_value: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def choose_threshold(curve: PRCurve, target_precision: float | None = None,
                     target_recall: float | None = None) -> OperatingPoint:
    """The threshold with the highest recall reaching ``target_precision`` (ties: the higher
    precision), or the highest threshold reaching ``target_recall``."""
    if (target_precision is None) == (target_recall is None):
        raise CalibrationError("give a target precision or a target recall (one of them)")
    target, value = ("precision", target_precision) if target_precision is not None else ("recall", target_recall)
    assert value is not None
    if not 0.0 < value <= 1.0:
        raise CalibrationError(f"target {target} must be in (0, 1], got {value}")
    if target == "precision":
        ok = np.flatnonzero(curve.precision >= value)
        if not len(ok):
            raise CalibrationError(f"no threshold reaches precision {value} on these examples "
                                   f"(best precision {curve.precision.max():.3f})")
        best = ok[np.lexsort((-curve.precision[ok], -curve.recall[ok]))[0]]
    else:
        best = int(np.flatnonzero(curve.recall >= value)[0])  # recall reaches 1 at the lowest score
    t = float(curve.thresholds[best])
    threshold = (t + float(curve.thresholds[best + 1])) / 2 if best + 1 < len(curve.thresholds) else t
    if not -1.0 <= threshold <= 1.0:
        raise CalibrationError(f"the chosen threshold {threshold:.4f} is outside [-1, 1]")
    tp, fp = int(curve.tp[best]), int(curve.fp[best])
    p, r = float(curve.precision[best]), float(curve.recall[best])
    return OperatingPoint(threshold=threshold, precision=p, recall=r, f1=2 * p * r / (p + r) if p + r else 0.0,
                          tp=tp, fp=fp, fn=curve.positives - tp, tn=curve.negatives - fp, target=target,
                          target_value=float(value))


def plot_curve(curve: PRCurve, point: OperatingPoint, path: str | Path, title: str = "") -> Path:
    """Write the precision-recall curve as a PNG with the chosen point marked (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.step(curve.recall, curve.precision, where="post", label=f"AP {curve.average_precision():.3f}")
    ax.scatter([point.recall], [point.precision], color="red", zorder=3,
               label=f"threshold {point.threshold:.4f} (P {point.precision:.2f}, R {point.recall:.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title=title)
    ax.legend(loc="lower left")
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


# ---- service -------------------------------------------------------------------------------------

@dataclass
class Examples:
    """Labelled examples of one class: image files or folders, and catalogued photo ids."""

    paths: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    def files(self) -> list[str]:
        """Every image file named or found (recursively) under the named folders, sorted per root."""
        problems: list[ScanProblem] = []
        for p in self.paths:
            if not os.path.exists(p):
                raise InputError(f"example path not found: {p}")
        out = [os.fsdecode(f.path) for f in scan(self.paths, problems=problems)]
        for problem in problems:
            log.warning("skipping %s: %s", os.fsdecode(problem.path), problem.reason)
        return out


@dataclass
class CalibrationResult:
    """A calibrated concept: the curve, the chosen point and (if written) the new policy version."""

    concept: str
    policy: str
    version: int  # the version the scores were computed with
    curve: PRCurve
    point: OperatingPoint
    skipped: list[str] = field(default_factory=list)  # example files that could not be read
    written_version: int | None = None
    plot: str | None = None

    def entry(self) -> dict[str, Any]:
        """What is stored with the policy version."""
        return {"point": self.point.to_dict(), "curve": self.curve.to_dict(), "calibrated_on_version": self.version,
                "created_at": utcnow().isoformat(timespec="seconds")}

    def to_dict(self) -> dict[str, Any]:
        return {"concept": self.concept, "policy": self.policy, "version": self.version,
                "point": self.point.to_dict(), "curve": self.curve.to_dict(), "skipped": self.skipped,
                "written_version": self.written_version, "plot": self.plot}


def _vectors(coll: Collection, record: PolicyRecord, examples: Examples, encoder: ImageEncoder | None,
             skipped: list[str]) -> np.ndarray:
    parts = []
    if examples.ids:
        got, vecs = coll.vectors_in_order(np.asarray(examples.ids, np.int64))
        missing = sorted(set(examples.ids) - set(got.tolist()))
        if missing:
            raise unknown_ids_error(missing)
        parts.append(vecs)
    files = examples.files() if examples.paths else []
    if files:
        if encoder is None:
            raise ConfigError("scoring example files needs the collection's encoder")
        check_encoder(record, encoder)
        from retrieval.classify.tagging import encode_files

        vecs, errors = encode_files(encoder, files)  # type: ignore[arg-type]
        for f, e in zip(files, errors):
            if e is not None:
                log.warning("skipping example %s: %s", f, e)
                skipped.append(f)
        parts.append(vecs[[i for i, e in enumerate(errors) if e is None]])
    return np.concatenate(parts) if parts else np.zeros((0, coll.dim), np.float32)


def calibrate_concept(coll: Collection, record: PolicyRecord, concept: str, positives: Examples, negatives: Examples,
                      encoder: ImageEncoder | None = None, *, target_precision: float | None = None,
                      target_recall: float | None = None, write: bool = False, activate: bool = False,
                      plot: str | Path | None = None) -> CalibrationResult:
    """Score the examples under ``record``, choose the concept's threshold, optionally store a new version.

    The new version changes only the concept's threshold (its review band keeps its width,
    clipped at -1) and carries the calibration entry; other concepts keep theirs.
    """
    old = record.policy.concept(concept)  # unknown concept: a clear error before any scoring
    if (target_precision is None) == (target_recall is None):
        raise CalibrationError("give --target-precision or --target-recall (one of them)")
    skipped: list[str] = []
    pos = _vectors(coll, record, positives, encoder, skipped)
    neg = _vectors(coll, record, negatives, encoder, skipped)
    compiled = record.compiled()
    j = compiled.names.index(concept)
    scores = np.concatenate([compiled.scores(pos)[:, j], compiled.scores(neg)[:, j]]) if len(pos) + len(neg) else \
        np.zeros(0)
    labels = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    curve = pr_curve(scores, labels)
    point = choose_threshold(curve, target_precision, target_recall)
    result = CalibrationResult(concept, record.name, record.version, curve, point, skipped)
    if plot is not None:
        result.plot = str(plot_curve(curve, point, plot, f"{record.name} v{record.version}: {concept}"))
    if write:
        review = None
        if old.review_threshold is not None:
            review = max(-1.0, point.threshold - (old.threshold - old.review_threshold))
        updated = Concept.model_validate({**old.model_dump(), "threshold": point.threshold, "review_threshold": review})
        calibration = {**record.calibration, concept: result.entry()}
        stored = save_policy(coll, record.policy.with_concept(updated), weights=record.weights, activate=activate,
                             calibration=calibration,
                             note=f"calibrated {concept} from version {record.version}: threshold "
                                  f"{point.threshold:.6f} for {point.target} {point.target_value}")
        result.written_version = stored.version
    return result
