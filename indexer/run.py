"""One indexing run: take the writer lock, sync the catalog, encode what is pending.

The encoder may be given as a loader (a zero-argument callable): it is called only when
something needs encoding, so re-checking an unchanged library never loads a model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .catalog.read import sqlite_path
from .collection import Collection
from .core.errors import ConfigError
from .core.progress import Progress
from .encode.precision_record import check_mixable, record_run
from .core.storage_errors import storage_refusals
from .sync.plan import SyncReport, sync_catalog
from .writer_lock import WriterLock

if TYPE_CHECKING:
    from .distributed import RayOptions
    from .encode.pending import BatchHook, EncodeReport
    from .encode.encoders import Encoder

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    batch_size: int = 64
    workers: int = 2
    max_image_pixels: int = 178_956_970
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    retry_errors: bool = False
    wait: bool = False  # wait for another writer instead of refusing
    on_commit: "BatchHook | None" = None  # runs inside each batch's transaction (e.g. moderation decisions)
    engine: str = "local"  # "local": decode workers + this process; "ray": Ray Data (indexer.distributed)
    ray: "RayOptions | None" = None  # engine="ray" only: cluster address, actors, GPUs per actor
    # every file the scan reaches must resolve inside one of these (the API: its library roots); None: inside
    # the roots being indexed. A symlink leading elsewhere is skipped and counted (sync.outside_roots)
    allowed_roots: "Sequence[str | os.PathLike[str]] | None" = None
    follow_external_symlinks: bool = False  # lift that limit (the CLI's --follow-external-symlinks)
    nice: int | None = None  # CPU priority increment of the encode (None: 10 if a server holds the collection)
    nice_scope: Literal["process", "thread"] = "process"  # "thread": an API job inside the server


@dataclass
class RunSummary:
    sync: SyncReport
    encode: "EncodeReport"
    seconds: float
    encoder_loaded: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sync": self.sync.to_dict(), "encode": self.encode.to_dict(), "encoder_loaded": self.encoder_loaded,
                "seconds": round(self.seconds, 3), "collection": self.stats}


def check_roots(roots: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse missing paths up front, before any model is loaded or collection created."""
    missing = [str(r) for r in roots if not os.path.lexists(r)]
    if missing:
        raise ConfigError(f"path not found: {', '.join(missing)}")


def _check_engine(engine: str) -> None:
    """Refuse an unknown engine, or the ray engine without Ray, before anything is scanned."""
    if engine == "local":
        return
    if engine != "ray":
        raise ConfigError(f"unknown indexing engine {engine!r}; use local or ray")
    from .distributed import ray_available

    ok, why = ray_available()
    if not ok:
        raise ConfigError(why)


class _Position:
    """How far a run got (its last progress report), for the message when the disk refuses a write."""

    UNITS = {"hash": "new or changed files recorded", "encode": "photos encoded"}

    def __init__(self, coll: Collection, forward: Progress | None) -> None:
        self.coll, self.forward = coll, forward
        self.phase, self.done, self.total = "", 0, 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.phase, self.done, self.total = phase, done, total
        if self.forward is not None:
            self.forward(phase, done, total)

    def describe(self) -> str:
        got = (f"the run stopped with {self.done} of {self.total} {self.UNITS.get(self.phase, self.phase)}"
               if self.phase else "the run stopped before writing anything")
        try:  # reads still work on a full or read-only disk
            stats = self.coll.stats()
            kept = f" ({stats['indexed']} photos indexed, {stats['pending']} waiting to be encoded)"
        except Exception:  # noqa: BLE001 - only words a message
            kept = ""
        return f"{got}; the catalog is consistent and keeps every committed batch{kept}"


def catalog_name(coll: Collection) -> str:
    """The catalog as a message names it: the SQLite file, else the database URL without its password."""
    path = sqlite_path(coll.url)
    if path is not None:
        return str(path)
    from sqlalchemy.engine import make_url

    return make_url(coll.url).render_as_string(hide_password=True)


def index_paths(
    coll: Collection,
    encoder: "Encoder | Callable[[], Encoder]",
    roots: Sequence[str | os.PathLike[str]],
    options: RunOptions | None = None,
    progress: Progress | None = None,
    lock: WriterLock | None = None,
) -> RunSummary:
    """Index ``roots`` into ``coll`` incrementally and resumably, as the collection's one writer.

    ``lock``: a writer lock the caller already holds; otherwise one is taken for the run
    (refusing with :class:`~indexer.core.errors.WriterBusyError`, or waiting with ``options.wait``)."""
    from .encode.pending import EncodeReport, pending_count
    from .priority import cap_threads, yield_cpu

    options = options or RunOptions()
    _check_engine(options.engine)
    if not callable(encoder) or hasattr(encoder, "spec"):
        coll.check_encoder(encoder.spec)  # type: ignore[union-attr]
    check_roots(roots)
    start = time.perf_counter()
    held = nullcontext(lock) if lock is not None and lock.held else coll.writer_lock().acquire(wait=options.wait)
    progress = position = _Position(coll, progress)
    with held, storage_refusals(lambda: catalog_name(coll), position.describe):
        niced = yield_cpu(coll.path, options.nice, options.nice_scope)  # hash threads, decode workers inherit it
        sync = sync_catalog(coll, roots, options.include, options.exclude,
                            hash_threads=max(2, options.workers), retry_errors=options.retry_errors,
                            progress=progress, allowed_roots=options.allowed_roots,
                            follow_external_symlinks=options.follow_external_symlinks)
        log.info("catalog sync: %s", sync.to_dict())
        encode, loaded = EncodeReport(), False
        if pending_count(coll) and options.engine == "ray":
            from .distributed import encode_pending_ray

            loaded = True  # in the Ray actors; a loader given here is not called in the driver
            encode = encode_pending_ray(coll, encoder, options.batch_size, options.max_image_pixels, progress,
                                        on_commit=options.on_commit, options=options.ray)
            for label, photos in encode.precisions.items():  # each actor settled its own precision
                record_run(coll, json.loads(label), photos)
        elif pending_count(coll):
            enc = encoder if hasattr(encoder, "spec") else encoder()  # type: ignore[operator]
            coll.check_encoder(enc.spec)
            loaded = True
            from .encode.run import encode_pending  # torch: only when there is something to encode

            if niced and options.nice_scope == "process":
                cap_threads()  # now that torch is loaded
            choice = getattr(enc, "precision", None)  # a PrecisionChoice (an encoder double may have none)
            if choice is not None:
                check_mixable(choice.to_dict())  # before any vector is written
            encode = encode_pending(coll, enc, options.batch_size, options.workers, options.max_image_pixels,
                                    progress, on_commit=options.on_commit)
            if choice is not None:
                record_run(coll, choice.to_dict(), encode.encoded)
        coll.touch()
    return RunSummary(sync, encode, time.perf_counter() - start, loaded, coll.stats())
