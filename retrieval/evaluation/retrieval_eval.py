"""``photodex eval retrieval CAPTIONS --images DIR``: image<->text Recall@K of one encoder on a caption file.

Images go through the index's decode/encoder path (:mod:`.image_vectors`, resumable from its cache),
every caption through the encoder's text tower, and the figures are clip_benchmark's
(:mod:`.recall`). A figure is only ever computed over the whole split: a missing or undecodable
image, or a caption file problem, stops the run with one line before anything is reported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.core.progress import Progress
from indexer.encode.encoders import Encoder

from .captions import CaptionSet, read_captions, resolve_images
from .clip_benchmark import ZEROSHOT_RETRIEVAL, clip_benchmark_result
from .image_vectors import encode_image_files
from .recall import DEFAULT_KS, retrieval_recall

__all__ = ["RetrievalTask", "as_clip_benchmark", "encode_captions", "evaluate_retrieval", "load_task"]

TEXT_BATCH = 256


def encode_captions(encoder: Encoder, captions: Sequence[str], progress: Progress | None = None,
                    batch: int = TEXT_BATCH) -> tuple[np.ndarray, float]:
    """Unit vectors of every caption (the model's own tokenizer, truncated to its context) and seconds taken."""
    out = np.zeros((len(captions), encoder.spec.embed_dim), np.float32)
    start = time.perf_counter()
    for s in range(0, len(captions), batch):
        out[s:s + batch] = encoder.encode_texts(captions[s:s + batch])
        if progress:
            progress("captions", min(s + batch, len(captions)), len(captions))
    return out, time.perf_counter() - start


@dataclass(frozen=True)
class RetrievalTask:
    """A caption file's split with every image found on disk: what each encoder is evaluated on."""

    captions_file: Path
    captions: CaptionSet
    paths: list[Path]


def load_task(captions_file: str | Path, images_dir: str | Path, split: str | None = None) -> RetrievalTask:
    """Read and check everything before any model loads (bad input fails fast, in one line)."""
    cs = read_captions(captions_file, split)
    return RetrievalTask(Path(captions_file), cs, resolve_images(cs, images_dir, captions_file))


def evaluate_retrieval(encoder: Encoder, task: RetrievalTask, *, ks: Sequence[int] = DEFAULT_KS,
                       cache_dir: str | Path | None = None, batch_size: int = 64, workers: int = 0,
                       max_image_pixels: int = 178_956_970, progress: Progress | None = None) -> dict[str, Any]:
    """The recall report: clip_benchmark's metric names, the counts behind them, and how encoding went."""
    cs, paths, captions_file = task.captions, task.paths, task.captions_file
    images = encode_image_files(encoder, paths, cache_dir=cache_dir, batch_size=batch_size, workers=workers,
                                max_image_pixels=max_image_pixels, progress=progress, entries=cs.entries)
    texts, text_seconds = encode_captions(encoder, cs.captions, progress)
    recall = retrieval_recall(images.vectors, texts, cs.caption_image, ks)
    spec = encoder.spec
    return {
        "task": ZEROSHOT_RETRIEVAL,
        "dataset": Path(captions_file).stem,
        "captions_file": str(captions_file),
        "format": cs.format,
        "split": cs.split,
        "images": recall.n_images,
        "captions": recall.n_captions,
        "model": spec.model,
        "pretrained": spec.pretrained,
        "encoder": spec.id,
        "embed_dim": spec.embed_dim,
        "metrics": recall.metrics(),
        "hits": {"image_retrieval": recall.image_hits, "text_retrieval": recall.text_hits},
        "encode": {"from_cache": images.from_cache, "encoded": images.encoded,
                   "photos_per_second": round(images.photos_per_second, 2) if images.photos_per_second else None,
                   "caption_seconds": round(text_seconds, 3)},
    }


def as_clip_benchmark(report: dict[str, Any]) -> dict[str, Any]:
    """The report in clip_benchmark's result-file shape."""
    extra = {k: report[k] for k in ("format", "split", "images", "captions", "encoder", "captions_file")}
    return clip_benchmark_result(report["dataset"], report["model"], report["pretrained"], ZEROSHOT_RETRIEVAL,
                                 report["metrics"], extra=extra)
