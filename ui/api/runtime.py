"""What the running API holds: the open collection, the warm encoder (its calls batched), the searcher.

Built by the app's lifespan (:func:`open_runtime`) in a worker thread and closed at shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.collection import Collection
from indexer.encode.decode import set_max_image_pixels
from indexer.priority import ServingMark
from retrieval.index.loader import IndexLoader, one_blas_thread
from ui.settings import Settings
from retrieval.search.searcher import Searcher

from .batcher import EncoderBatcher
from .jobs import JobManager, Runner
from .metrics import Metrics

if TYPE_CHECKING:
    from retrieval.classify.tagging import ZeroShotClassifier

log = logging.getLogger(__name__)

EncoderLoader = Callable[[Settings], Any]
MAX_CLASSIFIERS = 32


class LockedEncoder:
    """An encoder whose ``encode_*`` calls hold one lock: model (GPU) work runs one call at a time.

    Everything else (``spec``, ``image_size``, ``logit_scale``, ...) is forwarded unchanged."""

    def __init__(self, encoder: Any, metrics: Metrics | None = None) -> None:
        self._encoder = encoder
        self._lock = threading.Lock()
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def _timed(self, kind: str, fn: Callable[[Any], np.ndarray], arg: Any) -> np.ndarray:
        with self._lock:
            start = time.perf_counter()
            out = fn(arg)
            if self._metrics is not None:
                self._metrics.encoder.labels(kind).observe(time.perf_counter() - start)
        return out

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._timed("text", self._encoder.encode_texts, texts)

    def encode_images(self, images: Any) -> np.ndarray:
        return self._timed("image", self._encoder.encode_images, images)


@dataclass
class Runtime:
    """The API's open resources; one per process (per uvicorn worker)."""

    settings: Settings
    collection: Collection
    encoder: EncoderBatcher | LockedEncoder
    searcher: Searcher
    jobs: JobManager
    metrics: Metrics
    index: IndexLoader
    serving: ServingMark
    _classifiers: "OrderedDict[tuple[tuple[str, ...], str], ZeroShotClassifier]" = field(default_factory=OrderedDict)
    _classifiers_lock: threading.Lock = field(default_factory=threading.Lock)

    def classifier(self, labels: Sequence[str], templates: str) -> "ZeroShotClassifier":
        """A zero-shot classifier for these labels and template set (kept for the next request)."""
        from retrieval.classify.tagging import ZeroShotClassifier

        key = (tuple(labels), templates)
        with self._classifiers_lock:
            clf = self._classifiers.get(key)
            if clf is not None:
                self._classifiers.move_to_end(key)
                return clf
        clf = ZeroShotClassifier(self.encoder, labels, templates)  # type: ignore[arg-type]
        with self._classifiers_lock:
            self._classifiers[key] = clf
            while len(self._classifiers) > MAX_CLASSIFIERS:
                self._classifiers.popitem(last=False)
        return clf

    def close(self) -> None:
        self.jobs.shutdown()
        self.index.close()
        self.serving.close()
        if isinstance(self.encoder, EncoderBatcher):
            self.encoder.close()
        self.collection.close()


def default_encoder_loader(settings: Settings) -> Any:
    from ui.context import load_chosen_encoder

    return load_chosen_encoder(settings)


def open_runtime(settings: Settings, metrics: Metrics, encoder_loader: EncoderLoader | None = None,
                 index_runner: Runner | None = None) -> Runtime:
    """Open the collection, load and warm the encoder, open the search index (blocking: run in a thread)."""
    start = time.perf_counter()
    set_max_image_pixels(settings.max_image_pixels)  # the limit decode workers use, for uploads too
    one_blas_thread()  # requests run concurrently: each one's small products on one thread
    coll = Collection.open(settings.collection, settings.database_url)
    encoder: EncoderBatcher | LockedEncoder | None = None
    index: IndexLoader | None = None
    try:
        raw = (encoder_loader or default_encoder_loader)(settings)
        coll.check_encoder(raw.spec)
        encoder = (EncoderBatcher(raw, settings.api_batch_window_ms / 1e3, max_batch=settings.batch_size,
                                  metrics=metrics) if settings.api_encoder_batching else LockedEncoder(raw, metrics))
        encoder.encode_texts(["a photo"])  # warm: the first request pays no lazy initialisation
        index = IndexLoader(coll)  # searches take its ready view; it catches up in the background
        searcher = Searcher(coll, encoder, index=index.current)  # type: ignore[arg-type]
        jobs = JobManager(coll, encoder, settings, metrics, runner=index_runner, after_index=index.refresh)
        serving = ServingMark(coll.path)  # index runs on this collection now yield the CPU (indexer.priority)
    except BaseException:
        if index is not None:
            index.close()
        if isinstance(encoder, EncoderBatcher):
            encoder.close()
        coll.close()
        raise
    log.info("API ready: collection %s, encoder %s (%.1fs)", coll.path, raw.spec.id, time.perf_counter() - start)
    return Runtime(settings, coll, encoder, searcher, jobs, metrics, index, serving)
