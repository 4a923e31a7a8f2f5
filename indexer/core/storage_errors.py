"""A read-only or full disk, recognised wherever it surfaces, so it is reported as one line (exit code 2).

The same refusal reaches photodex in several shapes: an ``OSError`` (``EROFS``, ``EACCES``, ``ENOSPC``,
...), SQLite's ``SQLITE_READONLY``/``SQLITE_FULL`` (wrapped by SQLAlchemy), PostgreSQL's SQLSTATE
``25006``/``53100`` (faiss's bare ``RuntimeError`` becomes an ``OSError`` in :mod:`indexer.atomic`).
:func:`storage_error` turns any of them into a :class:`~indexer.core.errors.StorageError` naming the path
and what to do; anything else is left alone (a bug keeps its traceback).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from .errors import StorageError

Refusal = Literal["read-only", "full"]

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
_PG_STATES: dict[str, Refusal] = {"53100": "full", "25006": "read-only"}  # disk_full, read_only_sql_transaction

ADVICE: dict[Refusal, str] = {
    "read-only": "make the collection writable (or use another --collection)",
    "full": "free some space",
}


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the DB-API error SQLAlchemy wraps (``.orig``) and its explicit causes (``raise ... from``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = getattr(e, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, e.__cause__]


def refusal(exc: BaseException) -> tuple[Refusal, str | None, str] | None:
    """(kind, the path refused if known, the system's reason) when ``exc`` is a storage refusal, else None."""
    for e in _causes(exc):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS | _READ_ONLY_ERRNOS:
            kind: Refusal = "full" if e.errno in _FULL_ERRNOS else "read-only"
            return kind, os.fsdecode(e.filename) if e.filename is not None else None, e.strerror or str(e)
        name = getattr(e, "sqlite_errorname", None) or ""
        if name.startswith(("SQLITE_FULL", "SQLITE_READONLY")):
            return ("full" if name.startswith("SQLITE_FULL") else "read-only"), None, str(e)
        state = getattr(e, "sqlstate", None)
        if state in _PG_STATES:
            return _PG_STATES[state], None, str(e).splitlines()[0]
    return None


def storage_error(exc: BaseException, catalog: str | None = None, context: str = "") -> StorageError | None:
    """The one-line :class:`StorageError` for a storage refusal (None for anything else).

    ``catalog``: the catalog's path or URL, named when the database itself refused; ``context``: how far
    the work got and what is kept, added to the message before the advice."""
    found = refusal(exc)
    return None if found is None else _error(found, catalog, context)


def _error(found: tuple[Refusal, str | None, str], catalog: str | None, context: str) -> StorageError:
    kind, path, reason = found
    if kind == "full":
        head = f"the disk holding {path or catalog or 'the collection'} is full ({reason})"
    elif path is None:
        head = f"cannot write the catalog{' ' + catalog if catalog else ''}: it is read-only ({reason})"
    else:
        head = f"cannot write {path}: {reason}"
    tail = f"{ADVICE[kind]}, then run the same command again" + (" to resume" if kind == "full" else "")
    return StorageError(f"{head}; {context + '; ' if context else ''}{tail}")


@contextmanager
def storage_refusals(catalog: str | Callable[[], str] | None = None,
                     context: str | Callable[[], str] = "") -> Iterator[None]:
    """Re-raise a storage refusal inside the block as one :class:`StorageError`; anything else passes unchanged.

    ``catalog`` and ``context`` may be callables: they are asked only when the disk refused (the work's
    position is known by then, and naming the catalog may need imports a light run avoids)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        found = refusal(exc)
        if found is None:
            raise
        raise _error(found, catalog() if callable(catalog) else catalog,
                     context() if callable(context) else context) from exc
