"""The text-tower export, off the indexing run's critical path: a low-priority child process and its state.

An index run returns as soon as its vectors are durable. The fast text path then comes, in order, from
the collection itself (already exported), from this user's cache (:func:`retrieval.search.text_tower_export.user_cache_folder`,
hard-linked in a few milliseconds, torch-free), or from an export in a child process started by
:func:`start_export`: ``python -m retrieval.search.text_tower_job``, at the lowest CPU priority, detached from the
terminal, which loads the encoder (its vision weights are memory-mapped and never read) and runs
:func:`retrieval.search.text_tower_export.ensure_text_tower`. Searches use the full model meanwhile.

The job's state lives beside the export in ``<collection>/text_tower/``::

    .job.lock    held (flock) by the child for its whole life: "pending" while it is held
    job.json     {"state": "running"|"done"|"failed", "why", "pid", "started_at", "finished_at"}
    export.log   the child's log

:func:`export_state` reads them (no torch, no onnxruntime): ``ready``, ``pending``, ``failed`` (with why: the
export's own error, or "ended before it finished" for a killed job) or ``missing``. The next index/reindex
retries a failed or missing export. The export itself commits with its sidecar, so a killed job leaves
nothing a search would load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from indexer.core.atomic import atomic_write_json

from .text_tower import TextTowerError, check_export, text_tower_folder
from .text_tower_export import install_text_tower, user_cache_folder

log = logging.getLogger(__name__)

JOB_LOCK = ".job.lock"
JOB_STATE = "job.json"
JOB_LOG = "export.log"
READY, PENDING, FAILED, MISSING = "ready", "pending", "failed", "missing"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_job(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / JOB_STATE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_job(folder: Path, **state: Any) -> None:
    """Record the job's state; a full or read-only disk must not turn into a second error."""
    try:
        atomic_write_json(folder / JOB_STATE, state)
    except OSError as exc:
        log.warning("cannot record the text-tower export state in %s: %s", folder, exc)


