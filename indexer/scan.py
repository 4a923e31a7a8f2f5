"""Find photo files under folders: recursive, glob filters, safe against symlink cycles."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterator, Sequence
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
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        root_b = os.fsencode(os.path.abspath(os.fspath(root)))
        try:
            st = os.stat(root_b)
        except OSError as exc:
            if problems is not None:
                problems.append(ScanProblem(root_b, f"cannot read: {exc.strerror}"))
            continue
        if not os.path.isdir(root_b):
            if os.path.splitext(root_b)[1].decode(errors="replace").lower() in extensions:
                yield ScannedFile(root_b, st.st_size, st.st_mtime_ns)
            continue
        stack = [root_b]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
            except OSError as exc:
                if problems is not None:
                    problems.append(ScanProblem(folder, f"cannot read folder: {exc.strerror}"))
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                log.debug("skipping already visited folder %s", display_path(folder))
                continue
            seen_dirs.add(key)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                if problems is not None:
                    problems.append(ScanProblem(folder, f"cannot list folder: {exc.strerror}"))
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
                ext = os.path.splitext(entry.name)[1].decode(errors="replace").lower()
                if ext not in extensions or entry.name.startswith(b"."):
                    continue
                if include and not _matches(rel, include):
                    continue
                if exclude and _matches(rel, exclude):
                    continue
                try:
                    fst = entry.stat(follow_symlinks=True)
                except OSError as exc:
                    if problems is not None:
                        problems.append(ScanProblem(entry.path, f"cannot stat: {exc.strerror}"))
                    continue
                yield ScannedFile(entry.path, fst.st_size, fst.st_mtime_ns)
            stack.extend(reversed(subdirs))
