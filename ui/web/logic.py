"""Pure helpers of the web pages (no Streamlit, no network): configuration, filters, scores, labels.

Kept apart so that they are tested without a browser or a server.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from ui.api.schemas import SearchFiltersIn, SearchHitOut

API_URL_ENV = "PHOTODEX_API_URL"
API_KEY_ENV = "PHOTODEX_API_KEY"  # the UI server's own key, sent when the sidebar's field is empty
DEFAULT_API_URL = "http://127.0.0.1:8000"
FILE_TYPES = ("", "jpeg", "png", "webp", "gif", "bmp", "tiff", "heif")
_MD_SPECIAL = set("\\`*_{}[]()<>#+-.!|~$:")
MODERATION_VALUES = ("", "any", "allow", "review", "flag", "quarantine", "block")


def api_url(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> str:
    """The API's base URL: ``--api URL`` after streamlit's ``--``, else ``$PHOTODEX_API_URL``, else the default."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--api")
    known, _ = parser.parse_known_args(list(argv))
    env = os.environ if environ is None else environ
    url = known.api or env.get(API_URL_ENV) or DEFAULT_API_URL
    return url.rstrip("/")


def api_key(typed: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The key to send: the one typed into the sidebar, else ``$PHOTODEX_API_KEY``, else none."""
    env = os.environ if environ is None else environ
    return (typed or "").strip() or env.get(API_KEY_ENV, "").strip() or None


def build_filters(*, taken_after: date | None = None, taken_before: date | None = None, path: str = "",
                  camera_make: str = "", camera_model: str = "", has_gps: bool | None = None, file_type: str = "",
                  tags: Sequence[str] = (), moderation: str = "") -> SearchFiltersIn | None:
    """The sidebar's values as typed filters; ``None`` when nothing is set."""
    values = {
        "taken_after": taken_after.isoformat() if taken_after else None,
        "taken_before": taken_before.isoformat() if taken_before else None,
        "path": path.strip() or None,
        "camera_make": camera_make.strip() or None,
        "camera_model": camera_model.strip() or None,
        "has_gps": has_gps,
        "file_type": file_type or None,
        "moderation": moderation or None,
    }
    clean = {k: v for k, v in values.items() if v is not None}
    if not clean and not tags:
        return None
    return SearchFiltersIn(**clean, tags=list(tags))


def score_bounds(hits: Sequence[SearchHitOut], step: float = 0.01) -> tuple[float, float]:
    """A min-score slider range on ``step`` boundaries: from below the lowest score to the highest score
    rounded down, so the best hit stays visible at the top of the range (never empty, within [-1, 1])."""
    if not hits:
        return 0.0, 1.0
    lo = max(-1.0, round(math.floor(min(h.score for h in hits) / step) * step, 6))
    hi = min(1.0, round(math.floor(max(h.score for h in hits) / step) * step, 6))
    if hi <= lo:
        hi = round(lo + step, 6)
    return lo, hi


def above(hits: Sequence[SearchHitOut], min_score: float) -> list[SearchHitOut]:
    """The hits scoring at least ``min_score`` (in their order)."""
    return [h for h in hits if h.score >= min_score - 1e-9]


def caption(hit: SearchHitOut) -> str:
    """One line under a thumbnail: id, score and (if any) how many near-duplicates it stands for."""
    dup = f" · +{len(hit.duplicates)} similar" if hit.duplicates else ""
    return f"#{hit.id} · {hit.score:.3f}{dup}"


def md_escape(text: str) -> str:
    """``text`` shown literally inside Streamlit markdown (file names with ``*``, ``_``, ``#``, ...)."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def parse_labels(text: str) -> list[str]:
    """Labels given one per line or comma-separated, blanks and repeats dropped (order kept)."""
    seen: dict[str, None] = {}
    for part in text.replace("\n", ",").split(","):
        label = part.strip()
        if label and label.casefold() not in {s.casefold() for s in seen}:
            seen[label] = None
    return list(seen)


def parse_paths(text: str) -> list[str]:
    """Folder paths, one per line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def progress_fraction(done: int, total: int) -> float:
    """``done / total`` clipped to [0, 1] (0 while the total is unknown)."""
    return 0.0 if total <= 0 else max(0.0, min(1.0, done / total))


def with_threshold(policy: dict[str, Any], concept: str, threshold: float) -> dict[str, Any]:
    """A copy of a policy body with one concept's threshold moved (its review band keeps its width)."""
    out = copy.deepcopy(policy)
    for c in out["concepts"]:
        if c["name"] == concept:
            old, review = c["threshold"], c.get("review_threshold")
            c["threshold"] = round(float(threshold), 6)
            if review is not None:
                c["review_threshold"] = round(max(-1.0, c["threshold"] - (old - review)), 6)
            return out
    raise KeyError(f"no concept {concept!r} in policy {policy.get('name')!r}")


def curve_at(thresholds: Sequence[float], values: Sequence[float], threshold: float) -> float | None:
    """A curve's value at ``threshold`` (thresholds descending): the point with the lowest threshold ≥ it."""
    best = None
    for t, v in zip(thresholds, values):
        if t >= threshold - 1e-12:
            best = v
    return best


def threshold_range(threshold: float, others: Sequence[float | None] = (), pad: float = 0.1) -> tuple[float, float]:
    """A slider range around a concept's threshold that also covers ``others`` (its review threshold, the
    ends of a calibration curve), padded and on 0.01 boundaries, within [-1, 1]."""
    values = [threshold, *(v for v in others if v is not None)]
    lo = math.floor(round((min(values) - pad) * 100, 6)) / 100
    hi = math.ceil(round((max(values) + pad) * 100, 6)) / 100
    return max(-1.0, lo), min(1.0, hi)
