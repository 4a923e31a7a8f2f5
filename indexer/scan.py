"""Find photo files under folders: recursive, glob filters, safe against symlink cycles."""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

PHOTO_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
)


@dataclass(frozen=True)
class ScannedFile:
    path: bytes  # exact file-system name (may not be valid UTF-8)
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanProblem:
    path: bytes
    reason: str


def display_path(path: bytes) -> str:
    """A printable, storable text form of a file-system path (undecodable bytes as ``\\xNN``)."""
    return path.decode("utf-8", errors="backslashreplace")


def _has_photo_extension(name: bytes, extensions: frozenset[str]) -> bool:
    return os.path.splitext(name)[1].decode(errors="replace").lower() in extensions


def _stat(path: bytes, what: str, report: Callable[[ScanProblem], None]) -> os.stat_result | None:
    """``os.stat`` following links; a failure is reported as ``"{what}: {reason}"`` and gives None."""
    try:
        return os.stat(path)
    except OSError as exc:
        report(ScanProblem(path, f"{what}: {exc.strerror}"))
        return None


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def scan(
    roots: Sequence[str | os.PathLike[str]],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    extensions: frozenset[str] = PHOTO_EXTENSIONS,
    problems: list[ScanProblem] | None = None,
) -> Iterator[ScannedFile]:
    """Yield photo files under ``roots`` (files given directly are yielded too).

    ``include``/``exclude`` are globs matched against the path relative to its root and against
    the file name. Directories are visited once by (device, inode), so symlink cycles end.
    Unreadable folders are reported through ``problems`` and skipped.
    """
    report: Callable[[ScanProblem], None] = problems.append if problems is not None else (lambda _p: None)
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        root_b = os.fsencode(os.path.abspath(os.fspath(root)))
        st = _stat(root_b, "cannot read", report)
        if st is None:
            continue
        if not stat.S_ISDIR(st.st_mode):
            if _has_photo_extension(root_b, extensions):
                yield ScannedFile(root_b, st.st_size, st.st_mtime_ns)
            continue
        stack = [root_b]
        while stack:
            folder = stack.pop()
            st = _stat(folder, "cannot read folder", report)
            if st is None:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                log.debug("skipping already visited folder %s", display_path(folder))
                continue
            seen_dirs.add(key)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                report(ScanProblem(folder, f"cannot list folder: {exc.strerror}"))
                continue
            subdirs = []
            for entry in entries:
                rel = display_path(os.path.relpath(entry.path, root_b))
                try:
                    is_dir = entry.is_dir(follow_symlinks=True)
                except OSError:
                    is_dir = False
                if is_dir:
                    if not entry.name.startswith(b".") and not (exclude and _matches(rel + "/", exclude)):
                        subdirs.append(entry.path)
                    continue
                if not _has_photo_extension(entry.name, extensions) or entry.name.startswith(b"."):
                    continue
                if include and not _matches(rel, include):
                    continue
                if exclude and _matches(rel, exclude):
                    continue
                fst = _stat(entry.path, "cannot stat", report)
                if fst is None:
                    continue
                yield ScannedFile(entry.path, fst.st_size, fst.st_mtime_ns)
            stack.extend(reversed(subdirs))
