"""Read-only SQL on the catalog without the ORM, so that read commands start fast.

Importing SQLAlchemy and declaring the ORM models costs a cold process about 0.25 s on a
2-core machine, a third of what a one-shot ``photodex search`` took. Reads on the search, ``info``
and index-compare paths are therefore plain SQL with ``:name`` parameters, run by :class:`SqliteReader` (the
standard library's ``sqlite3``, read-only) on the embedded catalog at the newest schema, and by
:class:`EngineReader` (SQLAlchemy ``text()``) everywhere else: PostgreSQL, or a SQLite catalog
that first needs the migrations or can only be opened through the read-only fallbacks of
:class:`indexer.catalog.engine.Catalog`. The same SQL runs on both; writes always use the ORM.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote

from .revisions import head_revision

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
IN_CHUNK = 500  # ids per IN (...) list: well under every backend's bound-parameter limit


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file. ``?``, ``#`` and ``%`` in a folder name would otherwise start
    a query string, a fragment or an escape (the catalog would land in another file): they are
    escaped as SQLAlchemy's own ``URL.render_as_string`` does, and its URL parser undoes it."""
    return SQLITE_PREFIX + quote(str(path), safe=" +/")


def sqlite_path(url: str) -> str | None:
    """The file of a plain ``sqlite:///PATH`` URL; None for any other URL (or options, or memory)."""
    if not url.startswith(SQLITE_PREFIX):
        return None
    path = url[len(SQLITE_PREFIX):]
    return unquote(path) if path and "?" not in path and path != ":memory:" else None


class CatalogReader(Protocol):
    """Read-only queries with ``:name`` parameters; rows are plain tuples."""

    dialect: str  # "sqlite", "postgresql", ...

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


def scalar(reader: CatalogReader, sql: str, params: Mapping[str, Any] | None = None) -> Any:
    """The first column of the first row, or None."""
    got = reader.rows(sql, params)
    return got[0][0] if got else None


def rows_for_ids(reader: CatalogReader, sql: str, ids: Sequence[int],
                 params: Mapping[str, Any] | None = None) -> Iterator[tuple[Any, ...]]:
    """Rows of ``sql`` whose ``{ids}`` placeholder is replaced by each chunk of ``ids``."""
    for start in range(0, len(ids), IN_CHUNK):
        placeholders, names = in_list("id", [int(i) for i in ids[start:start + IN_CHUNK]])
        yield from reader.rows(sql.format(ids=placeholders), {**(params or {}), **names})


def in_list(name: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """``(":name0, :name1, ...", params)`` for a short, fixed ``IN (...)`` list."""
    params = {f"{name}{n}": v for n, v in enumerate(values)}
    return ", ".join(f":{k}" for k in params), params


def sql_datetime(reader: "CatalogReader", value: datetime) -> Any:
    """``value`` bound as the catalog stores a DateTime: SQLAlchemy keeps SQLite DateTimes as
    ``YYYY-MM-DD HH:MM:SS.ffffff`` text (so the text comparison orders them); other drivers take datetimes."""
    if reader.dialect != "sqlite":
        return value
    return (f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:{value.minute:02d}:"
            f"{value.second:02d}.{value.microsecond:06d}")


def as_datetime(value: Any) -> datetime | None:
    """A DateTime column as read: SQLAlchemy stores ISO text in SQLite; other drivers give datetimes."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


class SqliteReader:
    """Read-only ``sqlite3`` connections (one per thread) on a catalog known to be at the newest schema."""

    dialect = "sqlite"

    def __init__(self, path: str, immutable: bool) -> None:
        self.path = path
        self._uri = f"file:{quote(path)}?mode=ro" + ("&immutable=1" if immutable else "")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[sqlite3.Connection] = []

    @classmethod
    def open(cls, path: str) -> "SqliteReader | None":
        """A reader for the catalog at ``path``, or None when it is missing, not at this photodex's
        newest schema, or not readable this way (the ORM catalog then upgrades it or says why)."""
        if not Path(path).is_file():
            return None
        for immutable in (False, True):  # WAL needs a -shm file; immutable where none can be made
            reader = cls(path, immutable)
            try:
                rev = scalar(reader, "SELECT version_num FROM alembic_version")
            except sqlite3.Error as exc:
                reader.close()
                if immutable or "unable to open" not in str(exc).lower():
                    log.debug("catalog %s not readable by sqlite3 (%s): using SQLAlchemy", path, exc)
                    return None
                continue
            if rev != head_revision():
                reader.close()
                return None
            return reader
        return None

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)
            with self._lock:
                self._open.append(conn)
            self._local.conn = conn
        return conn

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self._connection().execute(sql, dict(params or {})).fetchall()

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


class EngineReader:
    """The same queries through a SQLAlchemy engine (PostgreSQL, or SQLite opened by the ORM catalog)."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), dict(params or {}))]

    def close(self) -> None:
        """Nothing of its own: the engine belongs to the catalog."""
