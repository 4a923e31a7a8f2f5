"""The collection's writer lock: one writer at a time, readers never take it.

* SQLite catalogs (and any catalog whose collection folder is local): an exclusive
  ``fcntl.flock`` on ``<collection>/writer.lock``. The kernel drops the lock when its holder
  dies (even by SIGKILL), so a stale lock — a file naming a dead pid — is simply taken over.
  The file holds the holder's pid, host, start time and command, for the refusal message.
* PostgreSQL catalogs: a session-level advisory lock (``pg_try_advisory_lock``) held on a
  dedicated connection; the server drops it when that session ends. The holder is recorded in
  the catalog's ``meta`` table under ``writer``.

``flock`` comes from the standard library rather than a locking package because the holder's
identity must be written into the locked file itself, which ``filelock`` does not support.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .child_processes import drop_in_children, keep_in_children
from .core.errors import WriterBusyError
from .core.storage_errors import storage_refusals

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

LOCK_FILE = "writer.lock"
PG_LOCK_KEY = 0x70686F746F646578 & 0x7FFFFFFFFFFFFFFF  # "photodex"; advisory locks are per database
POLL_SECONDS = 0.2


def holder_info(note: dict[str, str] | None = None) -> dict[str, Any]:
    """Who is asking: pid, host, start time and command line, plus ``note`` (``{"job": id}`` for an API job)."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200],
            **(note or {})}


def describe_holder(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process"
    return ((f"index job {info['job']} of " if info.get("job") else "")
            + f"pid {info.get('pid')} on {info.get('host')} since {info.get('started_at')}"
            + (f" ({info['command']})" if info.get("command") else ""))


def _socket_fd(conn: Any) -> int | None:
    """The socket of a SQLAlchemy connection's DB-API connection (psycopg: ``fileno()``), if it has one."""
    try:
        return int(conn.connection.dbapi_connection.fileno())
    except Exception:  # noqa: BLE001 - a driver without fileno: the lock still works, only without this care
        return None


class WriterLock:
    """Exclusive writer lock of one collection; a context manager. See the module docstring."""

    def __init__(self, collection_path: Path, engine: "Engine | None" = None) -> None:
        self.path = Path(collection_path) / LOCK_FILE
        self.engine = engine if engine is not None and engine.dialect.name == "postgresql" else None
        self._fd: int | None = None
        self._conn: Any = None
        self._pg_fd: int | None = None
        self._note: dict[str, str] | None = None

    # ---- one attempt ---------------------------------------------------------------------
    def _try_file(self) -> bool:
        with storage_refusals(context="nothing was changed"):  # a read-only collection: one line naming the file
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_info(self._note)).encode(), 0)
        self._fd = fd
        drop_in_children(fd)  # a decode worker outliving a SIGKILLed writer must not keep it locked
        return True

    def _try_pg(self) -> bool:
        from sqlalchemy import text

        conn = self.engine.connect()  # type: ignore[union-attr]
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_LOCK_KEY}).scalar()
        conn.commit()
        if not got:
            conn.close()
            return False
        conn.execute(text("DELETE FROM meta WHERE key = 'writer'"))
        conn.execute(text("INSERT INTO meta (key, value) VALUES ('writer', :v)"),
                     {"v": json.dumps(holder_info(self._note))})
        conn.commit()
        self._conn = conn
        self._pg_fd = _socket_fd(conn)
        if self._pg_fd is not None:  # the server keeps the lock while any process holds this socket open
            drop_in_children(self._pg_fd)
        return True

    def holder(self) -> dict[str, Any] | None:
        """What the current holder wrote about itself (may be stale if it just died)."""
        try:
            if self.engine is not None:
                from sqlalchemy import text

                with self.engine.connect() as conn:
                    raw = conn.execute(text("SELECT value FROM meta WHERE key = 'writer'")).scalar()
            else:
                raw = self.path.read_text()
            return json.loads(raw) if raw else None
        except Exception:  # noqa: BLE001 - only used to word a message
            return None

    def acquire(self, wait: bool = False, timeout: float | None = None,
                note: dict[str, str] | None = None) -> "WriterLock":
        """Take the lock, or raise :class:`WriterBusyError` naming the holder (``wait``: poll until free).

        ``note`` is recorded with the holder (an API index job gives ``{"job": id}``, so a refused client
        is told which job to follow)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._note = note
        announced = False
        while True:
            got_file = self._try_file()
            if got_file and (self.engine is None or self._try_pg()):
                log.debug("writer lock taken: %s", self.path)
                return self
            if got_file:
                self._release_file()
            info = self.holder()
            holder = describe_holder(info)
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                raise WriterBusyError(f"collection {self.path.parent} is being written by {holder}", holder=info,
                                      hint="try again when it ends, or pass --wait")
            if not announced:
                log.warning("waiting for the writer lock held by %s", holder)
                announced = True
            time.sleep(POLL_SECONDS)

    def _release_file(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            keep_in_children(self._fd)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def release(self) -> None:
        if self._conn is not None:
            from sqlalchemy import text

            keep_in_children(self._pg_fd)

            with contextlib.suppress(Exception):
                self._conn.execute(text("DELETE FROM meta WHERE key = 'writer'"))
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
                self._conn.commit()
            self._conn.close()
            self._conn = None
        self._release_file()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "WriterLock":
        return self if self.held else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
