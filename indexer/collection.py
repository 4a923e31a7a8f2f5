"""The collection on disk: ``manifest.json`` (format + encoder spec), the catalog, stored vectors."""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.atomic import atomic_write_json
from .catalog.read import CatalogReader, EngineReader, SqliteReader, rows_for_ids, scalar, sqlite_path, sqlite_url
from .core.errors import CollectionError, EncoderMismatchError
from .catalog.status import ERROR, INDEXED, PENDING
from .encode.precision_record import precision_summary
from .core.spec import EncoderSpec
from .core.vectors import decode_vectors
from .writer_lock import WriterLock

if TYPE_CHECKING:
    from .catalog.engine import Catalog

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
    """An opened collection. Use :meth:`open` (read) or :meth:`open_for_encoder` (index).

    Reads go through :attr:`reader` (plain SQL; ``sqlite3`` for the embedded catalog, so a read
    command never imports SQLAlchemy); :attr:`catalog`, the ORM catalog that writes and migrates,
    is opened on first use."""

    def __init__(self, path: Path, manifest: dict[str, Any], url: str, catalog: "Catalog | None" = None) -> None:
        self.path = path
        self.manifest = manifest
        self.url = url
        self._catalog = catalog
        self._reader: CatalogReader | None = None
        self._open_lock = threading.RLock()

    @property
    def catalog(self) -> "Catalog":
        """The ORM catalog (engine, sessions, migrations), opened on first use."""
        if self._catalog is None:
            with self._open_lock:
                if self._catalog is None:
                    from .catalog.engine import Catalog

                    self._catalog = Catalog(self.url)
        return self._catalog

    @property
    def reader(self) -> CatalogReader:
        """Read-only SQL on the catalog: stdlib ``sqlite3`` on an embedded catalog at the newest schema,
        else the ORM catalog's engine (which first upgrades the schema, or says why it cannot)."""
        if self._reader is None:
            path = sqlite_path(self.url)
            fast = SqliteReader.open(path) if path is not None else None
            if fast is None and path is not None and self._catalog is None and not self.catalog.read_only:
                fast = SqliteReader.open(path)  # opening the ORM catalog brought it to the newest schema
            with self._open_lock:
                if self._reader is None:
                    self._reader = fast or EngineReader(self.catalog.engine)
                elif fast is not None:
                    fast.close()
        return self._reader

    # ---- opening -------------------------------------------------------------------------
    @staticmethod
    def _database_url(path: Path, database_url: str | None) -> str:
        return database_url or sqlite_url(path / CATALOG_FILE)

    @classmethod
    def open(cls, path: str | os.PathLike[str], database_url: str | None = None) -> "Collection":
        """Open an existing collection; a clear error if there is none."""
        root = Path(path).expanduser()
        manifest = read_manifest(root)
        coll = cls(root, manifest, cls._database_url(root, database_url))
        try:
            coll.reader  # noqa: B018 - checks (or upgrades) the schema now, so a bad catalog fails here
        except BaseException:
            coll.close()
            raise
        return coll

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
        from .catalog.engine import Catalog

        url = cls._database_url(root, database_url)
        catalog = Catalog(url)
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
        return cls(root, manifest, url, catalog)

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

    def generation(self) -> int:
        """The catalog's vector generation (bumped by every commit that adds or removes vectors)."""
        return int(scalar(self.reader, """SELECT value FROM meta WHERE "key" = 'generation'""") or 0)

    def vector_ids(self) -> np.ndarray:
        """Sorted ids of every photo with a stored vector (no vector bytes are read).

        As one comma-joined string built by the database: a row per id would build 100k Python
        tuples holding the GIL, which a server's index loader does beside the searches it serves."""
        read = self.reader
        agg = {"sqlite": "group_concat(photo_id, ',')", "postgresql": "string_agg(photo_id::text, ',')"}.get(
            read.dialect)
        if agg is None:
            rows = read.rows("SELECT photo_id FROM embeddings ORDER BY photo_id")
            return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        joined = scalar(read, f"SELECT {agg} FROM (SELECT photo_id FROM embeddings ORDER BY photo_id) AS ids")
        if not joined:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.fromstring(joined, dtype=np.int64, sep=","))  # sorted whatever order the database used

    def load_vectors(self, photo_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All (or the given) stored vectors as ``(ids int64, vectors float32 unit-norm)``, by id."""
        if photo_ids is None:
            rows = self.reader.rows("SELECT photo_id, vector FROM embeddings ORDER BY photo_id")
        else:
            wanted = np.unique(np.asarray(photo_ids, dtype=np.int64)).tolist()
            rows = list(rows_for_ids(self.reader, "SELECT photo_id, vector FROM embeddings WHERE photo_id IN ({ids})",
                                     wanted))
            rows.sort()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, decode_vectors([bytes(r[1]) for r in rows], self.dim)

    def vectors_in_order(self, photo_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors for ``photo_ids`` in the order given; ids without a vector are left out."""
        got, vecs = self.load_vectors(np.asarray(photo_ids))
        pos = {int(i): n for n, i in enumerate(got)}
        keep = [int(i) for i in photo_ids if int(i) in pos]
        return np.asarray(keep, dtype=np.int64), vecs[[pos[i] for i in keep]]

    # ---- facts ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        read = self.reader
        by_status = dict(read.rows("SELECT status, COUNT(*) FROM photos GROUP BY status"))
        files = scalar(read, "SELECT COUNT(*) FROM photo_files") or 0
        file_errors = scalar(read, "SELECT COUNT(*) FROM photo_files WHERE error IS NOT NULL") or 0
        vectors = scalar(read, "SELECT COUNT(*) FROM embeddings") or 0
        disk = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return {
            "collection": str(self.path),
            "encoder": self.spec.id,
            "photos": sum(by_status.values()),
            "indexed": by_status.get(INDEXED, 0),
            "pending": by_status.get(PENDING, 0),
            "errors": by_status.get(ERROR, 0) + file_errors,
            "files": files,
            "vectors": vectors,
            "disk_bytes": disk,
            "created_at": self.manifest.get("created_at"),
            "updated_at": self.manifest.get("updated_at"),
            "precision": precision_summary(self.manifest),
        }

    def errors(self) -> list[dict[str, Any]]:
        """Every path that could not be indexed, with its reason."""
        rows = self.reader.rows("SELECT path, error FROM photo_files WHERE error IS NOT NULL")
        rows += self.reader.rows("SELECT f.path, p.error FROM photo_files f JOIN photos p ON f.photo_id = p.id "
                                 "WHERE p.status = :status", {"status": ERROR})
        return sorted(({"path": path, "error": err} for path, err in rows), key=lambda r: r["path"])

    # ---- lifecycle ---------------------------------------------------------------------------
    def writer_lock(self) -> WriterLock:
        """The collection's writer lock (not yet taken): ``with coll.writer_lock().acquire(wait=...)``."""
        # an embedded catalog needs no engine (the lock is a file); WriterLock uses only a PostgreSQL one
        return WriterLock(self.path, None if sqlite_path(self.url) is not None else self.catalog.engine)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._catalog is not None:
            self._catalog.dispose()

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
