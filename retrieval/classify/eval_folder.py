"""``photodex eval zeroshot DIR``: accuracy of zero-shot (and few-shot) on an ImageFolder layout.

The figures follow clip_benchmark's ``zeroshot_classification``: top-1, top-5 and mean per-class recall,
with its template sets and class names available by data set name (:mod:`.templates`, :mod:`.class_names`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.encode.encoders import Encoder
from indexer.core.errors import InputError
from indexer.sync.scan import PHOTO_EXTENSIONS

from .fewshot import evaluate as evaluate_head
from .fewshot import fit_few_shot
from .metrics import compare_templates, evaluate_zero_shot
from .class_names import load_class_names
from .scoring import scoring_kind
from .split import shots_split
from .tagging import encode_files
from .templates import ensure_templates
from .weights import build_zero_shot_weights


EncodeFiles = Callable[[Sequence[str]], tuple[np.ndarray, list[str | None]]]
"""Image paths -> (unit vectors, each file's error or None); its rows for failed files are ignored."""


def read_image_folder(folder: str | Path, classnames: str | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """(class names, image paths, integer labels); names from the sub-folders, or from ``classnames``
    (a built-in list or a file, matched to the sorted sub-folders: :mod:`.class_names`)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder (expected one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for c, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.suffix.lower() in PHOTO_EXTENSIONS:
                paths.append(str(f))
                labels.append(c)
    if len(classes) < 2 or not paths:
        raise InputError(f"{root} needs at least two class sub-folders with images")
    names = load_class_names(classnames, classes) if classnames else [c.replace("_", " ") for c in classes]
    return names, paths, np.asarray(labels, dtype=np.int64)


def evaluate_image_folder(encoder: Encoder, folder: str | Path, templates: str = "photos", shots: int = 0,
                          seed: int = 0, *, classnames: str | None = None,
                          encode: EncodeFiles | None = None) -> dict[str, Any]:
    """Zero-shot top-1/top-5, mean per-class recall, per class, confusions, single template vs ensemble;
    few-shot if ``shots``. ``encode`` turns the image paths into vectors (default: decode and encode here)."""
    names, paths, labels = read_image_folder(folder, classnames)
    tmpl = ensure_templates(templates)
    vecs, errors = (encode or (lambda p: encode_files(encoder, p)))(paths)
    ok = np.asarray([e is None for e in errors])
    vecs, labels = vecs[ok], labels[ok]
    weights = build_zero_shot_weights(names, tmpl, encoder.encode_texts)
    scale = encoder.logit_scale
    out: dict[str, Any] = {"images": int(ok.sum()), "unreadable": int((~ok).sum()), "classes": len(names),
                           "templates": len(tmpl), "scoring": scoring_kind(getattr(encoder, "logit_bias", None))}
    out["zero_shot"] = evaluate_zero_shot(vecs, labels, names, weights, scale).to_dict()
    if len(tmpl) > 1:
        cmp = compare_templates(vecs, labels, names, tmpl, encoder.encode_texts, scale)
        out["templates_compared"] = {"ensemble_top1": cmp.ensemble_top1, "best_single_top1": cmp.best_single_top1,
                                     "worst_single_top1": cmp.worst_single_top1}
    if shots > 0:
        train, test = shots_split(labels, shots, seed)
        if len(test) == 0:
            raise InputError(f"--shots {shots} leaves no held-out images")
        zs_test = evaluate_zero_shot(vecs[test], labels[test], names, weights, scale)
        head = fit_few_shot(weights, vecs[train], labels[train], method="prototype", logit_scale=scale)
        fs = evaluate_head(head, vecs[test], labels[test], names, scale)
        out["few_shot"] = {"shots_per_class": shots, "held_out": int(len(test)), "alpha": head.alpha,
                           "zero_shot_top1": zs_test.top1, "few_shot_top1": fs["top1"],
                           "gain": fs["top1"] - zs_test.top1}
    return out
