"""Reads without the ORM (stdlib sqlite3, or SQL text on PostgreSQL) give what the ORM gives."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import numpy as np
import pytest
from sqlalchemy import func, select, text

from indexer.catalog.engine import current_revision, head_revision, make_engine
from indexer.catalog.models import Embedding, Meta, Photo, PhotoFile, Tag
from indexer.catalog.read import EngineReader, SqliteReader
from indexer.collection import Collection
from indexer.core.errors import CollectionError
from indexer.run import index_paths
from indexer.core.vectors import decode_vectors
from retrieval.visibility import hidden_ids
from retrieval.search.searcher import SearchOptions, Searcher
from tests.helpers import OPTS, make_library

N = 12


@pytest.fixture(params=["sqlite", "postgresql"])
def described(request, tmp_path, tiny_encoder):
    url = request.getfixturevalue("pg_database_url") if request.param == "postgresql" else None
    return _described(tmp_path, tiny_encoder, url)


def _described(tmp_path, tiny_encoder, url):
    """A 12-photo collection whose first photos carry every kind of metadata a search hit shows."""
    lib = tmp_path / "lib"
    make_library(lib, N)
    with Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec, url) as coll:
        index_paths(coll, tiny_encoder, [lib], OPTS)
        with coll.catalog.session() as s, s.begin():
            photos = s.scalars(select(Photo).order_by(Photo.id)).all()
            first = photos[0]
            first.taken_at = datetime(2021, 7, 4, 18, 30, 5, 250000)
            first.gps_lat, first.gps_lon = 48.8566, 2.3522
            first.camera_make, first.camera_model = "Canon", "EOS R6"
            photos[1].taken_at = datetime(2020, 1, 1)
            photos[1].gps_lat = 10.0  # half a position is no position
            s.add_all([Tag(photo_id=first.id, taxonomy="objects", label="dog", score=0.9),
                       Tag(photo_id=first.id, taxonomy="user", label="beach", score=1.0, manual=True),
                       Tag(photo_id=photos[2].id, taxonomy="moderation", label="quarantine", score=1.0, manual=True)])
            copy = os.fsencode(str(lib / "a copy, été.jpg"))
            s.add(PhotoFile(path=os.fsdecode(copy), path_bytes=copy, photo_id=first.id, size=first.size, mtime_ns=1))
    return tmp_path / "coll", url, tiny_encoder


def _orm_view(coll: Collection) -> dict[int, dict]:
    """What a search hit should show for each photo, read through the ORM."""
    out = {}
    with coll.catalog.session() as s:
        for p in s.scalars(select(Photo)):
            out[p.id] = {
                "paths": sorted(f.path for f in s.scalars(select(PhotoFile).where(PhotoFile.photo_id == p.id))),
                "taken_at": p.taken_at.isoformat() if p.taken_at else None,
                "camera_make": p.camera_make, "camera_model": p.camera_model, "width": p.width,
                "height": p.height, "format": p.format,
                "gps": (p.gps_lat, p.gps_lon) if p.gps_lat is not None and p.gps_lon is not None else None,
                "tags": sorted(s.scalars(select(Tag.label).where(Tag.photo_id == p.id))),
            }
    return out


def test_search_hits_stats_and_vectors_read_without_the_orm_equal_the_orms(described):
    path, url, encoder = described
    with Collection.open(path, url) as coll:
        assert isinstance(coll.reader, SqliteReader if url is None else EngineReader)
        expected = _orm_view(coll)
        hits = Searcher(coll, encoder).search_text("a photo", SearchOptions(k=N, collapse=None))
        assert len(hits) == N - 1  # the quarantined photo is hidden
        first = min(expected)
        assert expected[first]["taken_at"] == "2021-07-04T18:30:05.250000" and len(expected[first]["paths"]) == 2
        for h in hits:
            got = {k: v for k, v in h.to_dict().items() if k in expected[h.id]}
            assert got == expected[h.id], h.id
        with coll.catalog.session() as s:
            quarantined = s.scalars(select(Tag.photo_id).where(Tag.taxonomy == "moderation")).all()
            orm_ids = s.scalars(select(Embedding.photo_id).order_by(Embedding.photo_id)).all()
            blobs = s.scalars(select(Embedding.vector).order_by(Embedding.photo_id)).all()
            generation = int(s.get(Meta, "generation").value)
            n_files = s.scalar(select(func.count()).select_from(PhotoFile))
        assert hidden_ids(coll).tolist() == quarantined
        assert coll.vector_ids().tolist() == orm_ids and coll.generation() == generation > 0
        ids, vecs = coll.load_vectors()
        assert ids.tolist() == orm_ids and np.array_equal(vecs, decode_vectors(blobs, coll.dim))
        some, some_vecs = coll.load_vectors(np.asarray(orm_ids[::-3]))
        assert some.tolist() == sorted(orm_ids[::-3]) and np.array_equal(some_vecs, vecs[np.isin(ids, some)])
        stats = coll.stats()
        assert (stats["photos"], stats["indexed"], stats["vectors"], stats["files"]) == (N, N, N, n_files)


def test_an_older_catalog_is_upgraded_on_open_then_read_without_the_orm(tmp_path, tiny_encoder):
    from alembic import command

    from indexer.catalog.engine import alembic_config

    lib = tmp_path / "lib"
    make_library(lib, 6)
    with Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec) as coll:
        index_paths(coll, tiny_encoder, [lib], OPTS)
        with coll.catalog.engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0004")
    with Collection.open(tmp_path / "coll") as coll:
        assert isinstance(coll.reader, SqliteReader)
        assert current_revision(coll.catalog.engine) == head_revision()
        assert len(Searcher(coll, tiny_encoder).search_text("a photo", SearchOptions(k=6, collapse=None))) == 6


def test_a_newer_catalog_is_refused_by_open_and_left_alone(tmp_path, tiny_encoder):
    make_library(tmp_path / "lib", 3)
    with Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec) as coll:
        index_paths(coll, tiny_encoder, [tmp_path / "lib"], OPTS)
        with coll.catalog.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9001'"))
    with pytest.raises(CollectionError, match="schema revision 9001, newer than this photodex knows"):
        Collection.open(tmp_path / "coll")
    engine = make_engine(f"sqlite:///{tmp_path / 'coll' / 'catalog.db'}")
    assert current_revision(engine) == "9001"
    engine.dispose()


def test_a_garbage_catalog_gives_a_clear_error(tmp_path, tiny_encoder):
    make_library(tmp_path / "lib", 2)
    with Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec) as coll:
        index_paths(coll, tiny_encoder, [tmp_path / "lib"], OPTS)
    (tmp_path / "coll" / "catalog.db").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / "coll" / f"catalog.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(CollectionError, match="cannot open catalog"):
        Collection.open(tmp_path / "coll")


def test_one_collection_serves_many_threads_and_closes_their_connections(tmp_path, tiny_encoder):
    """sqlite3 connections are per thread (the API serves from a thread pool); PostgreSQL uses the engine's pool."""
    path, _, encoder = _described(tmp_path, tiny_encoder, None)
    with Collection.open(path) as coll:
        searcher = Searcher(coll, encoder)
        want = [h.id for h in searcher.search_text("a photo", SearchOptions(k=5, collapse=None))]
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda i: [h.id for h in searcher.search_text("a photo", SearchOptions(
                k=5, collapse=None))], range(30)))
        assert all(g == want for g in got)
        reader = coll.reader
        assert isinstance(reader, SqliteReader) and len(reader._open) >= 2
    assert reader._open == [] and coll._reader is None


