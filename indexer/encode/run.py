"""Encode every pending photo: decode in a worker pool, encode in batches, commit per batch.

Each batch's vectors and statuses land in one transaction, so a run killed at any instant (even
SIGKILL) leaves only whole batches behind and the next run picks up the rest: no photo is encoded
twice into the catalog, none is lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from dataclasses import fields
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from PIL import Image
from sqlalchemy import update
from torch.utils.data import DataLoader, Dataset

from ..catalog.models import ERROR, INDEXED, Embedding, Photo
from ..child_processes import prepare_forks
from ..collection import Collection
from .decode import DecodeError, PhotoFacts, decode_photo, register_heif, set_max_image_pixels
from .encoders import Encoder
from .pending import BatchHook, EncodeReport, pending_count, pending_items  # noqa: F401 - re-exported
from ..core.progress import Progress
from ..core.vectors import encode_vector

log = logging.getLogger(__name__)

FACT_COLUMNS = [f.name for f in fields(PhotoFacts) if f.name != "extra"]


class PhotoDataset(Dataset):
    """Decodes and preprocesses photos in DataLoader workers; failures become error items."""

    def __init__(self, items: list[tuple[int, bytes]], preprocess: Callable[[Image.Image], torch.Tensor],
                 target_size: int) -> None:
        self.items = items
        self.preprocess = preprocess
        self.target_size = target_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, PhotoFacts | None, str | None]:
        photo_id, path = self.items[i]
        try:
            img, facts = decode_photo(path, self.target_size)
            return photo_id, self.preprocess(img), facts, None
        except DecodeError as exc:
            return photo_id, None, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - preprocessing of a strange image is a per-photo error
            return photo_id, None, None, f"cannot preprocess: {type(exc).__name__}: {exc}"


def _collate(batch: list[tuple[int, torch.Tensor | None, PhotoFacts | None, str | None]]) -> dict[str, Any]:
    ok = [b for b in batch if b[1] is not None]
    return {
        "ids": [b[0] for b in ok],
        "pixels": torch.stack([b[1] for b in ok]) if ok else None,
        "facts": [b[2] for b in ok],
        "errors": [(b[0], b[3]) for b in batch if b[1] is None],
    }


def configure_decoding(max_image_pixels: int, _worker_id: int | None = None) -> None:
    """Per-process decoder set-up: the bomb limit and HEIC support (DataLoader ``worker_init_fn``)."""
    set_max_image_pixels(max_image_pixels)
    register_heif()


def make_loader(items: list[tuple[int, bytes]], encoder: Encoder, batch_size: int, workers: int,
                max_image_pixels: int) -> DataLoader:
    dataset = PhotoDataset(items, encoder.preprocess, encoder.image_size)
    if workers == 0:
        configure_decoding(max_image_pixels)  # decoding happens in this process
    else:
        prepare_forks()  # the workers (forks) keep no listening socket or lock file and die with this process
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=encoder.device == "cuda",
        persistent_workers=False,
        worker_init_fn=partial(configure_decoding, max_image_pixels) if workers > 0 else None,
    )


def _commit_batch(coll: Collection, batch: dict[str, Any], vectors: Any, on_commit: BatchHook | None = None) -> None:
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with coll.catalog.session() as s, s.begin():
        for photo_id, vec, facts in zip(batch["ids"], vectors, batch["facts"]):
            s.add(Embedding(photo_id=photo_id, vector=encode_vector(vec)))
            values = {c: getattr(facts, c) for c in FACT_COLUMNS}
            s.execute(update(Photo).where(Photo.id == photo_id).values(status=INDEXED, error=None, indexed_at=now, **values))
        for photo_id, reason in batch["errors"]:
            s.execute(update(Photo).where(Photo.id == photo_id).values(status=ERROR, error=reason))
        if batch["ids"]:
            coll.catalog.bump_generation(s)
            if on_commit is not None:
                on_commit(s, np.asarray(batch["ids"], np.int64), np.asarray(vectors, np.float32))


def encode_pending(
    coll: Collection,
    encoder: Encoder,
    batch_size: int = 64,
    workers: int = 2,
    max_image_pixels: int = 178_956_970,
    progress: Progress | None = None,
    on_commit: BatchHook | None = None,
) -> EncodeReport:
    """Encode all pending photos of ``coll``; returns counts and throughput."""
    items = pending_items(coll)
    report = EncodeReport()
    if not items:
        return report
    start = time.perf_counter()
    loader = make_loader(items, encoder, batch_size, workers, max_image_pixels)
    done = 0
    if progress:
        progress("encode", 0, len(items))
    for batch in loader:
        vectors = encoder.encode_images(batch["pixels"]) if batch["pixels"] is not None else []
        _commit_batch(coll, batch, vectors, on_commit)
        for photo_id, reason in batch["errors"]:
            log.warning("photo %d skipped: %s", photo_id, reason)
        report.encoded += len(batch["ids"])
        report.errors += len(batch["errors"])
        done += len(batch["ids"]) + len(batch["errors"])
        if progress:
            progress("encode", done, len(items))
    report.seconds = time.perf_counter() - start
    return report
