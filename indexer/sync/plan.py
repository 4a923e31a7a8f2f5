"""Bring the catalog in line with the folders: hash new/changed files, link moves, drop deletions.

Work is committed in chunks, so a run killed at any instant resumes by re-hashing only what was
not yet committed; deletions happen only after a complete scan, and never under a folder that
could not be listed. Files are keyed on their exact name (``path_bytes``); only regular files are
ever opened, without blocking, so a FIFO or device named ``*.jpg`` cannot hang a run.

Every path the scan reaches must resolve inside the allowed roots (the folders being indexed, or the
API's library roots); a symlink leading elsewhere is skipped and counted (``outside_roots``), unless
the caller follows external symlinks on purpose. Each path's resolved path, device and inode are
recorded (:mod:`indexer.file_identity`); a path whose recorded identity differs from the scan's is
hashed again, as a changed one is.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import NamedTuple

from ..collection import Collection
from ..core.progress import Progress
from ..file_identity import identity, is_under, real_roots
from .scan import ScannedFile, ScanProblem, not_regular_reason, scan
from .types import HASH_CHUNK, HashResult, SyncReport

log = logging.getLogger(__name__)


class NotRegularFileError(OSError):
    """The path is a FIFO, socket, device or folder, or no longer the file scanned; its message is the
    recorded reason."""


def _sha256_regular(path: bytes, block: int = 1 << 20, real: bytes | None = None) -> tuple[str, os.stat_result]:
    """Hash a regular file; its ``fstat`` is taken before reading (a later change shows as a new mtime).

    The type is checked before opening, and again on the open descriptor: the open is
    non-blocking, so a file swapped for a FIFO in between is refused instead of hanging. With
    ``real`` (the path the scan resolved), the descriptor must be the file there, so a symlink
    swapped in after the scan cannot get another file read.
    """
    reason = not_regular_reason(os.stat(path).st_mode)
    if reason is None:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            reason = not_regular_reason(st.st_mode)
            if reason is None and real is not None and not os.path.samestat(st, os.stat(real)):
                reason = "changed while being indexed: the path now leads to another file"
            if reason is None:
                digest = hashlib.sha256()
                while chunk := fh.read(block):
                    digest.update(chunk)
                return digest.hexdigest(), st
    raise NotRegularFileError(reason)


def sha256_file(path: bytes, block: int = 1 << 20) -> str:
    """Hex sha256 of a regular file; :class:`NotRegularFileError` for anything else."""
    return _sha256_regular(path, block)[0]


def _hash(entry: ScannedFile) -> HashResult:
    try:
        digest, st = _sha256_regular(entry.path, real=entry.real_path)
        device, inode = identity(st)
        return replace(entry, size=st.st_size, mtime_ns=st.st_mtime_ns, device=device, inode=inode), digest, None
    except NotRegularFileError as exc:
        return entry, None, str(exc)
    except FileNotFoundError:
        return entry, None, "file vanished before it could be read"
    except PermissionError:
        return entry, None, "permission denied"
    except OSError as exc:
        return entry, None, f"cannot read: {exc.strerror or exc}"


def _inside(path: bytes, folders: set[bytes]) -> bool:
    """Whether a parent folder of ``path`` is in ``folders``."""
    while (head := path.rpartition(b"/")[0]) != path:
        if (head or b"/") in folders:
            return True
        if not head:
            return False
        path = head
    return False


def sync_catalog(
    coll: Collection,
    roots: Sequence[str | os.PathLike[str]],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    hash_threads: int = 4,
    retry_errors: bool = False,
    progress: Progress | None = None,
    allowed_roots: Sequence[str | os.PathLike[str]] | None = None,
    follow_external_symlinks: bool = False,
) -> SyncReport:
    """Scan ``roots`` and update the catalog; returns what changed.

    ``allowed_roots``: what every scanned path must resolve inside (default: ``roots`` themselves);
    ``follow_external_symlinks`` lifts that limit."""
    report = SyncReport()
    root_bytes = [os.fsencode(os.path.abspath(os.fspath(r))) for r in roots]
    within = None if follow_external_symlinks else real_roots(allowed_roots if allowed_roots is not None else roots)
    known: dict[bytes, _Known] = {}
    for row in coll.reader.rows("SELECT path_bytes, size, mtime_ns, photo_id, error, real_path_bytes, device, inode "
                                "FROM photo_files"):
        path = bytes(row[0])
        if is_under(path, root_bytes):
            known[path] = _Known(path, *row[1:5], bytes(row[5]) if row[5] is not None else None, row[6], row[7])
    problems: list[ScanProblem] = []
    seen: set[bytes] = set()
    todo: list[ScannedFile] = []
    raw_skipped: list[bytes] = []
    outside: list[ScanProblem] = []
    for entry in scan(roots, include, exclude, problems=problems, raw_beside_processed=raw_skipped,
                      within=within, outside=outside):
        report.scanned += 1
        seen.add(entry.path)
        row = known.get(entry.path)
        if row is not None and (row.size, row.mtime_ns, row.real_path, row.device, row.inode) == (
                entry.size, entry.mtime_ns, entry.real_path, entry.device, entry.inode):
            if row.error is None or not retry_errors:
                report.unchanged += 1
                continue
        todo.append(entry)
    report.raw_beside_processed = len(raw_skipped)
    report.outside_roots = len(outside)
    unlisted = {p.path for p in problems}  # folders among them were not looked into: keep what is under them
    seen |= unlisted
    gone = [path for path in known if path not in seen and not _inside(path, unlisted)]
    if not (todo or problems or gone or retry_errors or _has_orphans(coll)):
        return report  # nothing to write: the ORM is not even imported
    from . import write as sync_write

    if progress:
        progress("hash", 0, len(todo))
    with ThreadPoolExecutor(max_workers=max(1, hash_threads)) as pool:
        for start in range(0, len(todo), HASH_CHUNK):
            results = list(pool.map(_hash, todo[start:start + HASH_CHUNK]))
            sync_write.commit_hashed(coll, results, report)
            if progress:
                progress("hash", min(start + HASH_CHUNK, len(todo)), len(todo))
    sync_write.record_problems(coll, problems, report)
    sync_write.remove(coll, gone, report)
    if retry_errors:
        sync_write.retry_errors(coll)
    return report


class _Known(NamedTuple):
    """A catalogued path as the sync compares it."""

    path: bytes
    size: int
    mtime_ns: int
    photo_id: int | None
    error: str | None
    real_path: bytes | None
    device: int | None
    inode: int | None


def _has_orphans(coll: Collection) -> bool:
    """Whether a photo has no path left (a run killed between recording a changed file and removing the
    photo it no longer points at leaves one): the next sync removes it."""
    return bool(coll.reader.rows("SELECT 1 FROM photos WHERE NOT EXISTS "
                                 "(SELECT 1 FROM photo_files f WHERE f.photo_id = photos.id) LIMIT 1"))
