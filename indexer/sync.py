"""Bring the catalog in line with the folders: hash new/changed files, link moves, drop deletions.

Work is committed in chunks, so a run killed at any instant resumes by re-hashing only what was
not yet committed; deletions happen only after a complete scan, and never under a folder that
could not be listed. Files are keyed on their exact name (``path_bytes``); only regular files are
ever opened, without blocking, so a FIFO or device named ``*.jpg`` cannot hang a run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from .catalog_models import ERROR, PENDING, Photo, PhotoFile
from .collection import Collection
from .progress import Progress
from .scan import ScannedFile, ScanProblem, display_path, not_regular_reason, scan

log = logging.getLogger(__name__)

HASH_CHUNK = 256


@dataclass
class SyncReport:
    scanned: int = 0
    unchanged: int = 0
    hashed: int = 0
    new_photos: int = 0
    linked_existing: int = 0  # moved, renamed or duplicate files matched by content hash
    removed_files: int = 0
    removed_photos: int = 0
    file_errors: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def add(self, other: "SyncReport") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


class NotRegularFileError(OSError):
    """The path is a FIFO, socket, device or folder; its message is the recorded reason."""


def _sha256_regular(path: bytes, block: int = 1 << 20) -> tuple[str, os.stat_result]:
    """Hash a regular file; its ``fstat`` is taken before reading (a later change shows as a new mtime).

    The type is checked before opening, and again on the open descriptor: the open is
    non-blocking, so a file swapped for a FIFO in between is refused instead of hanging.
    """
    reason = not_regular_reason(os.stat(path).st_mode)
    if reason is None:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            reason = not_regular_reason(st.st_mode)
            if reason is None:
                digest = hashlib.sha256()
                while chunk := fh.read(block):
                    digest.update(chunk)
                return digest.hexdigest(), st
    raise NotRegularFileError(reason)


def sha256_file(path: bytes, block: int = 1 << 20) -> str:
    """Hex sha256 of a regular file; :class:`NotRegularFileError` for anything else."""
    return _sha256_regular(path, block)[0]


HashResult = tuple[ScannedFile, "str | None", "str | None"]  # entry, sha256 or None, error or None


def _hash(entry: ScannedFile) -> HashResult:
    try:
        digest, st = _sha256_regular(entry.path)
        return ScannedFile(entry.path, st.st_size, st.st_mtime_ns), digest, None
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


def _under(path: bytes, roots: Sequence[bytes]) -> bool:
    return any(path == r or path.startswith(r.rstrip(b"/") + b"/") for r in roots)


def sync_catalog(
    coll: Collection,
    roots: Sequence[str | os.PathLike[str]],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    hash_threads: int = 4,
    retry_errors: bool = False,
    progress: Progress | None = None,
) -> SyncReport:
    """Scan ``roots`` and update the catalog; returns what changed."""
    report = SyncReport()
    root_bytes = [os.fsencode(os.path.abspath(os.fspath(r))) for r in roots]
    with coll.catalog.session() as s:
        known = {
            bytes(row.path_bytes): row
            for row in s.execute(
                select(PhotoFile.path_bytes, PhotoFile.size, PhotoFile.mtime_ns, PhotoFile.photo_id, PhotoFile.error)
            )
            if _under(bytes(row.path_bytes), root_bytes)
        }
    problems: list[ScanProblem] = []
    seen: set[bytes] = set()
    todo: list[ScannedFile] = []
    for entry in scan(roots, include, exclude, problems=problems):
        report.scanned += 1
        seen.add(entry.path)
        row = known.get(entry.path)
        if row is not None and row.size == entry.size and row.mtime_ns == entry.mtime_ns:
            if row.error is None or not retry_errors:
                report.unchanged += 1
                continue
        todo.append(entry)
    if progress:
        progress("hash", 0, len(todo))
    with ThreadPoolExecutor(max_workers=max(1, hash_threads)) as pool:
        for start in range(0, len(todo), HASH_CHUNK):
            results = list(pool.map(_hash, todo[start:start + HASH_CHUNK]))
            _commit_hashed(coll, results, report)
            if progress:
                progress("hash", min(start + HASH_CHUNK, len(todo)), len(todo))
    _record_problems(coll, problems, report)
    unlisted = {p.path for p in problems}  # folders among them were not looked into: keep what is under them
    seen |= unlisted
    gone = [path for path in known if path not in seen and not _inside(path, unlisted)]
    _remove(coll, gone, report)
    if retry_errors:
        with coll.catalog.session() as s, s.begin():
            s.execute(update(Photo).where(Photo.status == ERROR).values(status=PENDING, error=None))
    return report


FileRow = tuple[bytes, int, int, "int | None", "str | None"]  # path, size, mtime_ns, photo_id, error
RowErrors = (IntegrityError, DataError)  # the database refused a row: a per-file problem, not a failed run


def _upsert_files(s: Session, rows: list[FileRow]) -> None:
    """Insert or update path rows; one query finds the existing ones (``path_bytes`` is the unique key)."""
    by_path = {row[0]: row for row in rows}  # a path given twice: the last row wins
    existing = {bytes(f.path_bytes): f
                for f in s.scalars(select(PhotoFile).where(PhotoFile.path_bytes.in_(list(by_path))))} if by_path else {}
    for path, size, mtime_ns, photo_id, error in by_path.values():
        row = existing.get(path)
        if row is None:
            s.add(PhotoFile(path=display_path(path), path_bytes=path, size=size, mtime_ns=mtime_ns,
                            photo_id=photo_id, error=error))
        else:
            row.path, row.size, row.mtime_ns = display_path(path), size, mtime_ns
            row.photo_id, row.error = photo_id, error


def _write_hashed(coll: Collection, results: list[HashResult]) -> SyncReport:
    """Record hashed files (new photos, links to known ones, read errors) in one transaction."""
    done = SyncReport()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with coll.catalog.session() as s, s.begin():
        shas = {sha for _, sha, _ in results if sha}
        existing = dict(s.execute(select(Photo.sha256, Photo.id).where(Photo.sha256.in_(shas))).all()) if shas else {}
        rows: list[FileRow] = []
        for entry, sha, error in results:
            done.hashed += 1
            if sha is None:
                done.file_errors += 1
                rows.append((entry.path, entry.size, entry.mtime_ns, None, error))
                continue
            photo_id = existing.get(sha)
            if photo_id is None:
                photo = Photo(sha256=sha, size=entry.size, status=PENDING, created_at=now)
                s.add(photo)
                s.flush()
                photo_id = existing[sha] = photo.id
                done.new_photos += 1
            else:
                done.linked_existing += 1
            rows.append((entry.path, entry.size, entry.mtime_ns, photo_id, None))
        _upsert_files(s, rows)
    return done


def _db_reason(exc: Exception) -> str:
    return "cannot record in catalog: " + (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0]


def _commit_hashed(coll: Collection, results: list[HashResult], report: SyncReport) -> None:
    """Commit a chunk at once; if the database refuses it, file by file so one bad row costs only itself."""
    try:
        report.add(_write_hashed(coll, results))
        return
    except RowErrors as exc:
        log.warning("catalog refused a chunk of %d files (%s); retrying them one by one",
                    len(results), _db_reason(exc))
    for result in results:
        try:
            report.add(_write_hashed(coll, [result]))
        except RowErrors as exc:
            entry = result[0]
            report.hashed += 1
            report.file_errors += 1
            _record_error(coll, ScanProblem(entry.path, _db_reason(exc)), entry.size, entry.mtime_ns)


def _record_error(coll: Collection, problem: ScanProblem, size: int = 0, mtime_ns: int = 0) -> bool:
    """Record one file's reason in its own transaction; False (logged) if even that is refused."""
    log.warning("skipping %s: %s", display_path(problem.path), problem.reason)
    try:
        with coll.catalog.session() as s, s.begin():
            _upsert_files(s, [(problem.path, size, mtime_ns, None, problem.reason)])
        return True
    except RowErrors as exc:
        log.error("cannot record the error of %s in the catalog: %s", display_path(problem.path), _db_reason(exc))
        return False


