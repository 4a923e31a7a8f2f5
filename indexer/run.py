"""One indexing run: open the collection for the encoder, sync the catalog, encode what is pending."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .collection import Collection
from .encode_run import EncodeReport, Progress, encode_pending
from .encoders import Encoder
from .errors import ConfigError
from .sync import SyncReport, sync_catalog

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    batch_size: int = 64
    workers: int = 2
    max_image_pixels: int = 178_956_970
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    retry_errors: bool = False


@dataclass
class RunSummary:
    sync: SyncReport
    encode: EncodeReport
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"sync": self.sync.as_dict(), "encode": self.encode.as_dict(),
                "seconds": round(self.seconds, 3), "collection": self.stats}


def check_roots(roots: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse missing paths up front, before any model is loaded or collection created."""
    missing = [str(r) for r in roots if not os.path.exists(r)]
    if missing:
        raise ConfigError(f"path not found: {', '.join(missing)}")


def index_paths(
    coll: Collection,
    encoder: Encoder,
    roots: Sequence[str | os.PathLike[str]],
    options: RunOptions | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Index ``roots`` into ``coll`` incrementally and resumably."""
    options = options or RunOptions()
    coll.check_encoder(encoder.spec)
    check_roots(roots)
    start = time.perf_counter()
    sync = sync_catalog(coll, roots, options.include, options.exclude,
                        hash_threads=max(2, options.workers), retry_errors=options.retry_errors, progress=progress)
    log.info("catalog sync: %s", sync.as_dict())
    encode = encode_pending(coll, encoder, options.batch_size, options.workers, options.max_image_pixels, progress)
    coll.touch()
    return RunSummary(sync, encode, time.perf_counter() - start, coll.stats())