def _try_lock(folder: Path) -> int | None:
    """An fd holding the job lock, or None when a job holds it. Raises OSError if the folder is unwritable."""
    import fcntl

    fd = os.open(folder / JOB_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _job_running(folder: Path) -> bool:
    if not (folder / JOB_LOCK).exists():
        return False
    try:
        fd = _try_lock(folder)
    except OSError:  # read-only collection: a reader cannot take the lock; say what the state file says
        return _read_job(folder).get("state") == "running"
    if fd is None:
        return True
    os.close(fd)
    return False


def export_state(collection_path: str | os.PathLike[str], spec_id: str) -> dict[str, Any]:
    """Where the collection's fast text path stands: ``{"state": ready|pending|failed|missing, "why": ...}``."""
    folder = text_tower_folder(collection_path)
    try:
        meta, _ = check_export(folder, spec_id, "auto")
        return {"state": READY, "why": f"exported {meta.get('created_at', '')}".strip()}
    except TextTowerError as exc:
        not_ready = str(exc)
    job = _read_job(folder)
    if _job_running(folder):
        return {"state": PENDING, "why": f"an export started at {job.get('started_at', '?')} is running "
                f"(pid {job.get('pid', '?')}, log {folder / JOB_LOG}); text searches use the full model meanwhile"}
    if job.get("state") == FAILED:
        return {"state": FAILED, "why": f"{job.get('why', 'unknown')} (at {job.get('finished_at', '?')})"}
    if job.get("state") == "running":
        return {"state": FAILED, "why": f"the export started at {job.get('started_at', '?')} (pid "
                f"{job.get('pid', '?')}) ended before it finished: killed, or it could not record why "
                f"(see {folder / JOB_LOG})"}
    return {"state": MISSING, "why": not_ready}


def start_export(collection_path: str | os.PathLike[str], spec_id: str, model: str,
                 pretrained: str | None) -> dict[str, Any]:
    """Make the fast text path ready or on its way, without loading torch here; returns :func:`export_state`
    plus ``previous`` (why the last export failed) when this is a retry."""
    folder = text_tower_folder(collection_path)
    before = export_state(collection_path, spec_id)
    if before["state"] in (READY, PENDING):
        return before
    previous = before["why"] if before["state"] == FAILED else None
    cache = user_cache_folder(spec_id)
    try:
        check_export(cache, spec_id, "auto")
    except TextTowerError as exc:
        log.debug("no reusable export in the user cache: %s", exc)
        out = _spawn(folder, spec_id, model, pretrained)
    else:
        try:
            install_text_tower(cache, folder, spec_id)
            out = {"state": READY, "why": "reused this user's export of the encoder"}
        except TextTowerError as exc:  # e.g. a full disk: an export would fail the same way
            out = {"state": FAILED, "why": str(exc)}
            _write_job(folder, state=FAILED, spec_id=spec_id, why=str(exc), finished_at=_now())
    if previous:
        out["previous"] = previous
    return out


def background_supported() -> bool:
    """The job's lock is a POSIX ``flock``; elsewhere the caller exports in-process."""
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover - Windows
        return False
    return True


def _spawn(folder: Path, spec_id: str, model: str, pretrained: str | None) -> dict[str, Any]:
    """Start the child with the job lock already held for it (the fd is inherited: no window in which
    the job is running but the lock free)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _try_lock(folder)
        if fd is None:
            return export_state(folder.parent, spec_id)
        try:
            atomic_write_json(folder / JOB_STATE, {"state": "running", "spec_id": spec_id, "started_at": _now(),
                                                   "pid": None})
            cmd = [sys.executable, "-m", __name__, str(folder.parent), "--spec-id", spec_id, "--model", model,
                   "--lock-fd", str(fd)]
            if pretrained:
                cmd += ["--pretrained", pretrained]
            with open(folder / JOB_LOG, "wb") as log_fh:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                                        pass_fds=(fd,), start_new_session=True, env=_child_env())
        finally:
            os.close(fd)  # the child's copy keeps the lock; the child records its pid itself
    except OSError as exc:
        why = f"cannot start the text-tower export in {folder}: {exc.strerror or exc}"
        _write_job(folder, state=FAILED, spec_id=spec_id, why=why, finished_at=_now())
        return {"state": FAILED, "why": why}
    return {"state": PENDING, "why": f"exporting in the background (pid {proc.pid}, log {folder / JOB_LOG}); "
            "text searches use the full model until `photodex info` says text_tower: ready"}


def _child_env() -> dict[str, str]:
    """This process's environment, with the folder holding photodex's packages first on the path: the child runs
    the same code, whether photodex is installed or run from a checkout."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[len(__name__.split(".")) - 1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def wait_for_export(collection_path: str | os.PathLike[str], spec_id: str, timeout: float = 600.0) -> dict[str, Any]:
    """Block until the job is no longer pending (or ``timeout`` seconds); its final :func:`export_state`."""
    deadline = time.monotonic() + timeout
    while True:
        state = export_state(collection_path, spec_id)
        if state["state"] != PENDING or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def _lower_priority() -> None:
    """Run only on CPU time the user's work leaves over."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(19)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def run_job(collection: Path, spec_id: str, model: str, pretrained: str | None) -> int:
    """The child's work: load the encoder (fp32, CPU), check it is the collection's, export; record the outcome."""
    folder, t0 = text_tower_folder(collection), time.monotonic()
    _write_job(folder, state="running", spec_id=spec_id, started_at=_now(), pid=os.getpid())
    try:
        from indexer.core.errors import PhotodexError
        from indexer.encode.encoders import load_encoder

        from .text_tower_export import ensure_text_tower

        try:
            encoder = load_encoder(model, pretrained, device="cpu", precision="fp32")
            if encoder.spec.id != spec_id:
                raise TextTowerError(f"the encoder {model!r} loads as {encoder.spec.id!r}, "
                                     f"but the collection was built with {spec_id!r}")
            ensure_text_tower(collection, encoder)
        except PhotodexError as exc:
            raise _Failed(str(exc)) from exc
        except OSError as exc:
            raise _Failed(f"cannot write the text tower: {exc}") from exc
    except _Failed as exc:
        log.error("text-tower export failed: %s", exc)
        _write_job(folder, state=FAILED, spec_id=spec_id, why=str(exc)[:1000], finished_at=_now())
        return 1
    except BaseException as exc:  # a bug: still recorded, then the traceback goes to the log
        _write_job(folder, state=FAILED, spec_id=spec_id, why=f"{type(exc).__name__}: {exc}"[:1000],
                   finished_at=_now())
        raise
    _write_job(folder, state="done", spec_id=spec_id, finished_at=_now(), seconds=round(time.monotonic() - t0, 2),
               peak_rss_mib=_peak_rss_mib())
    log.info("text tower ready in %s (%.1f s, peak RSS %s MiB)", folder, time.monotonic() - t0, _peak_rss_mib())
    return 0


def _peak_rss_mib() -> int | None:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # KiB on Linux
    except (ImportError, OSError):
        return None


class _Failed(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m retrieval.search.text_tower_job", description=__doc__.split("\n")[0])
    p.add_argument("collection", type=Path)
    p.add_argument("--spec-id", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--pretrained")
    p.add_argument("--lock-fd", type=int, help="the job lock, taken for this process by its parent")
    args = p.parse_args(argv)
    _lower_priority()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("indexer", "retrieval"):
        logging.getLogger(name).setLevel(logging.INFO)
    return run_job(args.collection, args.spec_id, args.model, args.pretrained)


if __name__ == "__main__":
    raise SystemExit(main())
