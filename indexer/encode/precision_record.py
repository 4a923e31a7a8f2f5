"""Which precision produced a collection's vectors: one record per index run in ``manifest.json``.

``photodex info`` shows the summary (photos encoded per precision, the last run's choice and why). A collection
may hold vectors of several precisions of its one encoder only where each non-fp32 run passed the cosine check
against fp32 (:data:`indexer.encode.precision.MIN_COSINE`); :func:`record_run` refuses any other (on CUDA the autocast
path is taken as it always was). No torch is imported here: ``info`` stays light.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Protocol

from ..core.errors import ConfigError
from .precision import MIN_COSINE



class _Manifested(Protocol):
    """What :func:`record_run` needs of a collection (a Protocol: the collection imports this module)."""

    manifest: dict[str, Any]

    def touch(self, **extra: Any) -> None: ...


RUNS_KEY = "precision_runs"
MAX_RUNS = 200  # the manifest keeps the newest runs; per-precision totals cover all of them
TOTALS_KEY = "photos_by_precision"


def _label(choice: dict[str, Any]) -> str:
    device = choice.get("device", "cpu")
    return f"{choice.get('precision', 'fp32')} ({choice.get('backend', 'torch')}" + \
        ("" if device == "cpu" else f" on {device}") + ")"


def check_mixable(choice: dict[str, Any]) -> None:
    """Refuse vectors of a non-fp32 CPU path that did not pass the cosine check (they would not mix with fp32's)."""
    if choice.get("precision", "fp32") == "fp32" or choice.get("device", "cpu") != "cpu":
        return
    cos = choice.get("min_cosine")
    if cos is None or not cos >= MIN_COSINE:
        raise ConfigError(f"refusing to store vectors of {_label(choice)}: min cosine to fp32 {cos} is below "
                          f"{MIN_COSINE}; index with --precision fp32")


def record_run(coll: "_Manifested", choice: dict[str, Any], photos: int) -> None:
    """Add one index run's precision (``PrecisionChoice.to_dict()``) and photo count to the manifest."""
    if photos <= 0:
        return
    check_mixable(choice)
    run = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "photos": int(photos), **choice}
    runs = [*coll.manifest.get(RUNS_KEY, []), run][-MAX_RUNS:]
    totals = dict(coll.manifest.get(TOTALS_KEY, {}))
    totals[_label(choice)] = int(totals.get(_label(choice), 0)) + int(photos)
    coll.touch(**{RUNS_KEY: runs, TOTALS_KEY: totals})


def precision_summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """``{"photos_by_precision": {label: photos encoded}, "last_run": {...}}``, or None before any run recorded."""
    runs = manifest.get(RUNS_KEY) or []
    if not runs:
        return None
    last = runs[-1]
    return {"photos_by_precision": dict(manifest.get(TOTALS_KEY, {})),
            "last_run": {k: last.get(k) for k in ("at", "photos", "requested", "precision", "backend", "device",
                                                  "candidate", "min_cosine", "speedup", "reason")}}


def precision_text(summary: dict[str, Any] | None) -> str:
    """One line for ``photodex info``."""
    if not summary:
        return "not recorded (vectors made before photodex recorded precision)"
    totals = ", ".join(f"{label} for {n} photos" for label, n in summary["photos_by_precision"].items())
    last = summary["last_run"]
    return f"{totals}; last run: {last.get('reason') or _label(last)}"
