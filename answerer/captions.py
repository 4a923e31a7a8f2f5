"""``photodex caption --all``: the VLM captions the library and the captions are stored in the catalog.

One row per photo in ``photo_captions`` (photo id, caption, model, time); hybrid text search
(:mod:`retrieval.search.captions`) reads them. The run

* holds the collection's writer lock from start to end (one writer; readers never wait);
* commits each batch in one transaction, so a killed run keeps every finished batch and the next
  run goes on where it stopped: photos already captioned by the same model are skipped (all of
  them are re-captioned with ``overwrite``);
* skips photos hidden by moderation (quarantined / blocked) unless the filters ask for them
  (``moderation=...``, as for search), and photos whose file cannot be decoded, with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import select

from indexer.catalog.models import PhotoCaption, PhotoFile
from indexer.collection import Collection
from indexer.core.errors import InputError
from indexer.core.progress import Progress
from indexer.writer_lock import WriterLock
from retrieval.visibility import hidden_ids
from retrieval.search.filters import SearchFilters, allowed_ids

from .budget import ImageBudget
from .vlm import VLM, Request

log = logging.getLogger(__name__)

__all__ = ["CaptionOptions", "CaptionSummary", "caption_collection", "decode_first", "model_name"]

MAX_CAPTION_CHARS = 2000


@dataclass
class CaptionOptions:
    """What to caption and how; validated before the model loads."""

    prompt: str = "Describe this photo in one sentence."
    max_new_tokens: int = 48
    batch_size: int = 8
    overwrite: bool = False
    filters: SearchFilters | None = None
    budget: ImageBudget = field(default_factory=ImageBudget)
    wait: bool = False  # wait for the writer lock instead of refusing

    def validate(self) -> CaptionOptions:
        if not self.prompt.strip():
            raise InputError("the caption prompt is empty")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise InputError("--batch-size and --max-new-tokens must be >= 1")
        self.budget.validate()
        return self


@dataclass
class Failed:
    id: int
    reason: str


@dataclass
class CaptionSummary:
    """What a run did (the ``--json`` summary)."""

    model: str
    prompt: str
    candidates: int = 0  # indexed photos matching the filters
    captioned: int = 0
    already_captioned: int = 0  # by the same model, skipped (no --overwrite)
    hidden: int = 0  # quarantined / blocked, skipped
    failed: list[Failed] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0
    model_load_seconds: float = 0.0  # part of seconds
    photos_per_second: float = 0.0  # captioned / (seconds - model_load_seconds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_name(vlm: VLM) -> str:
    """What captions record as their model: the Hub id, or a local folder as its absolute path (one name per folder)."""
    path = Path(vlm.model_id_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else vlm.model_id_or_path


def decode_first(paths: list[str], max_side: int) -> Image.Image:
    """The first of ``paths`` that decodes (JPEG DCT-scaled towards ``max_side``); InputError with every reason."""
    from indexer.encode.decode import DecodeError, decode_photo

    reasons = []
    for path in paths:
        try:
            return decode_photo(path, max_side)[0]
        except DecodeError as exc:
            reasons.append(str(exc))
    raise InputError("; ".join(reasons) or "no file on disk")


def _paths(coll: Collection, ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    with coll.catalog.session() as s:
        for pid, path in s.execute(select(PhotoFile.photo_id, PhotoFile.path).where(PhotoFile.photo_id.in_(ids))
                                   .order_by(PhotoFile.path)):
            out.setdefault(int(pid), []).append(path)
    return out


def _todo(coll: Collection, model: str, options: CaptionOptions, summary: CaptionSummary) -> list[int]:
    ids = coll.vector_ids()
    allowed = allowed_ids(coll, options.filters)
    if allowed is not None:
        ids = np.intersect1d(ids, allowed)
    summary.candidates = len(ids)
    hidden = hidden_ids(coll, options.filters)
    summary.hidden = int(np.isin(ids, hidden).sum())
    ids = np.setdiff1d(ids, hidden)
    if not options.overwrite and len(ids):
        with coll.catalog.session() as s:
            done = np.asarray(s.scalars(select(PhotoCaption.photo_id).where(PhotoCaption.model == model)).all(),
                              np.int64)
        summary.already_captioned = int(np.isin(ids, done).sum())
        ids = np.setdiff1d(ids, done)
    return [int(i) for i in ids]


def caption_collection(coll: Collection, vlm: VLM, options: CaptionOptions | None = None,
                       progress: Progress | None = None, lock: WriterLock | None = None,
                       loader: Callable[[list[str], int], Image.Image] = decode_first) -> CaptionSummary:
    """Caption every indexed photo the options select and store the captions; see the module docstring.

    ``progress("caption", done, total)`` is called after each committed batch."""
    options = (options or CaptionOptions()).validate()
    model = model_name(vlm)
    summary = CaptionSummary(model=model, prompt=options.prompt)
    start = time.perf_counter()
    held = lock if lock is not None and lock.held else coll.writer_lock().acquire(wait=options.wait)
    try:
        todo = _todo(coll, model, options, summary)
        side = options.budget.max_image_side
        if todo:
            loading = time.perf_counter()
            vlm.load()  # only when there is work; timed apart from the captioning
            summary.model_load_seconds = time.perf_counter() - loading
            if vlm.input_side:  # decode once at the VLM's input size (JPEG draft)
                side = min(side, vlm.input_side)
        total = len(todo)
        if progress:
            progress("caption", 0, total)
        for first in range(0, total, options.batch_size):
            batch = todo[first:first + options.batch_size]
            paths = _paths(coll, batch)
            images: list[tuple[int, Image.Image]] = []
            for pid in batch:
                try:
                    images.append((pid, loader(paths.get(pid, []), side)))
                except InputError as exc:
                    log.warning("photo #%d not captioned: %s", pid, exc)
                    summary.failed.append(Failed(pid, str(exc)))
            texts: list[str] = []
            if images:
                prepared = vlm.prepare([Request.question([img], options.prompt) for _, img in images], options.budget)
                texts = vlm.generate(prepared, options.max_new_tokens)
            now = datetime.now(timezone.utc).replace(tzinfo=None)
            with coll.catalog.session() as s, s.begin():
                for (pid, _), text in zip(images, texts):
                    text = " ".join(text.split())[:MAX_CAPTION_CHARS]
                    if not text:
                        summary.failed.append(Failed(pid, "the VLM returned an empty caption"))
                        continue
                    s.merge(PhotoCaption(photo_id=pid, caption=text, model=model, created_at=now))
                    summary.captioned += 1
            summary.batches += 1
            if progress:
                progress("caption", min(first + options.batch_size, total), total)
    finally:
        if held is not lock:
            held.release()
    summary.seconds = time.perf_counter() - start
    working = summary.seconds - summary.model_load_seconds
    summary.photos_per_second = summary.captioned / working if working > 0 else 0.0
    log.info("captioned %d photos in %.1fs (%d already, %d hidden, %d failed)", summary.captioned,
             summary.seconds, summary.already_captioned, summary.hidden, len(summary.failed))
    return summary
