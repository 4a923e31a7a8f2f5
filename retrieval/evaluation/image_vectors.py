"""Image files encoded as ``photodex index`` encodes them, cached per encoder + file so a run resumes.

The decode/preprocess/encode path is the index's own (:func:`indexer.encode.run.make_loader`: the
same decoder with its JPEG draft scaling, EXIF turn and bomb guard, the same DataLoader workers and
batches), so an evaluation figure describes what search over an indexed library will do.

The cache keeps one folder per encoder (its spec id, preprocessing and autocast dtype) and in it one
``.npz`` chunk per encoded batch, each written atomically: a run stopped at any point keeps every
whole batch, and the next run encodes only what is missing. A file is known by its absolute path,
size and modification time, so an edited or replaced image is encoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.core.atomic import atomic_write
from indexer.core.errors import InputError
from indexer.core.progress import Progress
from indexer.encode.encoders import Encoder

log = logging.getLogger(__name__)

__all__ = ["EncodedImages", "VectorCache", "default_cache_dir", "encode_image_files", "encoder_key"]

_COMPACT_OVER = 32  # chunks in a folder before they are merged into one


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/photodex/eval-vectors`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "photodex" / "eval-vectors"


def encoder_key(encoder: Encoder) -> str:
    """What makes two encoders' vectors interchangeable: weights, preprocessing, autocast dtype."""
    spec = encoder.spec
    return json.dumps({"id": spec.id, "preprocess": spec.preprocess, "autocast": str(encoder.autocast_dtype)},
                      sort_keys=True, default=str)


def file_key(path: Path) -> str:
    """Absolute path + size + mtime: a replaced or edited image gets a new key."""
    st = path.stat()
    raw = f"{os.fsdecode(os.path.abspath(path))}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()


class VectorCache:
    """Image vectors of one encoder, as ``<root>/<model-slug>-<hash>/<chunk>.npz`` files."""

    def __init__(self, root: str | Path, encoder: Encoder) -> None:
        key = encoder_key(encoder)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder.spec.model).strip("._")[-48:] or "encoder"
        self.folder = Path(root) / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        self.dim = encoder.spec.embed_dim
        self._vectors: dict[str, np.ndarray] = {}
        self._chunks: list[Path] = []
        self._load()

    def _load(self) -> None:
        if not self.folder.is_dir():
            return
        for chunk in sorted(self.folder.glob("*.npz")):
            try:
                with np.load(chunk, allow_pickle=False) as z:
                    keys, vecs = z["keys"], z["vectors"]
                if vecs.shape != (len(keys), self.dim) or vecs.dtype != np.float32:
                    raise ValueError(f"unexpected array {vecs.dtype} {vecs.shape}")
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring unreadable cache chunk %s: %s", chunk, exc)
                continue
            self._vectors.update(zip(keys.tolist(), vecs))
            self._chunks.append(chunk)

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, key: str) -> np.ndarray | None:
        return self._vectors.get(key)

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store one batch as its own chunk (atomic: the batch is there whole or not at all)."""
        if not len(keys):
            return
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        path = self.folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        self._write(path, list(keys), vecs)
        self._vectors.update(zip(keys, vecs))
        self._chunks.append(path)

    def _write(self, path: Path, keys: list[str], vecs: np.ndarray) -> None:
        arr = np.asarray(keys, dtype="<U64")
        atomic_write(path, lambda fh: np.savez(fh, keys=arr, vectors=vecs))

    def compact(self) -> None:
        """Merge many chunks into one (the merged file is written before any old one is removed)."""
        if len(self._chunks) <= _COMPACT_OVER:
            return
        keys = list(self._vectors)
        path = self.folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        self._write(path, keys, np.stack([self._vectors[k] for k in keys]))
        for old in self._chunks:
            old.unlink(missing_ok=True)
        self._chunks = [path]


@dataclass
class EncodedImages:
    """Vectors in the order of the files asked for, and how they were got."""

    vectors: np.ndarray
    from_cache: int
    encoded: int
    seconds: float  # encoding time of the ``encoded`` ones (decode + preprocess + model)
    errors: dict[int, str] = field(default_factory=dict)  # with ``skip_errors``: row -> why (its row is zeros)

    @property
    def photos_per_second(self) -> float | None:
        return self.encoded / self.seconds if self.encoded and self.seconds > 0 else None


def encode_image_files(encoder: Encoder, paths: Sequence[Path], *, cache_dir: str | Path | None = None,
                       batch_size: int = 64, workers: int = 0, max_image_pixels: int = 178_956_970,
                       progress: Progress | None = None, entries: Sequence[str] | None = None,
                       skip_errors: bool = False) -> EncodedImages:
    """Unit vectors of ``paths``; cached ones are read, the others encoded (and cached) batch by batch.

    An image that cannot be decoded is refused after the others are encoded and cached (one line
    naming it and how many others failed), so no figure is computed without it and no work is lost;
    with ``skip_errors`` its row stays zero and the reason is returned instead."""
    from indexer.encode.run import make_loader  # torch: only when something is encoded

    cache = VectorCache(cache_dir, encoder) if cache_dir is not None else None
    keys = [file_key(p) for p in paths]
    out = np.zeros((len(paths), encoder.spec.embed_dim), np.float32)
    todo: list[int] = []
    for i, k in enumerate(keys):
        v = cache.get(k) if cache is not None else None
        if v is None:
            todo.append(i)
        else:
            out[i] = v
    done = len(paths) - len(todo)
    if progress:
        progress("encode", done, len(paths))
    failures: list[tuple[int, str]] = []
    seconds = 0.0
    if todo:
        items = [(i, os.fsencode(paths[i])) for i in todo]
        start = time.perf_counter()
        for batch in make_loader(items, encoder, batch_size, workers, max_image_pixels):
            if batch["pixels"] is not None:
                vecs = encoder.encode_images(batch["pixels"])
                out[batch["ids"]] = vecs
                if cache is not None:
                    cache.put([keys[i] for i in batch["ids"]], vecs)
            failures += batch["errors"]
            done += len(batch["ids"]) + len(batch["errors"])
            if progress:
                progress("encode", done, len(paths))
        seconds = time.perf_counter() - start
        if cache is not None:
            cache.compact()
    if failures and skip_errors:
        return EncodedImages(out, len(paths) - len(todo), len(todo) - len(failures), seconds, dict(failures))
    if failures:
        failures.sort()
        i, reason = failures[0]
        where = f"{entries[i]} " if entries is not None else ""
        more = len(failures) - 1
        raise InputError(f"{where}{os.fsdecode(paths[i])}: cannot decode ({reason})"
                         + (f" (and {more} other image{'s' if more != 1 else ''} like it)" if more else "")
                         + "; the others are encoded and cached")
    return EncodedImages(out, len(paths) - len(todo), len(todo), seconds)
