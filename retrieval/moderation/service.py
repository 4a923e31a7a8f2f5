"""Deciding single images: files, uploaded bytes and catalogued photo ids (their stored vectors).

These are the functions the CLI and the HTTP API call; each returns :class:`Decision` objects
with ``to_dict()``. Nothing here writes to the catalog: library decisions are stored by
:mod:`retrieval.moderation.rescan`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from indexer.collection import Collection
from indexer.encode.decode import DecodeError, decode_photo
from indexer.core.errors import EncoderMismatchError, InputError

from .decide import Decision, explain_row
from .store import PolicyRecord


class ImageEncoder(Protocol):
    """What deciding an image needs: the spec, the input size and ``encode_images``."""

    spec: Any
    image_size: int

    def encode_images(self, images: Sequence[Any]) -> np.ndarray: ...


def check_encoder(record: PolicyRecord, encoder: ImageEncoder) -> None:
    """Refuse an encoder other than the one the policy version was stored for."""
    if encoder.spec.id != record.encoder:
        raise EncoderMismatchError(f"policy {record.name} version {record.version} was stored for encoder "
                                   f"{record.encoder!r}, not {encoder.spec.id!r}")


def decide_vectors(record: PolicyRecord, vectors: np.ndarray, sources: Sequence[str],
                   photo_ids: Sequence[int | None] | None = None) -> list[Decision]:
    """Decisions for unit vectors (one per source)."""
    compiled = record.compiled()
    arrays = compiled.decide(vectors)
    ids = list(photo_ids) if photo_ids is not None else [None] * len(sources)
    return [explain_row(compiled, arrays, i, src, record.version, ids[i]) for i, src in enumerate(sources)]


SHOWN_IDS = 10  # a request may name 100k ids: its error names their count and only the first few


def unknown_ids_error(missing: Sequence[int]) -> InputError:
    """The error for photo ids without a stored vector, bounded in size: the count and the first :data:`SHOWN_IDS`."""
    shown = ", ".join(map(str, missing[:SHOWN_IDS])) + (", ..." if len(missing) > SHOWN_IDS else "")
    what = f"{len(missing)} photo ids" if len(missing) > 1 else "photo id"
    return InputError(f"{what} not in the collection (or without a vector): {shown}")


def moderate_ids(coll: Collection, record: PolicyRecord, photo_ids: Sequence[int]) -> list[Decision]:
    """Decisions for catalogued photos from their stored vectors (no model needed)."""
    if record.encoder != coll.spec.id:
        raise EncoderMismatchError(f"policy {record.name} version {record.version} was stored for encoder "
                                   f"{record.encoder!r}; the collection uses {coll.spec.id!r}")
    wanted = np.asarray([int(i) for i in photo_ids], np.int64)
    got, vecs = coll.vectors_in_order(wanted)
    missing = sorted(set(wanted.tolist()) - set(got.tolist()))
    if missing:
        raise unknown_ids_error(missing)
    return decide_vectors(record, vecs, [f"id:{i}" for i in got.tolist()], got.tolist())


def moderate_files(record: PolicyRecord, encoder: ImageEncoder, paths: Sequence[str],
                   batch: int = 32) -> list[Decision]:
    """Decisions for image files; a file that cannot be decoded gets ``action="error"`` and its reason."""
    check_encoder(record, encoder)
    out: list[Decision] = []
    for start in range(0, len(paths), batch):
        part = paths[start:start + batch]
        imgs, ok, errors = [], [], {}
        for i, path in enumerate(part):
            try:
                imgs.append(decode_photo(str(path), encoder.image_size)[0])
                ok.append(i)
            except DecodeError as exc:
                errors[i] = str(exc)
        decided = dict(zip(ok, decide_vectors(record, encoder.encode_images(imgs), [str(part[i]) for i in ok])
                           if imgs else []))
        for i, path in enumerate(part):
            out.append(decided.get(i) or Decision(source=str(path), action="error", concepts=[], policy=record.name,
                                                  version=record.version, error=errors.get(i)))
    return out


def moderate_bytes(record: PolicyRecord, encoder: ImageEncoder, data: bytes, source: str = "upload") -> Decision:
    """The decision for an uploaded image; :class:`InputError` if it cannot be decoded."""
    check_encoder(record, encoder)
    try:
        img, _ = decode_photo(io.BytesIO(data), encoder.image_size)  # type: ignore[arg-type]
    except DecodeError as exc:
        raise InputError(f"cannot read the image {source}: {exc}") from exc
    return decide_vectors(record, encoder.encode_images([img]), [source])[0]
