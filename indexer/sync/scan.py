"""Find photo files under folders: recursive, glob filters, safe against symlink cycles.

Camera RAW files (:data:`RAW_EXTENSIONS`: ``.dng``, ``.cr2``, ``.nef``, ``.arw``, ...) are photos,
with one rule, as in rclip: a RAW whose folder also holds a *processed sibling*, a file with the
same stem (case-insensitive) and one of :data:`PROCESSED_EXTENSIONS` (``IMG_0001.JPG`` beside
``IMG_0001.CR2``), is skipped. The camera's or the editor's rendering is the better picture and far
cheaper to decode, and indexing both would show every shot twice. Only a sibling the scan itself
would yield counts (a regular file, not hidden, not left out by ``include``/``exclude``, with an
extension in ``extensions``). A skipped RAW is not a problem and is not reported: it is simply not
yielded, so the catalog forgets it if it was indexed before and indexes it on the first run after
its sibling is gone. A RAW given directly as a root is always yielded.

With ``within`` (resolved roots), every file and folder the scan reaches must resolve inside one of
them: a symlink leading elsewhere (a folder ``dirlink -> /elsewhere`` or a file link) is neither
followed nor statted, only reported through ``outside``. Symlinks that stay inside are followed.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..file_identity import identity, is_under

log = logging.getLogger(__name__)

RAW_EXTENSIONS = frozenset(
    {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".rwl", ".raf",
     ".pef", ".srw", ".x3f", ".3fr", ".fff", ".erf", ".kdc", ".dcr", ".mrw", ".iiq", ".mos", ".mef"}
)
"""Camera RAW extensions (decoded with LibRaw through rawpy, the ``raw`` extra). ``.raw`` itself is
left out: too many files that are not photos (disk images, sensor dumps) are called that."""
PROCESSED_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".heic", ".heif", ".png", ".tif", ".tiff", ".webp"})
"""A file with one of these beside a RAW of the same stem makes the scan skip the RAW."""
PHOTO_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
) | RAW_EXTENSIONS


@dataclass(frozen=True)
class ScannedFile:
    path: bytes  # exact file-system name (may not be valid UTF-8)
    size: int
    mtime_ns: int
    real_path: bytes | None = None  # the path resolved (symlinks followed)
    device: int | None = None  # device and inode (signed 64-bit; None where the platform has none)
    inode: int | None = None


@dataclass(frozen=True)
class ScanProblem:
    path: bytes
    reason: str


def display_path(path: bytes) -> str:
    """A printable, storable text form of a file-system path (undecodable bytes as ``\\xNN``)."""
    return path.decode("utf-8", errors="backslashreplace")


def _extension(name: bytes) -> str:
    return os.path.splitext(name)[1].decode(errors="replace").lower()


def _has_photo_extension(name: bytes, extensions: frozenset[str]) -> bool:
    return _extension(name) in extensions


def _is_file(entry: os.DirEntry[bytes]) -> bool:
    try:
        return entry.is_file(follow_symlinks=True)
    except OSError:
        return False


def _stem_key(name: bytes) -> bytes:
    """The case-insensitive stem of a file name (``IMG_0001.CR2`` and ``img_0001.jpg`` share one)."""
    stem = os.path.splitext(name)[0]
    try:
        return stem.decode("utf-8").casefold().encode("utf-8")
    except UnicodeDecodeError:
        return stem.lower()


def _stat(path: bytes, what: str, report: Callable[[ScanProblem], None]) -> os.stat_result | None:
    """``os.stat`` following links; a failure is reported as ``"{what}: {reason}"`` and gives None."""
    try:
        return os.stat(path)
    except OSError as exc:
        report(ScanProblem(path, f"{what}: {exc.strerror}"))
        return None


_KINDS = ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"))


def not_regular_reason(mode: int) -> str | None:
    """None for a regular file, else why it must not be opened (``"not a regular file (fifo)"``)."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "unknown type")
    return f"not a regular file ({kind})"


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def scan(
    roots: Sequence[str | os.PathLike[str]],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    extensions: frozenset[str] = PHOTO_EXTENSIONS,
    problems: list[ScanProblem] | None = None,
    raw_beside_processed: list[bytes] | None = None,
    within: Sequence[bytes] | None = None,
    outside: list[ScanProblem] | None = None,
) -> Iterator[ScannedFile]:
    """Yield photo files under ``roots`` (files given directly are yielded too).

    ``include``/``exclude`` are globs matched against the path relative to its root and against
    the file name. Directories are visited once by (device, inode), so symlink cycles and
    overlapping roots end; each file path is yielded or reported at most once. Unreadable folders
    and anything that is not a regular file (FIFO, socket, device) are reported through
    ``problems`` and skipped: nothing here opens a file. RAW files left out beside their processed
    sibling (see the module docstring) are appended to ``raw_beside_processed``; paths resolving
    outside ``within`` (when given) are skipped and appended to ``outside``.
    """
    sink: Callable[[ScanProblem], None] = problems.append if problems is not None else (lambda _p: None)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[bytes] = set()

    def report(problem: ScanProblem) -> None:
        if problem.path not in seen_files:
            seen_files.add(problem.path)
            sink(problem)

    def escapes(path: bytes, real: bytes) -> bool:
        """Whether ``real`` (what ``path`` resolves to) is outside ``within``; if so it is reported."""
        if within is None or is_under(real, within):
            return False
        log.warning("skipping %s: it leads to %s, outside the library roots", display_path(path), display_path(real))
        if outside is not None:
            outside.append(ScanProblem(path, f"outside the library roots (leads to {display_path(real)})"))
        return True

    def resolved(folder_real: bytes, entry: os.DirEntry[bytes]) -> bytes:
        """The resolved path of an entry of a folder whose resolved path is ``folder_real``."""
        try:
            link = entry.is_symlink()
        except OSError:
            link = True
        return os.path.realpath(entry.path) if link else os.path.join(folder_real, entry.name)

    def found(path: bytes, st: os.stat_result, real: bytes) -> ScannedFile | None:
        """The file to yield, or None if it was already handled or is not a regular file."""
        if path in seen_files:
            log.debug("skipping %s: given more than once", display_path(path))
            return None
        reason = not_regular_reason(st.st_mode)
        if reason is not None:
            report(ScanProblem(path, reason))
            return None
        seen_files.add(path)
        return ScannedFile(path, st.st_size, st.st_mtime_ns, real, *identity(st))

    for root in roots:
        root_b = os.fsencode(os.path.abspath(os.fspath(root)))
        if root_b in seen_files:
            continue
        root_real = os.path.realpath(root_b)
        if escapes(root_b, root_real):
            continue
        st = _stat(root_b, "cannot read", report)
        if st is None:
            continue
        if not stat.S_ISDIR(st.st_mode):
            if _has_photo_extension(root_b, extensions) and (entry := found(root_b, st, root_real)) is not None:
                yield entry
            continue
        stack = [(root_b, root_real)]
        while stack:
            folder, folder_real = stack.pop()
            st = _stat(folder, "cannot read folder", report)
            if st is None:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                log.debug("skipping already visited folder %s", display_path(folder))
                continue
            seen_dirs.add(key)
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                report(ScanProblem(folder, f"cannot list folder: {exc.strerror}"))
                continue
            subdirs, candidates = [], []
            for entry in entries:
                rel = display_path(os.path.relpath(entry.path, root_b))
                try:
                    is_dir = entry.is_dir(follow_symlinks=True)
                except OSError:
                    is_dir = False
                if is_dir:
                    if not entry.name.startswith(b".") and not (exclude and _matches(rel + "/", exclude)):
                        real = resolved(folder_real, entry)
                        if not escapes(entry.path, real):
                            subdirs.append((entry.path, real))
                    continue
                if not _has_photo_extension(entry.name, extensions) or entry.name.startswith(b"."):
                    continue
                if include and not _matches(rel, include):
                    continue
                if exclude and _matches(rel, exclude):
                    continue
                real = resolved(folder_real, entry)
                if not escapes(entry.path, real):
                    candidates.append((entry, real))
            processed = {_stem_key(e.name) for e, _ in candidates
                         if _extension(e.name) in PROCESSED_EXTENSIONS and _is_file(e)} \
                if any(_extension(e.name) in RAW_EXTENSIONS for e, _ in candidates) else set()
            for entry, real in candidates:
                if processed and _extension(entry.name) in RAW_EXTENSIONS and _stem_key(entry.name) in processed:
                    log.debug("skipping %s: a processed sibling of the same name is indexed instead",
                              display_path(entry.path))
                    if raw_beside_processed is not None:
                        raw_beside_processed.append(entry.path)
                    continue
                if entry.path in seen_files:
                    continue
                fst = _stat(entry.path, "cannot stat", report)
                if fst is not None and (found_file := found(entry.path, fst, real)) is not None:
                    yield found_file
            stack.extend(reversed(subdirs))
