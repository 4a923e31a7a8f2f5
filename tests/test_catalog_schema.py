"""The cheap schema check agrees with alembic, so opening a catalog never skips a needed migration."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from indexer.catalog.engine import Catalog, alembic_config, current_revision, head_revision, sqlite_url


def test_head_revision_read_from_files_equals_alembics_head():
    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_new_catalog_is_migrated_to_head_and_reopens_without_migrating(tmp_path):
    url = sqlite_url(tmp_path / "catalog.db")
    cat = Catalog(url)
    assert current_revision(cat.engine) == head_revision()
    cat.dispose()
    again = Catalog(url)
    assert current_revision(again.engine) == head_revision() and not again.read_only
    again.dispose()


def test_catalog_from_a_newer_photodex_is_refused_with_a_clear_error_and_left_alone(tmp_path):
    import pytest
    from sqlalchemy import text

    from indexer.core.errors import CollectionError

    url = sqlite_url(tmp_path / "catalog.db")
    cat = Catalog(url)
    with cat.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9001'"))
    cat.dispose()
    with pytest.raises(CollectionError, match=r"schema revision 9001, newer than this photodex knows.*upgrade photodex"):
        Catalog(url)
    from indexer.catalog.engine import make_engine

    engine = make_engine(url)  # the refused catalog was not touched
    assert current_revision(engine) == "9001"
    engine.dispose()
