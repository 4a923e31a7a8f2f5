"""Which file a catalogued path was when it was indexed, and opening it only while it still is that file.

An index run records, for every path, the path it resolved to (symlinks followed) and the file's
device and inode. A reader that serves a catalogued file (the API's ``/original`` and ``/thumbnail``,
``/ask``) opens it with :func:`open_indexed`: size and mtime alone are easy to forge (``touch -r`` on a
file of the same length, then a symlink or a rename in place), so the resolved path must be the one
recorded (and inside the allowed roots, when some are given), and the open descriptor must be the
recorded device and inode. A file whose inode changed but not its bytes (restored from a backup,
copied with ``cp -p``) is vouched for by its content hash instead; so is a row indexed before these
were recorded.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from typing import BinaryIO

_INT64 = 1 << 63


def is_under(path: bytes, roots: Sequence[bytes]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one (plain prefix test on normalised paths)."""
    return any(path == r or path.startswith(r.rstrip(b"/") + b"/") for r in roots)


def real_roots(roots: Sequence[str | os.PathLike[str] | bytes]) -> list[bytes]:
    """The roots resolved (symlinks followed, absolute), as the scan and the readers compare paths."""
    return [os.path.realpath(os.fsencode(os.path.abspath(os.fsdecode(r)))) for r in roots]


def identity(st: os.stat_result) -> tuple[int | None, int | None]:
    """(device, inode) as signed 64-bit integers (what a BIGINT column holds), or Nones where the
    platform gives no inode."""
    if not st.st_ino:
        return None, None
    return tuple((v - 2 * _INT64) if v >= _INT64 else v for v in (st.st_dev, st.st_ino))  # type: ignore[return-value]


def _sha256(fh: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(1 << 20):
        digest.update(chunk)
    fh.seek(0)
    return digest.hexdigest()


def open_indexed(path: bytes, *, size: int, mtime_ns: int, real_path: bytes | None, device: int | None,
                 inode: int | None, sha256: str, roots: Sequence[bytes] | None = None) -> BinaryIO | None:
    """The catalogued file, open for reading, if it still is the file that was indexed; else None.

    ``roots``: resolved roots the file must resolve inside (the API's library roots), or None for no
    such limit. Nothing outside them is opened. The descriptor is checked to be the file at the resolved
    path, so a symlink swapped in between resolving and opening is refused too.
    """
    real = os.path.realpath(path)
    if roots is not None and not is_under(real, roots):
        return None
    if real_path is not None and real != bytes(real_path):
        return None
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    fh = os.fdopen(fd, "rb")
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime_ns == mtime_ns):
            fh.close()
            return None
        if device is None or inode is None or identity(st) != (device, inode):
            if _sha256(fh) != sha256:
                fh.close()
                return None
        return fh
    except OSError:
        fh.close()
        return None
