"""Index jobs: one background thread per job, holding the collection's writer lock for its whole run.

A job is started only under a configured library root (``PHOTODEX_API_LIBRARY_ROOTS``), its scan
skips (and counts) every symlinked file or folder that resolves outside those roots, and it is started only
when the writer lock is free (:class:`~indexer.core.errors.WriterBusyError`, i.e. 409, otherwise — the
lock is taken before the job is accepted, so the answer is immediate and holds across processes).
Cancellation is checked in the progress callback, which raises :class:`JobCancelled`; the run is
resumable, so a cancelled job loses nothing that was committed. Job records live in this process's
memory (the newest ``MAX_JOBS``).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.core.errors import PhotodexError
from ui.context import ingest_hook
from indexer.run import RunOptions

from .errors import ApiError, not_found

if TYPE_CHECKING:
    from indexer.collection import Collection
    from ui.settings import Settings

    from .metrics import Metrics

log = logging.getLogger(__name__)

MAX_JOBS = 100
Runner = Callable[..., Any]  # indexer.run.index_paths's signature


class JobCancelled(Exception):
    """Raised from the progress callback when a job was asked to stop."""


@dataclass
class Job:
    id: str
    paths: list[str]
    status: str = "running"
    phase: str | None = None
    done: int = 0
    total: int = 0
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    finished_at: datetime | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    thread: threading.Thread | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("id", "paths", "status", "phase", "done", "total", "created_at",
                                              "finished_at", "error", "summary")}


def allowed_paths(paths: Sequence[str], roots: Sequence[Path]) -> list[str]:
    """Resolved (symlink-free) paths, each under one of ``roots``; :class:`ApiError` 403/422 otherwise."""
    if not roots:
        raise ApiError(403, "no_library_roots",
                       "indexing through the API is off: no library roots are configured (PHOTODEX_API_LIBRARY_ROOTS)")
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    out = []
    for p in paths:
        if not p or "\x00" in p or not os.path.isabs(p):
            raise ApiError(422, "invalid_path", "index paths must be absolute paths", {"path": p})
        real = Path(os.path.realpath(p))
        if not any(real == r or real.is_relative_to(r) for r in real_roots):
            raise ApiError(403, "path_not_allowed", "path is outside the configured library roots",
                           {"path": p, "library_roots": [str(r) for r in real_roots]})
        if not real.exists():
            raise ApiError(422, "path_not_found", "path not found", {"path": p})
        out.append(str(real))
    return out


class JobManager:
    """Starts, tracks and cancels this process's index jobs."""

    def __init__(self, coll: "Collection", encoder: Any, settings: "Settings", metrics: "Metrics | None" = None,
                 runner: Runner | None = None, after_index: Callable[[], Any] | None = None) -> None:
        """``after_index``: called once a job's index is refreshed, before it reports success (the
        server's index loader catches up there, so a finished job's photos are searchable)."""
        from indexer.run import index_paths

        self.coll = coll
        self.encoder = encoder
        self.settings = settings
        self.metrics = metrics
        self.runner = runner or index_paths
        self.after_index = after_index
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, paths: Sequence[str], retry_errors: bool = False) -> Job:
        """Check the paths, take the writer lock (409 if held) and run the job in a thread."""
        real = allowed_paths(paths, self.settings.api_library_roots)
        job_id = uuid.uuid4().hex
        lock = self.coll.writer_lock().acquire(wait=False, note={"job": job_id})  # WriterBusyError → 409
        job = Job(id=job_id, paths=real)
        options = RunOptions(batch_size=self.settings.batch_size, workers=self.settings.workers,
                             max_image_pixels=self.settings.max_image_pixels, include=self.settings.include,
                             exclude=self.settings.exclude, retry_errors=retry_errors, on_commit=ingest_hook(),
                             allowed_roots=self.settings.api_library_roots,  # what the scan reaches, too
                             nice=self.settings.index_nice, nice_scope="thread")  # yield to this server's requests
        job.thread = threading.Thread(target=self._run, args=(job, lock, options), name=f"index-job-{job.id[:8]}",
                                      daemon=True)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > MAX_JOBS:
                oldest = next(iter(self._jobs.values()))
                if oldest.finished_at is None:
                    break
                self._jobs.popitem(last=False)
        job.thread.start()
        return job

    def _progress(self, job: Job) -> Callable[[str, int, int], None]:
        def progress(phase: str, done: int, total: int) -> None:
            if job.cancel.is_set():
                raise JobCancelled()
            job.phase, job.done, job.total = phase, done, total

        return progress

    def _run(self, job: Job, lock: Any, options: RunOptions) -> None:
        from retrieval.index.store import refresh_index

        if self.metrics:
            self.metrics.jobs_running.inc()
        try:
            summary = self.runner(self.coll, self.encoder, job.paths, options, self._progress(job), lock=lock)
            if job.cancel.is_set():
                raise JobCancelled()
            job.phase = "index"
            index = refresh_index(self.coll, shards=self.settings.index_shards)
            if self.after_index is not None:
                self.after_index()
            job.summary = {**(summary.to_dict() if hasattr(summary, "to_dict") else {}), "index": index}
            job.status = "succeeded"
        except JobCancelled:
            job.status = "cancelled"
            log.info("index job %s cancelled", job.id)
        except PhotodexError as exc:
            job.status, job.error = "failed", exc.for_http()
            log.warning("index job %s failed: %s", job.id, exc)
        except Exception:  # noqa: BLE001 - a job's crash is reported on the job, logged here
            job.status, job.error = "failed", "internal error (logged on the server)"
            log.exception("index job %s crashed", job.id)
        finally:
            lock.release()
            job.finished_at = datetime.now(timezone.utc)
            if self.metrics:
                self.metrics.jobs_running.dec()

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise not_found(f"index job {job_id}")
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return list(reversed(self._jobs.values()))

    def cancel(self, job_id: str) -> Job:
        """Ask a running job to stop (it stops at its next progress report); 409 if it has finished."""
        job = self.get(job_id)
        if job.finished_at is not None:
            raise ApiError(409, "job_finished", f"index job {job_id} has already finished ({job.status})")
        job.cancel.set()
        return job

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel running jobs and wait for their threads (they release the writer lock)."""
        for job in self.list():
            job.cancel.set()
        for job in self.list():
            if job.thread is not None and job.thread.is_alive():
                job.thread.join(timeout)
