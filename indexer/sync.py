"""Bring the catalog in line with the folders: hash new/changed files, link moves, drop deletions.

Work is committed in chunks, so a run killed at any instant resumes by re-hashing only what was
not yet committed; deletions happen only after a complete scan.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from sqlalchemy import delete, exists, select, update

from .catalog_models import ERROR, PENDING, Photo, PhotoFile
from .collection import Collection
from .scan import ScannedFile, ScanProblem, display_path, scan

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
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

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sha256_file(path: bytes, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _hash(entry: ScannedFile) -> tuple[ScannedFile, str | None, str | None]:
    try:
        st = os.stat(entry.path)
        digest = sha256_file(entry.path)
        entry = ScannedFile(entry.path, st.st_size, st.st_mtime_ns)
        return entry, digest, None
    except FileNotFoundError:
        return entry, None, "file vanished before it could be read"
    except PermissionError:
        return entry, None, "permission denied"
    except IsADirectoryError:
        return entry, None, "is a directory"
    except OSError as exc:
        return entry, None, f"cannot read: {exc.strerror or exc}"


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
            row.path_bytes: row
            for row in s.execute(
                select(PhotoFile.path_bytes, PhotoFile.size, PhotoFile.mtime_ns, PhotoFile.photo_id, PhotoFile.error)
            )
            if _under(row.path_bytes, root_bytes)
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
    for p in problems:
        seen.add(p.path)
    gone = [path for path in known if path not in seen]
    _remove(coll, gone, report)
    if retry_errors:
        with coll.catalog.session() as s, s.begin():
            s.execute(update(Photo).where(Photo.status == ERROR).values(status=PENDING, error=None))
    return report


FileRow = tuple[bytes, int, int, "int | None", "str | None"]  # path, size, mtime_ns, photo_id, error


def _upsert_files(s, rows: list[FileRow]) -> None:  # noqa: ANN001 - an open Session
    """Insert or update path rows; one query finds the existing ones (``path`` is the unique key)."""
    texts = [display_path(path) for path, *_ in rows]
    existing = {f.path: f for f in s.scalars(select(PhotoFile).where(PhotoFile.path.in_(texts)))} if texts else {}
    for text, (path, size, mtime_ns, photo_id, error) in zip(texts, rows):
        row = existing.get(text)
        if row is None:
            s.add(PhotoFile(path=text, path_bytes=path, size=size, mtime_ns=mtime_ns, photo_id=photo_id, error=error))
        else:
            row.path_bytes, row.size, row.mtime_ns, row.photo_id, row.error = path, size, mtime_ns, photo_id, error


def _commit_hashed(coll: Collection, results: list[tuple[ScannedFile, str | None, str | None]], report: SyncReport) -> None:
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with coll.catalog.session() as s, s.begin():
        shas = {sha for _, sha, _ in results if sha}
        existing = dict(s.execute(select(Photo.sha256, Photo.id).where(Photo.sha256.in_(shas))).all()) if shas else {}
        rows: list[FileRow] = []
        for entry, sha, error in results:
            report.hashed += 1
            if sha is None:
                report.file_errors += 1
                rows.append((entry.path, entry.size, entry.mtime_ns, None, error))
                continue
            photo_id = existing.get(sha)
            if photo_id is None:
                photo = Photo(sha256=sha, size=entry.size, status=PENDING, created_at=now)
                s.add(photo)
                s.flush()
                photo_id = existing[sha] = photo.id
                report.new_photos += 1
            else:
                report.linked_existing += 1
            rows.append((entry.path, entry.size, entry.mtime_ns, photo_id, None))
        _upsert_files(s, rows)


def _record_problems(coll: Collection, problems: list[ScanProblem], report: SyncReport) -> None:
    if not problems:
        return
    with coll.catalog.session() as s, s.begin():
        for p in problems:
            log.warning("skipping %s: %s", display_path(p.path), p.reason)
        report.file_errors += len(problems)
        _upsert_files(s, [(p.path, 0, 0, None, p.reason) for p in problems])


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
