"""Index files on disk: the FAISS file plus a JSON sidecar with its spec and per-block checksums.

Every save is atomic (temp file, fsync, ``os.replace``), index first and sidecar last, so a
reader sees either the old pair or the new one. :func:`verify_index_file` checks the size and a
CRC-32 per 16 MiB block (zlib's, about 1 GB/s here), so a truncated, missing-sidecar or
same-size-corrupted file is detected before faiss reads it and the caller rebuilds it from
the stored vectors instead of returning wrong scores.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

FORMAT = 2
BLOCK = 16 << 20


class IndexFileError(Exception):
    """An index file that is missing, truncated, corrupted or does not match its sidecar."""


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    return Path(str(path) + ".json")


def block_checksums(path: str | os.PathLike[str], block: int = BLOCK) -> list[int]:
    """CRC-32 of each ``block``-byte block of a file."""
    sums = []
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            sums.append(zlib.crc32(chunk))
    return sums


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        meta = json.loads(sidecar_path(path).read_text())
    except FileNotFoundError:
        raise IndexFileError(f"{path}: sidecar {sidecar_path(path).name} is missing") from None
    except (OSError, ValueError) as exc:
        raise IndexFileError(f"{path}: unreadable sidecar: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexFileError(f"{path}: sidecar of another format ({meta.get('format') if isinstance(meta, dict) else '?'})")
    return meta


def verify_index_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar of an index file whose size and block checksums match it; else :class:`IndexFileError`."""
    meta = read_sidecar(path)
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise IndexFileError(f"{path}: {exc.strerror}") from None
    if size != meta.get("index_bytes"):
        raise IndexFileError(f"{path}: {size} bytes, sidecar says {meta.get('index_bytes')} (truncated?)")
    if block_checksums(path, int(meta.get("block", BLOCK))) != meta.get("crc32"):
        raise IndexFileError(f"{path}: checksum mismatch (corrupted)")
    return meta
