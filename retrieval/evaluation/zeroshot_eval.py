"""``photodex eval zeroshot DIR`` as the field reports it: clip_benchmark's figures, index encode path, cache.

The figures themselves come from :func:`retrieval.classify.eval_folder.evaluate_image_folder`; here the
images go through the index's decode/encoder path with the resumable cache (:mod:`.image_vectors`),
and the report gains clip_benchmark's metric names (``acc1``, ``acc5``, ``mean_per_class_recall``;
``acc5`` is left out below five classes, as clip_benchmark does) and how encoding went.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.core.progress import Progress
from indexer.encode.encoders import Encoder
from retrieval.classify.eval_folder import evaluate_image_folder

from .clip_benchmark import ZEROSHOT_CLASSIFICATION, clip_benchmark_result
from .image_vectors import EncodedImages, encode_image_files

__all__ = ["as_clip_benchmark", "evaluate_zeroshot"]


def evaluate_zeroshot(encoder: Encoder, folder: str | Path, templates: str = "photos", *, shots: int = 0,
                      seed: int = 0, classnames: str | None = None, cache_dir: str | Path | None = None,
                      batch_size: int = 64, workers: int = 0, max_image_pixels: int = 178_956_970,
                      progress: Progress | None = None) -> dict[str, Any]:
    """The zero-shot report of one encoder on an ImageFolder, with clip_benchmark's ``metrics``."""
    got: list[EncodedImages] = []

    def encode(paths: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        enc = encode_image_files(encoder, [Path(p) for p in paths], cache_dir=cache_dir, batch_size=batch_size,
                                 workers=workers, max_image_pixels=max_image_pixels, progress=progress,
                                 skip_errors=True)
        got.append(enc)
        return enc.vectors, [enc.errors.get(i) for i in range(len(paths))]

    report = evaluate_image_folder(encoder, folder, templates, shots=shots, seed=seed, classnames=classnames,
                                   encode=encode)
    zs = report["zero_shot"]
    enc = got[0]
    spec = encoder.spec
    report.update({
        "task": ZEROSHOT_CLASSIFICATION,
        "dataset": Path(folder).name,
        "template_set": str(templates),
        "model": spec.model,
        "pretrained": spec.pretrained,
        "encoder": spec.id,
        "embed_dim": spec.embed_dim,
        "metrics": {"acc1": zs["top1"], "acc5": zs["top5"] if report["classes"] >= 5 else None,
                    "mean_per_class_recall": zs["mean_per_class_recall"]},
        "encode": {"from_cache": enc.from_cache, "encoded": enc.encoded,
                   "photos_per_second": round(enc.photos_per_second, 2) if enc.photos_per_second else None},
    })
    return report


def as_clip_benchmark(report: dict[str, Any]) -> dict[str, Any]:
    """The report in clip_benchmark's result-file shape."""
    extra = {k: report[k] for k in ("images", "unreadable", "classes", "template_set", "encoder")}
    return clip_benchmark_result(report["dataset"], report["model"], report["pretrained"], ZEROSHOT_CLASSIFICATION,
                                 report["metrics"], extra=extra)