def _record_problems(coll: Collection, problems: list[ScanProblem], report: SyncReport) -> None:
    """Record skipped files in chunks (bounded statement size); a refused chunk is retried file by file."""
    report.file_errors += len(problems)
    for start in range(0, len(problems), HASH_CHUNK):
        part = problems[start:start + HASH_CHUNK]
        try:
            with coll.catalog.session() as s, s.begin():
                _upsert_files(s, [(p.path, 0, 0, None, p.reason) for p in part])
        except RowErrors as exc:
            log.warning("catalog refused %d skipped-file records (%s); recording them one by one",
                        len(part), _db_reason(exc))
            for p in part:
                _record_error(coll, p)
            continue
        for p in part:
            log.warning("skipping %s: %s", display_path(p.path), p.reason)


def _remove(coll: Collection, gone: list[bytes], report: SyncReport) -> None:
    """Forget vanished paths, then every photo no path points at (vectors and tags go with it)."""
    with coll.catalog.session() as s, s.begin():
        for start in range(0, len(gone), 500):
            part = gone[start:start + 500]
            report.removed_files += s.execute(delete(PhotoFile).where(PhotoFile.path_bytes.in_(part))).rowcount or 0
        orphan = ~exists().where(PhotoFile.photo_id == Photo.id)
        orphan_ids = list(s.scalars(select(Photo.id).where(orphan)))
        if orphan_ids:
            for start in range(0, len(orphan_ids), 500):
                s.execute(delete(Photo).where(Photo.id.in_(orphan_ids[start:start + 500])))
            report.removed_photos = len(orphan_ids)
            coll.catalog.bump_generation(s)
