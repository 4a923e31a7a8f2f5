"""POPE-style object-hallucination evaluation of the VLM: yes/no questions about an object's presence.

A POPE file is JSON lines (or one JSON array) of questions, with the standard POPE fields::

    {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"}

* ``image`` — an image path (relative paths resolve against ``image_root``, by default the POPE
  file's folder) or a catalogued photo id (an integer, or ``"#12"``), resolved through a collection;
* ``text`` — the yes/no question, asked as is of that one image;
* ``label`` — ``"yes"`` or ``"no"``; ``question_id`` and ``category`` (e.g. random / popular /
  adversarial) are optional.

Answers are mapped to yes/no as the POPE reference evaluation does (the first sentence; "no" or "not"
among its words means no, anything else yes), then accuracy, precision, recall and F1 of "yes" (the
positive class) and the yes-ratio (share of "yes" predictions) are computed — overall and per
``category`` when the file has one. :func:`evaluate_pope` also returns every per-question answer, so
the metrics can be recomputed from them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from indexer.core.errors import InputError

from .budget import ImageBudget
from .vlm import VLM, Request

__all__ = ["PopeAnswer", "PopeItem", "PopeReport", "evaluate_pope", "pope_metrics", "read_pope",
           "resolve_images", "yes_no"]

LABELS = ("yes", "no")
_ID = re.compile(r"^#?(\d+)$")
_WORDS = re.compile(r"[a-z']+")


@dataclass
class PopeItem:
    """One question of a POPE file; ``image`` is a path (str) or a photo id (int)."""

    line: int
    image: str | int
    text: str
    label: str
    question_id: Any = None
    category: str | None = None


@dataclass
class PopeAnswer:
    """The VLM's answer to one question: ``answer`` as generated, ``prediction`` as yes/no."""

    question_id: Any
    image: str | int
    text: str
    label: str
    answer: str
    prediction: str
    category: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PopeReport:
    file: str
    model: str
    metrics: dict[str, Any]
    per_category: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: list[PopeAnswer] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- reading


