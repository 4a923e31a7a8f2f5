"""A server's index view, kept current off the request path: searches never wait on the writer or catch up.

:func:`~.store.open_index` brings its cached view up to date on the caller's thread: the first
search after each committed batch reads the id list and the new vectors itself (on 100k
vectors, 0.1-1 s on a CPU the writer keeps busy; see bench/results/search-under-write-cpu-2core.md).
A long-running reader (``photodex serve``) instead keeps an :class:`IndexLoader`: one
background thread that polls the catalog generation and ``index/state.json``, builds the next
complete view (a new index version loaded and verified, the delta of newly committed vectors
read) and swaps it in with one reference assignment. :meth:`IndexLoader.current` only returns
the ready view, so a search never reads the catalog's vectors, never loads an index file and
never blocks on anything the writer holds.

What a search sees lags a commit by at most the poll interval plus the catch-up time;
:meth:`IndexLoader.refresh` catches up synchronously (an index job in the same process calls
it before it reports success, so a finished job's photos are searchable).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from indexer.collection import Collection
from indexer.priority import renice_thread

from .state import index_state, index_version
from .store import SearchableIndex, load_base, with_delta

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often the loader looks for a commit or a new index version
LOADER_NICE = 10  # the loader thread's priority drop (Linux: per thread)
SEARCH_THREADS = 1  # faiss (OpenMP) threads per request thread: concurrent requests fill the cores


class IndexLoader:
    """Keeps a complete :class:`SearchableIndex` of ``coll`` ready; see the module docstring."""

    def __init__(self, coll: Collection, poll_s: float = POLL_S, *, start: bool = True,
                 search_threads: int | None = SEARCH_THREADS) -> None:
        """``search_threads``: OpenMP threads for faiss work on each thread that takes a view (None:
        faiss's default, every core). One per request is the server's default: a one-query search
        split over threads waits at OpenMP barriers for whichever thread the OS has descheduled,
        which on a CPU shared with an index run is most of its latency (bench/results/
        search-under-write-cpu-2core.md)."""
        self.coll = coll
        self.poll_s = poll_s
        self.search_threads = search_threads
        self._threads_set = threading.local()
        self._refresh_lock = threading.Lock()  # one catch-up at a time (the thread or refresh())
        self._stop = threading.Event()
        self._view: SearchableIndex | None = None
        self._ident: tuple[str | None, int] | None = None
        self.swaps = 0  # views swapped in since the first (for tests and logs)
        self.refresh()  # the first view, synchronously: the server is ready once it has one
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._loop, name="photodex-index-loader", daemon=True)
            self._thread.start()

    def current(self) -> SearchableIndex:
        """The ready view: no catalog read, no file load, no lock the writer can hold."""
        if self.search_threads is not None and not getattr(self._threads_set, "done", False):
            import faiss  # the view's base already imported it

            faiss.omp_set_num_threads(self.search_threads)  # OpenMP settings are per calling thread
            self._threads_set.done = True
        view = self._view
        assert view is not None  # set by __init__
        return view

    def refresh(self) -> SearchableIndex:
        """Catch up now (on the caller's thread) and swap the new view in; returns it."""
        with self._refresh_lock:
            generation = self.coll.generation()
            state = index_state(self.coll)
            version = index_version(state)
            if self._view is not None and self._ident == (version, generation):
                return self._view
            start = time.perf_counter()
            prev = self._view
            same_version = prev is not None and self._ident is not None and self._ident[0] == version
            base = prev.base if same_version and prev is not None else None
            if version is not None and not same_version:  # a new index version: load and verify it here
                base = load_base(self.coll, state, prev.base if prev is not None else None)
            view = with_delta(self.coll, base, state.get("generation") == generation, generation,
                              prev if prev is not None and prev.base is base else None,
                              version if base is not None else None)
            _warm(view)
            self._view, self._ident = view, (version, generation)  # the swap: one reference assignment
            if prev is not None:
                self.swaps += 1
            log.info("index view: version %s, generation %d, %d exact rows (%.0f ms off the request path)",
                     version, generation, view.exact_rows, (time.perf_counter() - start) * 1e3)
            return view

    def _loop(self) -> None:
        renice_thread(LOADER_NICE)  # catching up yields the CPU to the searches it is for
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - keep serving the view we have; try again next poll
                log.exception("index loader: catching up failed; searches keep the previous view")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _warm(view: SearchableIndex) -> None:
    """One search before the swap, so lazy set-up (mmapped pages, GPU copies) is not paid by a request."""
    if len(view):
        view.search(np.zeros((1, view.dim), np.float32), 1)


def one_blas_thread() -> None:
    """numpy's (and faiss's) BLAS on one thread per call, for the whole process: for a server, whose
    requests run concurrently. The small products of a search (near-duplicate collapse, the exact
    delta scan) split over threads wait for whichever thread the OS has descheduled on a busy CPU:
    p99 of a 40x512 Gram matrix 57-64 ms with 2 threads, 8 ms with 1, at load 9 on 2 cores
    (bench/results/search-under-write-cpu-2core.md). The model's threads (torch) are not affected."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
