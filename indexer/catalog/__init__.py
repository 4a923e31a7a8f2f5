"""The catalog database: photos, files, vectors, tags, moderation state, keys.

Modules:
    engine      Catalog: SQLite (WAL) in the collection or any SQLAlchemy URL; migrations on open
    models      the SQLAlchemy ORM models (writes)
    read        read-only plain SQL without the ORM (sqlite3, or SQLAlchemy text() on PostgreSQL)
    status      a photo's status values (pending, indexed, error), importable without SQLAlchemy
    revisions   the schema revisions shipped, read from the migration files without Alembic
    migrations  the Alembic environment and versions
"""
