"""Catalog engine: SQLite (WAL) inside the collection by default, any SQLAlchemy URL otherwise."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .models import Meta
from .read import sqlite_url  # noqa: F401 - re-exported: callers build catalog URLs from here
from ..core.errors import CollectionError
from .revisions import MIGRATIONS_DIR, head_revision, refuse_unknown_revision

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI connection
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError for bad URLs
        raise CollectionError(f"invalid database URL {url!r}: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


def _readonly_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI connection
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _readonly_sqlite_engine(path: str, immutable: bool) -> Engine:
    """A SQLite engine that never writes (``mode=ro``; ``immutable=1`` where no -shm can be made)."""
    query = "mode=ro&uri=true" + ("&immutable=1" if immutable else "")
    engine = create_engine(f"sqlite:///file:{quote(path)}?{query}", connect_args={"timeout": 30})
    event.listen(engine, "connect", _readonly_pragmas)
    return engine


def _is_readonly_error(exc: BaseException | None) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("readonly", "read-only", "unable to open", "permission denied"))


def alembic_config() -> "Config":
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


_upgrade_lock = threading.Lock()  # alembic's command API keeps module-global state: one at a time


def upgrade(engine: Engine) -> None:
    """Bring the catalog schema to the newest revision (idempotent; a cheap check when current)."""
    try:
        rev = current_revision(engine)
        if rev == head_revision():
            return
        refuse_unknown_revision(rev, engine.url.render_as_string(hide_password=True))
        from alembic import command

        with _upgrade_lock, engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise CollectionError(f"cannot open catalog at {engine.url.render_as_string(hide_password=True)}: "
                              f"{str(exc).splitlines()[0]}") from exc


def current_revision(engine: Engine) -> str | None:
    """The catalog's schema revision (None for a new, empty catalog)."""
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except SQLAlchemyError as exc:
            if "no such table" not in str(exc) and "does not exist" not in str(exc):
                raise
            conn.rollback()
            return None


class Catalog:
    """Engine + session factory for one collection's catalog.

    A SQLite catalog that cannot be written (read-only file or folder) is opened read-only, so
    a read-only collection can still be searched; it must already be at the newest schema."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.read_only = False
        self.engine = make_engine(url)
        try:
            upgrade(self.engine)
        except CollectionError as exc:
            if self.engine.dialect.name != "sqlite" or not _is_readonly_error(exc.__cause__):
                raise
            self.engine.dispose()
            self._open_read_only(str(make_url(url).database))
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _open_read_only(self, path: str) -> None:
        head = head_revision()
        for immutable in (False, True):  # WAL needs a -shm file; immutable where none can be made
            self.engine = _readonly_sqlite_engine(path, immutable)
            try:
                rev = current_revision(self.engine)
            except SQLAlchemyError as exc:
                self.engine.dispose()
                if immutable or not _is_readonly_error(exc):
                    raise CollectionError(f"cannot open catalog {path} read-only: {str(exc).splitlines()[0]}") from exc
                continue
            if rev != head:
                refuse_unknown_revision(rev, path)
                raise CollectionError(f"catalog {path} is read-only and needs a schema upgrade ({rev} -> {head}); "
                                      "open it once with write access")
            log.info("catalog %s opened read-only%s", path, " (immutable)" if immutable else "")
            self.read_only = True
            return

    def session(self) -> Session:
        return self.sessions()

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.session() as s:
            row = s.get(Meta, key)
            return row.value if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.session() as s, s.begin():
            row = s.get(Meta, key)
            if row is None:
                s.add(Meta(key=key, value=value))
            else:
                row.value = value

    def bump_generation(self, s: Session) -> int:
        """Increase the vector generation inside an open transaction; indexes compare against it."""
        row = s.execute(select(Meta).where(Meta.key == "generation").with_for_update()).scalar_one_or_none()
        if row is None:
            row = Meta(key="generation", value="0")
            s.add(row)
        row.value = str(int(row.value) + 1)
        return int(row.value)

    def generation(self) -> int:
        return int(self.get_meta("generation", "0") or 0)

    def dispose(self) -> None:
        self.engine.dispose()
