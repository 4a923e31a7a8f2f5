"""The catalog writes of a sync (:mod:`indexer.sync.plan` decides what to write; this module holds the ORM).

Kept apart so that a re-check of an unchanged library, which writes nothing, never imports SQLAlchemy.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from ..catalog.models import ERROR, PENDING, Photo, PhotoFile
from ..collection import Collection
from .scan import ScannedFile, ScanProblem, display_path
from .types import HASH_CHUNK, HashResult, SyncReport

log = logging.getLogger(__name__)

FileRow = tuple[bytes, int, int, "int | None", "str | None", "ScannedFile | None"]
"""path, size, mtime_ns, photo_id, error, and the scanned file whose identity to record (None: none)"""
RowErrors = (IntegrityError, DataError)  # the database refused a row: a per-file problem, not a failed run


def _upsert_files(s: Session, rows: list[FileRow]) -> None:
    """Insert or update path rows; one query finds the existing ones (``path_bytes`` is the unique key)."""
    by_path = {row[0]: row for row in rows}  # a path given twice: the last row wins
    existing = {bytes(f.path_bytes): f
                for f in s.scalars(select(PhotoFile).where(PhotoFile.path_bytes.in_(list(by_path))))} if by_path else {}
    for path, size, mtime_ns, photo_id, error, scanned in by_path.values():
        row = existing.get(path)
        if row is None:
            row = PhotoFile(path=display_path(path), path_bytes=path)
            s.add(row)
        row.path, row.size, row.mtime_ns = display_path(path), size, mtime_ns
        row.photo_id, row.error = photo_id, error
        row.real_path_bytes, row.device, row.inode = ((scanned.real_path, scanned.device, scanned.inode)
                                                      if scanned is not None else (None, None, None))


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
                rows.append((entry.path, entry.size, entry.mtime_ns, None, error, entry))
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
            rows.append((entry.path, entry.size, entry.mtime_ns, photo_id, None, entry))
        _upsert_files(s, rows)
    return done


def _db_reason(exc: Exception) -> str:
    return "cannot record in catalog: " + (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0]


def commit_hashed(coll: Collection, results: list[HashResult], report: SyncReport) -> None:
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
            _record_error(coll, ScanProblem(entry.path, _db_reason(exc)), entry)


def _record_error(coll: Collection, problem: ScanProblem, entry: ScannedFile | None = None) -> bool:
    """Record one file's reason in its own transaction; False (logged) if even that is refused."""
    log.warning("skipping %s: %s", display_path(problem.path), problem.reason)
    try:
        with coll.catalog.session() as s, s.begin():
            _upsert_files(s, [(problem.path, entry.size if entry else 0, entry.mtime_ns if entry else 0, None,
                               problem.reason, entry)])
        return True
    except RowErrors as exc:
        log.error("cannot record the error of %s in the catalog: %s", display_path(problem.path), _db_reason(exc))
        return False


def record_problems(coll: Collection, problems: list[ScanProblem], report: SyncReport) -> None:
    """Record skipped files in chunks (bounded statement size); a refused chunk is retried file by file."""
    report.file_errors += len(problems)
    for start in range(0, len(problems), HASH_CHUNK):
        part = problems[start:start + HASH_CHUNK]
        try:
            with coll.catalog.session() as s, s.begin():
                _upsert_files(s, [(p.path, 0, 0, None, p.reason, None) for p in part])
        except RowErrors as exc:
            log.warning("catalog refused %d skipped-file records (%s); recording them one by one",
                        len(part), _db_reason(exc))
            for p in part:
                _record_error(coll, p)
            continue
        for p in part:
            log.warning("skipping %s: %s", display_path(p.path), p.reason)


def remove(coll: Collection, gone: list[bytes], report: SyncReport) -> None:
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


def retry_errors(coll: Collection) -> None:
    """Send every photo that failed before back to the encoder."""
    with coll.catalog.session() as s, s.begin():
        s.execute(update(Photo).where(Photo.status == ERROR).values(status=PENDING, error=None))
