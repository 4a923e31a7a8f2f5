"""Atomic file writes: temp file in the same folder, fsync, ``os.replace``, fsync the folder."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write_via_path(path: str | os.PathLike[str], write_to: Callable[[str], None]) -> None:
    """Make ``path`` by ``write_to(temp_name)``; a crash leaves either the old or the new file.

    For writers that take a file name (``faiss.write_index``, ``np.save`` to a name, ...).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        _write_reporting_full_disk(write_to, tmp, target)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _write_reporting_full_disk(write_to: Callable[[str], None], name: str, target: Path) -> None:
    """``write_to(name)``; a full disk that a writer reports only in its message (faiss's ``RuntimeError``
    quotes ``strerror``) becomes the ``OSError`` it is, naming ``target``, so it is reported as a full disk."""
    try:
        write_to(name)
    except OSError:
        raise
    except Exception as exc:
        for code in (errno.ENOSPC, errno.EDQUOT):
            if os.strerror(code) in str(exc):
                raise OSError(code, os.strerror(code), str(target)) from exc
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Make ``path`` by ``write(binary_file_handle)``, atomically."""

    def _to(name: str) -> None:
        with open(name, "wb") as fh:
            write(fh)

    atomic_write_via_path(path, _to)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    payload = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
    atomic_write(path, lambda fh: fh.write(payload))