def test_a_collection_folder_with_url_characters_keeps_its_catalog_inside(tmp_path, tiny_encoder):
    """'?', '#' and '%' in the folder name once made SQLAlchemy open a catalog in another file."""
    from sqlalchemy.engine import make_url

    from indexer.catalog.read import sqlite_path, sqlite_url

    parent = tmp_path / "odd parent"
    folder = parent / "holiday?2024 #1 100%25 été"
    assert make_url(sqlite_url(folder / "catalog.db")).database == sqlite_path(sqlite_url(folder / "catalog.db")) \
        == str(folder / "catalog.db")
    make_library(tmp_path / "lib", 4)
    with Collection.open_for_encoder(folder, tiny_encoder.spec) as coll:
        index_paths(coll, tiny_encoder, [tmp_path / "lib"], OPTS)
    assert sorted(p.name for p in parent.iterdir()) == [folder.name]  # no stray catalog beside it
    assert (folder / "catalog.db").stat().st_size > 0
    with Collection.open(folder) as coll:
        assert isinstance(coll.reader, SqliteReader) and coll.stats()["indexed"] == 4
        assert len(Searcher(coll, tiny_encoder).search_text("a photo", SearchOptions(k=4, collapse=None))) == 4


FILTER_CASES = [
    ["after=2021-01-01"], ["before=2020-06-01"], ["after=2021-07-04T18:30:05"], ["before=2021-07-04T18:30:05"],
    ["make=canon"], ["make=CAN%"], ["camera=eos"], ["gps=true"], ["gps=false"], ["type=jpeg"], ["type=png"],
    ["tag=dog"], ["tag=dog,beach"], ["tag=dog", "tag=cat"], ["moderation=quarantine"], ["moderation=any"],
    ["moderation=block"], ["path=*copy*"], ["path=*img_0003*"], ["after=2020-01-01", "gps=false"],
]


