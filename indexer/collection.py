"""The collection on disk: ``manifest.json`` (format + encoder spec), the catalog, stored vectors."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from .atomic import atomic_write_json
from .catalog import Catalog, sqlite_url
from .catalog_models import ERROR, INDEXED, Embedding, Photo, PhotoFile
from .errors import CollectionError, EncoderMismatchError
from .spec import EncoderSpec
from .vectors import decode_vectors
from .writer_lock import WriterLock

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CATALOG_FILE = "catalog.db"
SPEC_META_KEY = "encoder_spec_id"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(root: Path) -> dict[str, Any]:
    """The collection's manifest, checked for format version and shape; a clear error otherwise."""
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise CollectionError(f"no collection at {root} (no {MANIFEST}); create one with `photodex index PATH`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise CollectionError(f"cannot read {manifest_path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise CollectionError(f"{manifest_path} is not a photodex manifest (a JSON object is expected)")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CollectionError(f"{manifest_path} has format version {version}; this photodex reads {FORMAT_VERSION}")
    encoder = manifest.get("encoder")
    try:
        EncoderSpec.from_dict(encoder)  # type: ignore[arg-type]
    except (TypeError, KeyError, ValueError, AttributeError):
        raise CollectionError(f"{manifest_path} has no valid 'encoder' entry (model, embed_dim); "
                              "restore it or index into a new collection") from None
    return manifest


class Collection:
    """An opened collection. Use :meth:`open` (read) or :meth:`open_for_encoder` (index)."""

    def __init__(self, path: Path, manifest: dict[str, Any], catalog: Catalog) -> None:
        self.path = path
        self.manifest = manifest
        self.catalog = catalog

    # ---- opening -------------------------------------------------------------------------
    @staticmethod
    def _database_url(path: Path, database_url: str | None) -> str:
        return database_url or sqlite_url(path / CATALOG_FILE)

    @classmethod
    def open(cls, path: str | os.PathLike[str], database_url: str | None = None) -> "Collection":
        """Open an existing collection; a clear error if there is none."""
        root = Path(path).expanduser()
        manifest = read_manifest(root)
        return cls(root, manifest, Catalog(cls._database_url(root, database_url)))

    @classmethod
    def open_for_encoder(
        cls, path: str | os.PathLike[str], spec: EncoderSpec, database_url: str | None = None
    ) -> "Collection":
        """Open or create a collection for ``spec``; refuse one that was built with another encoder."""
        root = Path(path).expanduser()
        if (root / MANIFEST).exists():
            coll = cls.open(root, database_url)
            try:
                coll.check_encoder(spec)
                if coll.catalog.get_meta(SPEC_META_KEY) is None:
                    coll.catalog.set_meta(SPEC_META_KEY, spec.id)
            except BaseException:
                coll.close()
                raise
            return coll
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CollectionError(f"collection folder {root} is not writable: {exc.strerror or exc}") from exc
        manifest = {
            "format_version": FORMAT_VERSION,
            "encoder": spec.to_dict(),
            "created_at": _now(),
            "updated_at": _now(),
            "database": "sqlite (catalog.db)" if database_url is None else "external (PHOTODEX_DATABASE_URL)",
        }
        catalog = Catalog(cls._database_url(root, database_url))
        recorded = catalog.get_meta(SPEC_META_KEY)
        if recorded is not None and recorded != spec.id:
            catalog.dispose()
            raise EncoderMismatchError(
                f"the catalog of {root} holds vectors of encoder {recorded!r} but its manifest is missing and "
                f"{spec.id!r} was requested; restore {MANIFEST}, index with that encoder, or use a new --collection")
        if recorded is None:
            catalog.set_meta(SPEC_META_KEY, spec.id)
        atomic_write_json(root / MANIFEST, manifest)  # last: a collection exists once its manifest does
        log.info("created collection %s for encoder %s", root, spec.id)
        return cls(root, manifest, catalog)

    # ---- encoder contract --------------------------------------------------------------------
    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec.from_dict(self.manifest["encoder"])

    def check_encoder(self, spec: EncoderSpec) -> None:
        """Raise :class:`EncoderMismatchError` unless ``spec`` makes vectors comparable to ours."""
        mine = self.spec
        if mine.id != spec.id:
            raise EncoderMismatchError(
                f"collection {self.path} was built with encoder {mine.id!r} but {spec.id!r} was requested; "
                "vectors of different encoders cannot be mixed. Use the collection's model (omit --model), "
                "or index into a new --collection to re-embed with the other model"
            )

    def touch(self, **extra: Any) -> None:
        self.manifest["updated_at"] = _now()
        self.manifest.update(extra)
        atomic_write_json(self.path / MANIFEST, self.manifest)

    # ---- vectors -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.manifest["encoder"]["embed_dim"])

    def vector_ids(self) -> np.ndarray:
        """Sorted ids of every photo with a stored vector (no vector bytes are read)."""
        with self.catalog.session() as s:
            ids = s.scalars(select(Embedding.photo_id).order_by(Embedding.photo_id)).all()
        return np.asarray(ids, dtype=np.int64)

    def load_vectors(self, photo_ids: np.ndarray | None = None, chunk: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
        """All (or the given) stored vectors as ``(ids int64, vectors float32 unit-norm)``."""
        ids: list[int] = []
        blobs: list[bytes] = []
        with self.catalog.session() as s:
            stmt = select(Embedding.photo_id, Embedding.vector).order_by(Embedding.photo_id)
            if photo_ids is not None:
                wanted = [int(x) for x in photo_ids]
                for start in range(0, len(wanted), chunk):
                    part = wanted[start:start + chunk]
                    for pid, blob in s.execute(stmt.where(Embedding.photo_id.in_(part))):
                        ids.append(pid)
                        blobs.append(blob)
            else:
                for pid, blob in s.execute(stmt.execution_options(yield_per=chunk)):
                    ids.append(pid)
                    blobs.append(blob)
        return np.asarray(ids, dtype=np.int64), decode_vectors(blobs, self.dim)

    def vectors_in_order(self, photo_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors for ``photo_ids`` in the order given; ids without a vector are left out."""
        got, vecs = self.load_vectors(np.asarray(photo_ids))
        pos = {int(i): n for n, i in enumerate(got)}
        keep = [int(i) for i in photo_ids if int(i) in pos]
        return np.asarray(keep, dtype=np.int64), vecs[[pos[i] for i in keep]]

    # ---- facts ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self.catalog.session() as s:
            by_status = dict(s.execute(select(Photo.status, func.count()).group_by(Photo.status)).all())
            files = s.scalar(select(func.count()).select_from(PhotoFile)) or 0
            file_errors = s.scalar(select(func.count()).select_from(PhotoFile).where(PhotoFile.error.is_not(None))) or 0
            vectors = s.scalar(select(func.count()).select_from(Embedding)) or 0
        disk = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return {
            "collection": str(self.path),
            "encoder": self.spec.id,
            "photos": sum(by_status.values()),
            "indexed": by_status.get(INDEXED, 0),
            "pending": by_status.get("pending", 0),
            "errors": by_status.get(ERROR, 0) + file_errors,
            "files": files,
            "vectors": vectors,
            "disk_bytes": disk,
            "created_at": self.manifest.get("created_at"),
            "updated_at": self.manifest.get("updated_at"),
        }

    def errors(self) -> list[dict[str, Any]]:
        """Every path that could not be indexed, with its reason."""
        out: list[dict[str, Any]] = []
        with self.catalog.session() as s:
            for path, err in s.execute(select(PhotoFile.path, PhotoFile.error).where(PhotoFile.error.is_not(None))):
                out.append({"path": path, "error": err})
            rows = s.execute(
                select(PhotoFile.path, Photo.error).join(Photo, PhotoFile.photo_id == Photo.id).where(Photo.status == ERROR)
            )
            for path, err in rows:
                out.append({"path": path, "error": err})
        return sorted(out, key=lambda r: r["path"])

    # ---- lifecycle ---------------------------------------------------------------------------
    def writer_lock(self) -> WriterLock:
        """The collection's writer lock (not yet taken): ``with coll.writer_lock().acquire(wait=...)``."""
        engine = self.catalog.engine if self.catalog.engine.dialect.name == "postgresql" else None
        return WriterLock(self.path, engine)

    def close(self) -> None:
        self.catalog.dispose()

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
