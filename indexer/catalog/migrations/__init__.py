"""The catalog's Alembic migrations.

Modules:
    env       the Alembic environment: runs on the connection :func:`indexer.catalog.engine.upgrade` hands over
    versions  one file per schema revision
"""
