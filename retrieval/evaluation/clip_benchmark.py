"""Results in clip_benchmark's JSON shape, so they line up with its leaderboard files.

clip_benchmark's ``eval`` writes one file per (dataset, model, task)::

    {"dataset": ..., "model": ..., "pretrained": ..., "task": "zeroshot_retrieval",
     "metrics": {"image_retrieval_recall@5": ...}, "language": "en"}

and its ``build`` step reads the ``metrics`` of each into one table row. The same keys are written
here; photodex's own extras (counts, split, encoder id) go under ``"photodex"``, which the builder
ignores. clip_benchmark writes a missing figure (top-5 with fewer than five classes) as a bare
``NaN``, which is not JSON; it is written as ``null`` here, which its ``json.load`` reads the same
way for the table (a missing value).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from indexer.core.atomic import atomic_write

__all__ = ["ZEROSHOT_CLASSIFICATION", "ZEROSHOT_RETRIEVAL", "clip_benchmark_result", "write_result"]

ZEROSHOT_CLASSIFICATION = "zeroshot_classification"
ZEROSHOT_RETRIEVAL = "zeroshot_retrieval"


def _finite(metrics: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in metrics.items()}


def clip_benchmark_result(dataset: str, model: str, pretrained: str | None, task: str,
                          metrics: dict[str, float | None], language: str = "en",
                          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dict clip_benchmark's ``eval`` dumps (key order included), plus ``photodex`` extras."""
    out: dict[str, Any] = {"dataset": dataset, "model": model, "pretrained": pretrained or "", "task": task,
                           "metrics": _finite(metrics), "language": language}
    if extra:
        out["photodex"] = extra
    return out


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    """Write one result file atomically (a stopped run leaves the old file or the new one)."""
    import json

    payload = json.dumps(result, allow_nan=False).encode()
    atomic_write(path, lambda fh: fh.write(payload))
