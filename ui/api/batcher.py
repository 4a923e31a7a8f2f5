"""Dynamic batching of encoder work: concurrent requests share one model call per tower.

Every request that needs the model (text search, image search by upload, ``/moderate``,
``/classify``, new policies' prompts, an index job's batches) hands its items to one
:class:`EncoderBatcher` and waits for its own rows. One thread owns the model: it takes the first
waiting request, gathers whatever else arrives within ``window_s`` (or until ``max_batch``
items), and runs one ``encode_texts`` and one ``encode_images`` call for all of them (split into
``model_batch``-sized chunks), then gives each request its own rows. While a batch runs, new
requests queue, so under load batches fill without waiting for the window at all; a lone request
is held at most ``window_s``.

* A request whose batch fails (one unusable item) is retried alone, so only the request whose item
  fails gets the error; the others get their rows.
* A caller that gives up (a client that disconnects: :func:`abandon_on`) is dropped before its
  batch runs; it costs the others nothing and gets :class:`RequestAbandoned`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 0.002  # see bench/results/api-load-cpu-2core.md: batching on/off at 1, 10 and 16 clients
KINDS = ("text", "image")

_ABANDON: ContextVar[threading.Event | None] = ContextVar("photodex_encoder_abandon", default=None)


class RequestAbandoned(Exception):
    """The caller gave up (its client disconnected) before its items were encoded."""


@contextmanager
def abandon_on(event: threading.Event) -> Iterator[None]:
    """Encoder calls made inside this block are dropped, unrun, once ``event`` is set."""
    token = _ABANDON.set(event)
    try:
        yield
    finally:
        _ABANDON.reset(token)


@dataclass
class _Pending:
    kind: str
    items: list[Any]
    future: Future
    abandon: threading.Event | None
    queued_at: float


class EncoderBatcher:
    """An encoder whose ``encode_texts`` / ``encode_images`` calls are batched across threads (see module doc).

    Everything else (``spec``, ``image_size``, ``logit_scale``, ...) is forwarded to the encoder."""

    def __init__(self, encoder: Any, window_s: float = DEFAULT_WINDOW_S, max_batch: int = 64,
                 model_batch: int | None = None, metrics: Any = None) -> None:
        self._encoder = encoder
        self.window_s = max(0.0, float(window_s))
        self.max_batch = max(1, int(max_batch))
        self.model_batch = max(1, int(model_batch or max_batch))
        self._metrics = metrics
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._closed = False
        self.batches = 0  # model calls made (for tests and logs)
        self._thread = threading.Thread(target=self._loop, name="photodex-encoder", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_encoder":
            raise AttributeError(name)
        return getattr(self._encoder, name)

    # ---- callers' side -------------------------------------------------------------------
    def submit(self, kind: str, items: Sequence[Any]) -> Future:
        """Queue ``items`` for tower ``kind`` ("text" or "image"); the future's result is their rows."""
        if kind not in KINDS:
            raise ValueError(f"unknown tower {kind!r}")
        if self._closed:
            raise RuntimeError("the encoder is closed (the server is stopping)")
        fut: Future = Future()
        if kind == "image" and not isinstance(items, (list, tuple)):  # a preprocessed batch (an index job's)
            self._queue.put(_Pending("batch", items, fut, _ABANDON.get(), time.perf_counter()))  # type: ignore[arg-type]
            return fut
        items = list(items)
        if not items:
            fut.set_result(np.zeros((0, self._encoder.spec.embed_dim), np.float32))
            return fut
        self._queue.put(_Pending(kind, items, fut, _ABANDON.get(), time.perf_counter()))
        return fut

    def _wait(self, fut: Future) -> np.ndarray:
        try:
            return fut.result()
        except CancelledError:
            raise RequestAbandoned("the request was abandoned before its items were encoded") from None

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._wait(self.submit("text", texts))

    def encode_images(self, images: Any) -> np.ndarray:
        """PIL images (batched with other requests' images) or a preprocessed tensor (run as one call)."""
        return self._wait(self.submit("image", images))

    def close(self) -> None:
        """Stop the model thread once the requests already queued are answered."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=60)

    # ---- the model thread ----------------------------------------------------------------
    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            pending = [first]
            size = len(first.items)
            deadline = first.queued_at + self.window_s
            while size < self.max_batch:
                left = deadline - time.perf_counter()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                pending.append(nxt)
                size += len(nxt.items)
            for kind in KINDS:
                group = [p for p in pending if p.kind == kind]
                if group:
                    self._run(kind, group)
            for p in pending:
                if p.kind == "batch":
                    self._run_batch(p)
        while True:  # a request that raced with close(): its caller gets RequestAbandoned
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                break
            if late is not None:
                late.future.cancel()

    def _encode(self, kind: str, items: list[Any]) -> np.ndarray:
        fn = self._encoder.encode_texts if kind == "text" else self._encoder.encode_images
        parts = [np.asarray(fn(items[i:i + self.model_batch])) for i in range(0, len(items), self.model_batch)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _run_batch(self, p: _Pending) -> None:
        """A preprocessed image tensor runs as it is, in one call: it is already a batch."""
        if p.abandon is not None and p.abandon.is_set():
            p.future.cancel()
        if not p.future.set_running_or_notify_cancel():
            return
        start = time.perf_counter()
        try:
            p.future.set_result(self._encoder.encode_images(p.items))
        except Exception as exc:  # noqa: BLE001 - the caller's own error
            p.future.set_exception(exc)
        finally:
            self.batches += 1
            if self._metrics is not None:
                self._metrics.encoder.labels("image").observe(time.perf_counter() - start)

    def _run(self, kind: str, group: list[_Pending]) -> None:
        live = []
        for p in group:
            if p.abandon is not None and p.abandon.is_set():
                p.future.cancel()
            if p.future.set_running_or_notify_cancel():
                live.append(p)
        if not live:
            return
        items = [x for p in live for x in p.items]
        start = time.perf_counter()
        try:
            out = self._encode(kind, items)
            if len(out) != len(items):
                raise RuntimeError(f"the {kind} encoder returned {len(out)} rows for {len(items)} items")
        except Exception as exc:  # noqa: BLE001 - one request's bad item: retry each alone, below
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            log.info("a batch of %d %s requests failed (%s): encoding each alone", len(live), kind, exc)
            for p in live:
                try:
                    p.future.set_result(self._encode(kind, p.items))
                except Exception as one:  # noqa: BLE001 - that request's own error
                    p.future.set_exception(one)
            return
        finally:
            self.batches += 1
            if self._metrics is not None:
                self._metrics.encoder.labels(kind).observe(time.perf_counter() - start)
        at = 0
        for p in live:
            p.future.set_result(out[at:at + len(p.items)])
            at += len(p.items)


def encode_each(encoder: Any, kind: str, items: Sequence[Any]) -> list[np.ndarray | Exception]:
    """Each item's row, or the exception encoding it raised: one bad item costs only itself.

    Through an :class:`EncoderBatcher` every item is its own request (all of them share the model
    call); another encoder gets one call for all, then one per item if that call fails."""
    if isinstance(encoder, EncoderBatcher):
        futures = [encoder.submit(kind, [x]) for x in items]
        out: list[np.ndarray | Exception] = []
        for fut in futures:
            try:
                out.append(encoder._wait(fut)[0])
            except RequestAbandoned:
                raise
            except Exception as exc:  # noqa: BLE001 - that item's own error
                out.append(exc)
        return out
    fn = encoder.encode_texts if kind == "text" else encoder.encode_images
    try:
        return list(fn(list(items))) if items else []
    except Exception:  # noqa: BLE001 - find the bad items
        out = []
        for x in items:
            try:
                out.append(fn([x])[0])
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out
