"""On-disk cache of recent query text vectors, so a repeated ``photodex search TEXT`` skips the text encoder.

One SQLite file (WAL, ``BEGIN IMMEDIATE`` writes, a busy timeout) shared by every process that searches the
collection. Rows are keyed by ``(encoder spec id, text)`` and hold the float32 vector bytes; the file is bounded
by ``max_entries`` and ``max_bytes`` (vector + text bytes) with least-recently-used eviction after each write.
The cache is best effort: any SQLite or filesystem error is logged and reads as a miss, never as a failed search,
and an unreadable file is replaced. Imports only the standard library and numpy.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_FILE = "query_cache.sqlite"
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_BYTES = 16 << 20
_SCHEMA = """
CREATE TABLE IF NOT EXISTS query_vectors (
    spec_id   TEXT    NOT NULL,
    text      TEXT    NOT NULL,
    dim       INTEGER NOT NULL,
    vec       BLOB    NOT NULL,
    nbytes    INTEGER NOT NULL,
    last_used REAL    NOT NULL,
    PRIMARY KEY (spec_id, text)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS query_vectors_lru ON query_vectors (last_used);
"""
_CHUNK = 500  # bound on SQL variables per statement


def query_cache_path(collection_path: str | os.PathLike[str]) -> Path:
    """Where a collection keeps its query cache."""
    return Path(collection_path).expanduser() / CACHE_FILE


class QueryCache:
    """Recent query vectors of one encoder spec; thread-safe, and safe across processes sharing the file."""

    def __init__(self, path: str | os.PathLike[str], spec_id: str, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = 2.0) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self.path = Path(path)
        self.spec_id = spec_id
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self.timeout = float(timeout)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # ---- connection ----------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            conn = self._open()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise  # locked / unwritable: not a broken file
            log.warning("query cache %s is unreadable (%s); starting a new one", self.path, exc)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            conn = self._open()
        self._conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> QueryCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reads and writes ----------------------------------------------------------------------------------
    def get_many(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """Cached vectors for those of ``texts`` that are cached (float32, as stored); marks them recently used."""
        wanted = list(dict.fromkeys(texts))
        found: dict[str, np.ndarray] = {}
        if not wanted:
            return found
        try:
            with self._lock:
                conn = self._connect()
                for start in range(0, len(wanted), _CHUNK):
                    part = wanted[start:start + _CHUNK]
                    rows = conn.execute(
                        f"SELECT text, dim, vec FROM query_vectors WHERE spec_id = ? "
                        f"AND text IN ({','.join('?' * len(part))})", [self.spec_id, *part]).fetchall()
                    for text, dim, blob in rows:
                        if dim > 0 and len(blob) == 4 * dim:
                            found[text] = np.frombuffer(blob, dtype=np.float32).copy()
                if found:
                    self._touch(conn, list(found))
        except (sqlite3.Error, OSError) as exc:
            log.debug("query cache %s not read: %s", self.path, exc)
        return found

    def get(self, text: str) -> np.ndarray | None:
        return self.get_many([text]).get(text)

    def _touch(self, conn: sqlite3.Connection, texts: list[str]) -> None:
        """Best effort: a busy writer elsewhere must not slow a search down."""
        now = time.time()
        try:
            conn.execute("PRAGMA busy_timeout = 50")
            for start in range(0, len(texts), _CHUNK):
                part = texts[start:start + _CHUNK]
                conn.execute(f"UPDATE query_vectors SET last_used = ? WHERE spec_id = ? "
                             f"AND text IN ({','.join('?' * len(part))})", [now, self.spec_id, *part])
        except sqlite3.Error as exc:
            log.debug("query cache %s: recency not updated: %s", self.path, exc)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")

    def put_many(self, vectors: Mapping[str, np.ndarray]) -> None:
        """Store ``text -> vector``, then evict least-recently-used rows beyond the bounds."""
        rows = []
        now = time.time()
        for text, vec in vectors.items():
            arr = np.ascontiguousarray(vec, dtype=np.float32).reshape(-1)
            nbytes = arr.nbytes + len(text.encode("utf-8", "surrogatepass"))
            if nbytes <= self.max_bytes:
                rows.append((self.spec_id, text, arr.size, arr.tobytes(), nbytes, now))
        if not rows:
            return
        try:
            with self._lock:
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("INSERT OR REPLACE INTO query_vectors VALUES (?, ?, ?, ?, ?, ?)", rows)
                    self._evict(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, OSError) as exc:
            log.debug("query cache %s not written: %s", self.path, exc)

    def put(self, text: str, vector: np.ndarray) -> None:
        self.put_many({text: vector})

    def _evict(self, conn: sqlite3.Connection) -> None:
        count, total = conn.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM query_vectors").fetchone()
        if count <= self.max_entries and total <= self.max_bytes:
            return
        conn.execute(
            """DELETE FROM query_vectors WHERE (spec_id, text) IN (
                   SELECT spec_id, text FROM (
                       SELECT spec_id, text,
                              ROW_NUMBER() OVER w AS n, SUM(nbytes) OVER w AS running
                       FROM query_vectors
                       WINDOW w AS (ORDER BY last_used DESC, spec_id, text ROWS UNBOUNDED PRECEDING))
                   WHERE n > ? OR running > ?)""",
            (self.max_entries, self.max_bytes),
        )

    def stats(self) -> dict[str, int]:
        """``{"entries": n, "bytes": b}`` over every spec id in the file (zeros when unreadable)."""
        try:
            with self._lock:
                count, total = self._connect().execute(
                    "SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM query_vectors").fetchone()
            return {"entries": int(count), "bytes": int(total)}
        except (sqlite3.Error, OSError) as exc:
            log.debug("query cache %s not read: %s", self.path, exc)
            return {"entries": 0, "bytes": 0}

    def clear(self) -> None:
        """Forget every vector of this spec id."""
        try:
            with self._lock:
                self._connect().execute("DELETE FROM query_vectors WHERE spec_id = ?", (self.spec_id,))
        except (sqlite3.Error, OSError) as exc:
            log.debug("query cache %s not cleared: %s", self.path, exc)


def open_query_cache(collection_path: str | os.PathLike[str], spec_id: str, **kwargs: int | float) -> QueryCache:
    """The query cache of a collection for encoder ``spec_id`` (opened lazily on first use)."""
    return QueryCache(query_cache_path(collection_path), spec_id, **kwargs)  # type: ignore[arg-type]
