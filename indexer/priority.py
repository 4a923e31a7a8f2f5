"""An index run yields the CPU to a server that serves the same collection.

A server (``photodex serve``) holds a shared ``flock`` on ``<collection>/serving.lock`` while it
runs (:class:`ServingMark`; every uvicorn worker holds its own). An index run on that collection
(``photodex index``, ``photodex reindex``, an API index job) sees it (:func:`is_served`) and, by
default, lowers its CPU priority to ``nice`` :data:`DEFAULT_NICE` and leaves the server a core
where there are several (:func:`yield_cpu`): the run still finishes, at the speed the idle
cores allow, while searches keep their latency (bench/results/search-under-write-cpu-2core.md).
An explicit ``--nice N`` (``PHOTODEX_INDEX_NICE``) applies whether or not a server is there;
``--nice 0`` turns it off.

Scope: a CLI run renices its whole process (every thread; decode workers started later inherit
it) and caps torch's and faiss's threads; an API job (``scope="thread"``) renices only its own
thread, whose decode workers inherit it, and leaves the server's threads alone. Priorities are
not raised back (that needs privileges); the run's threads and workers end with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

SERVING_LOCK = "serving.lock"
DEFAULT_NICE = 10  # when a server holds the collection and no --nice was given


class ServingMark:
    """A server's shared lock on ``<collection>/serving.lock``: index runs see the collection is served."""

    def __init__(self, collection: str | os.PathLike[str]) -> None:
        self._fd: int | None = None
        path = Path(collection) / SERVING_LOCK
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:  # a read-only collection, or an odd filesystem: index runs just won't yield
            log.info("cannot mark %s as served (%s): index runs will not lower their priority", path, exc)
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def is_served(collection: str | os.PathLike[str]) -> bool:
    """Whether a server on this machine holds ``collection`` (its :class:`ServingMark`)."""
    try:
        fd = os.open(Path(collection) / SERVING_LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops the lock if we got it
    return False


def choose_nice(collection: str | os.PathLike[str], nice: int | None) -> int:
    """The niceness increment a run uses: ``nice`` if given, else :data:`DEFAULT_NICE` when served, else 0."""
    if nice is not None:
        return max(0, int(nice))
    return DEFAULT_NICE if is_served(collection) else 0


def _renice(tid: int, increment: int) -> None:
    with contextlib.suppress(OSError):  # a thread that just ended, or no permission: nothing to do
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))


def renice_thread(increment: int) -> None:
    """Lower the calling thread's CPU priority by ``increment`` (Linux: nice values are per thread)."""
    _renice(threading.get_native_id(), increment)


def yield_cpu(collection: str | os.PathLike[str], nice: int | None = None,
              scope: Literal["process", "thread"] = "process") -> int:
    """Lower this run's CPU priority (see the module docstring); returns the increment applied (0: none)."""
    increment = choose_nice(collection, nice)
    if increment <= 0:
        return 0
    if scope == "thread":  # Linux: a thread's nice value is its own
        renice_thread(increment)
    else:
        try:
            tids = [int(t) for t in os.listdir("/proc/self/task")]
        except OSError:
            tids = [0]
        for tid in tids:
            _renice(tid, increment)
        cap_threads()
    log.info("a server holds this collection or --nice was given: index run at nice +%d (%s)", increment, scope)
    return increment


def cap_threads() -> None:
    """Leave a core to the server where there are several: torch's and faiss's threads to cores - 1."""
    cores = os.cpu_count() or 1
    if cores < 3:  # on 2 cores, one thread each would halve the run; the nice value already yields
        return
    import sys

    if "torch" in sys.modules:  # the encoder, when this run loads one
        import torch

        torch.set_num_threads(min(torch.get_num_threads(), cores - 1))
    import faiss  # the index refresh that ends the run

    faiss.omp_set_num_threads(cores - 1)