def _expected_ids(coll: Collection, filters) -> list[int]:
    """The filter's meaning, evaluated in Python over the ORM's objects (the oracle for the SQL)."""
    import fnmatch

    out = []
    with coll.catalog.session() as s:
        for p in s.scalars(select(Photo).order_by(Photo.id)):
            tags = s.execute(select(Tag.taxonomy, Tag.label).where(Tag.photo_id == p.id)).all()
            paths = s.scalars(select(PhotoFile.path).where(PhotoFile.photo_id == p.id)).all()
            ok = [p.status == "indexed",
                  filters.taken_after is None or (p.taken_at is not None and p.taken_at >= filters.taken_after),
                  filters.taken_before is None or (p.taken_at is not None and p.taken_at <= filters.taken_before),
                  filters.camera_make is None or (p.camera_make or "").lower() == filters.camera_make.lower()
                  or (filters.camera_make.endswith("%") and (p.camera_make or "").lower().startswith(
                      filters.camera_make[:-1].lower()) and p.camera_make is not None),
                  filters.camera_model is None or filters.camera_model.lower() in (p.camera_model or "\0").lower(),
                  filters.has_gps is None or filters.has_gps == (p.gps_lat is not None and p.gps_lon is not None),
                  filters.file_type is None or p.format == filters.file_type,
                  all(label in {lab for _, lab in tags} for label in filters.tags),
                  filters.moderation in (None, "any") or ("moderation", filters.moderation) in tags,
                  filters.path is None or any(fnmatch.fnmatch(x, filters.path) for x in paths)]
            if all(ok):
                out.append(p.id)
    return out


def test_metadata_filters_in_sql_mean_what_they_say(described):
    from retrieval.search.filters import allowed_ids, parse_filters

    path, url, _ = described
    with Collection.open(path, url) as coll:
        chosen = set()
        for case in FILTER_CASES:
            filters = parse_filters(case)
            got = allowed_ids(coll, filters).tolist()
            assert got == _expected_ids(coll, filters), case
            chosen.add(tuple(got))
        assert len(chosen) >= 6  # the cases select different sets, not all-or-nothing