def _image_field(value: Any, where: str) -> str | int:
    if isinstance(value, bool):
        raise InputError(f"{where}: 'image' must be a path or a photo id, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InputError(f"{where}: photo id must be >= 0, got {value}")
        return value
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise InputError(f"{where}: 'image' must be a path or a photo id, got {value!r}")


def _item(row: Any, line: int, where: str) -> PopeItem:
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object with image, text and label, got {type(row).__name__}")
    missing = [k for k in ("image", "text", "label") if k not in row]
    if missing:
        raise InputError(f"{where}: missing field(s) {', '.join(missing)} (POPE lines have image, text, label)")
    text = row["text"]
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: 'text' must be a non-empty question")
    label = str(row["label"]).strip().lower() if isinstance(row["label"], str) else None
    if label not in LABELS:
        raise InputError(f"{where}: 'label' must be \"yes\" or \"no\", got {row['label']!r}")
    category = row.get("category")
    return PopeItem(line, _image_field(row["image"], where), " ".join(text.split()), label,
                    row.get("question_id"), None if category is None else str(category))


def read_pope(path: str | Path) -> list[PopeItem]:
    """Parse a POPE file (JSON lines, or a JSON array); :class:`InputError` names the bad line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"POPE file not found (or not a regular file): {path}")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read POPE file {path}: {exc}") from None
    items: list[PopeItem] = []
    if raw.lstrip().startswith("["):
        try:
            rows = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON: {exc}") from None
        items = [_item(row, n, f"{path}: item {n}") for n, row in enumerate(rows, 1)]
    else:
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: not valid JSON: {exc.msg}") from None
            items.append(_item(row, n, f"{path}:{n}"))
    if not items:
        raise InputError(f"{path}: no questions (expected JSON lines with image, text and label)")
    return items


def resolve_images(items: Sequence[PopeItem], image_root: str | Path | None = None,
                   photo_paths: Callable[[list[int]], dict[int, str]] | None = None,
                   base: str | Path = ".") -> dict[str | int, str]:
    """Map every item's ``image`` to a file path, checking each exists (before any model loads).

    Paths resolve against ``image_root`` (default ``base``); ids (ints or ``"#12"``; a digit string
    only when no such file exists) through ``photo_paths`` (ids → a path of each photo)."""
    root = Path(image_root) if image_root is not None else Path(base)
    resolved: dict[str | int, str] = {}
    ids: dict[str | int, int] = {}
    for item in items:
        key = item.image
        if key in resolved or key in ids:
            continue
        if isinstance(key, str):
            candidate = Path(key).expanduser()
            candidate = candidate if candidate.is_absolute() else root / candidate
            match = _ID.match(key)
            if candidate.is_file():
                resolved[key] = str(candidate)
                continue
            if match is None or (not key.startswith("#") and photo_paths is None):
                raise InputError(f"line {item.line}: image not found: {candidate}")
            ids[key] = int(match.group(1))
        else:
            ids[key] = key
    if ids:
        if photo_paths is None:
            raise InputError("the POPE file names photo ids; give a collection (--collection) to resolve them")
        found = photo_paths(sorted(set(ids.values())))
        for key, pid in ids.items():
            if pid not in found:
                line = next(i.line for i in items if i.image == key)
                raise InputError(f"line {line}: photo id {pid} is not in the collection")
            resolved[key] = found[pid]
    return resolved


# --------------------------------------------------------------------------- scoring


def yes_no(answer: str) -> str:
    """POPE's answer mapping: the first sentence; "no"/"not" among its words → ``"no"``, else ``"yes"``."""
    first = answer.strip().split(".")[0].lower().replace("n't", " not")
    words = _WORDS.findall(first)
    return "no" if "no" in words or "not" in words else "yes"


def pope_metrics(labels: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (of "yes"), yes-ratio and the confusion counts."""
    if len(labels) != len(predictions):
        raise ValueError("labels and predictions differ in length")
    pairs = list(zip(labels, predictions))
    tp = sum(lab == "yes" and pred == "yes" for lab, pred in pairs)
    fp = sum(lab == "no" and pred == "yes" for lab, pred in pairs)
    tn = sum(lab == "no" and pred == "no" for lab, pred in pairs)
    fn = sum(lab == "yes" and pred == "no" for lab, pred in pairs)
    n = len(pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": n, "accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall,
            "f1": f1, "yes_ratio": (tp + fp) / n if n else 0.0, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


# --------------------------------------------------------------------------- running


def _default_loader(path: str, max_side: int) -> Image.Image:
    from indexer.encode.decode import decode_photo

    img, _ = decode_photo(path, max_side)  # DecodeError is an InputError
    return img


def evaluate_pope(vlm: VLM, items: Sequence[PopeItem], images: dict[str | int, str], *,
                  batch_size: int = 16, max_new_tokens: int = 4, budget: ImageBudget | None = None,
                  image_loader: Callable[[str, int], Image.Image] = _default_loader,
                  file: str = "") -> PopeReport:
    """Ask ``vlm`` every question (``batch_size`` prompts per ``generate``) and score the answers.

    ``images`` maps each item's ``image`` to a file (see :func:`resolve_images`); each file is decoded
    once, when its first batch comes."""
    if batch_size < 1 or max_new_tokens < 1:
        raise InputError("batch_size and max_new_tokens must be >= 1")
    budget = (budget or ImageBudget()).validate()
    t0 = time.perf_counter()
    cache: dict[str, Image.Image] = {}

    def image(item: PopeItem) -> Image.Image:
        path = images[item.image]
        if path not in cache:
            try:
                cache[path] = image_loader(path, budget.max_image_side)
            except InputError as exc:
                raise InputError(f"line {item.line}: cannot read image {path}: {exc}") from None
        return cache[path]

    answers: list[str] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        prepared = vlm.prepare([Request.question([image(it)], it.text) for it in chunk], budget)
        answers += vlm.generate(prepared, max_new_tokens)
    elapsed = time.perf_counter() - t0
    rows = [PopeAnswer(it.question_id, it.image, it.text, it.label, a, yes_no(a), it.category)
            for it, a in zip(items, answers)]
    report = PopeReport(file, vlm.model_id_or_path, pope_metrics([r.label for r in rows], [r.prediction for r in rows]),
                        answers=rows, timings={"total_s": elapsed, "questions_per_s": len(rows) / elapsed if elapsed else 0.0})
    categories = sorted({r.category for r in rows if r.category is not None})
    for cat in categories:
        part = [r for r in rows if r.category == cat]
        report.per_category[cat] = pope_metrics([r.label for r in part], [r.prediction for r in part])
    return report
