"""Adversarial inputs to `index`: special files, paths given twice, colliding display names, refused rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import select

import indexer.sync.scan
from indexer.sync import plan as sync
from indexer.catalog.engine import alembic_config, make_engine, sqlite_url
from indexer.catalog.models import INDEXED, Photo, PhotoFile
from indexer.collection import Collection
from tests.helpers import env_offline, index_into, random_photo

REPO = Path(__file__).resolve().parents[1]
HANG_LIMIT_S = 60  # generous: a working run takes well under a second


def _files(coll_dir: Path, db_url: str | None = None) -> dict[bytes, PhotoFile]:
    coll = Collection.open(coll_dir, db_url)
    try:
        with coll.catalog.session() as s:
            return {bytes(f.path_bytes): f for f in s.scalars(select(PhotoFile))}
    finally:
        coll.close()


def _errors(coll_dir: Path) -> dict[str, str]:
    coll = Collection.open(coll_dir)
    try:
        return {Path(e["path"]).name: e["error"] for e in coll.errors()}
    finally:
        coll.close()


def _database_url(request: pytest.FixtureRequest, backend: str) -> str | None:
    return request.getfixturevalue("pg_database_url") if backend == "postgresql" else None


# ---- 1. FIFOs, sockets, devices ------------------------------------------------------------------

_SYNC_IN_CHILD = """
import json, sys
from indexer.collection import Collection
from indexer.sync.plan import sync_catalog
coll = Collection.open(sys.argv[1])
print(json.dumps(sync_catalog(coll, sys.argv[2:], follow_external_symlinks=True).to_dict()))
"""


def test_special_files_are_skipped_not_opened(tmp_path, tiny_encoder, monkeypatch):
    lib = tmp_path / "lib"
    random_photo(lib / "good.jpg")
    os.mkfifo(lib / "pipe.jpg")
    (lib / "zero.jpg").symlink_to("/dev/zero")  # a device: reading it never ends
    monkeypatch.chdir(lib)  # bind by a short relative name (UNIX socket paths are length-limited)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.jpg")
    fifo_root = tmp_path / "root-pipe.jpg"  # a FIFO given directly as a root
    os.mkfifo(fifo_root)
    coll_dir = tmp_path / "coll"
    Collection.open_for_encoder(coll_dir, tiny_encoder.spec).close()
    try:
        # in a child process, so a hang is killed rather than wedging the test session
        done = subprocess.run([sys.executable, "-c", _SYNC_IN_CHILD, str(coll_dir), str(lib), str(fifo_root)],
                              cwd=REPO, env=env_offline(), capture_output=True, text=True, timeout=HANG_LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sync did not finish in {HANG_LIMIT_S} s: a special file was opened")
    finally:
        sock.close()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["file_errors"] == 4
    summary = index_into(coll_dir, tiny_encoder, [lib, fifo_root], follow_external_symlinks=True)  # zero.jpg -> /dev
    assert summary.encode.encoded == 1 and summary.sync.hashed == 0  # nothing but good.jpg was ever hashed
    assert _errors(coll_dir) == {
        "pipe.jpg": "not a regular file (fifo)",
        "root-pipe.jpg": "not a regular file (fifo)",
        "sock.jpg": "not a regular file (socket)",
        "zero.jpg": "not a regular file (character device)",
    }


@pytest.mark.parametrize("swap", ["before_hash", "after_type_check"])
def test_file_swapped_for_fifo_after_scan_is_not_opened_blocking(tmp_path, monkeypatch, swap):
    photo = random_photo(tmp_path / "a.jpg")
    entry = next(indexer.sync.scan.scan([photo]))
    regular = os.stat(photo)
    photo.unlink()
    os.mkfifo(photo)
    if swap == "after_type_check":  # the swap lands between the hasher's stat and its open
        real_stat = os.stat
        monkeypatch.setattr(sync.os, "stat",
                            lambda p, *a, **k: regular if p == entry.path else real_stat(p, *a, **k))
    result: list[sync.HashResult] = []
    worker = threading.Thread(target=lambda: result.append(sync._hash(entry)), daemon=True)
    worker.start()
    worker.join(HANG_LIMIT_S)
    if worker.is_alive():  # blocked opening the FIFO: give it a writer so the thread can end
        os.close(os.open(photo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(HANG_LIMIT_S)
        pytest.fail("hashing opened a FIFO and blocked")
    assert result == [(entry, None, "not a regular file (fifo)")]


# ---- 2. the same file given twice ----------------------------------------------------------------

ALL = {"f.jpg", "sub/g.jpg", "sub/link.jpg"}


@pytest.mark.parametrize(("roots", "expected"), [
    (["f.jpg", "f.jpg"], {"f.jpg"}),
    ([".", "f.jpg"], ALL),
    ([".", "sub"], ALL),
    (["sub/g.jpg", ".", "."], ALL),
])
def test_same_file_given_twice_is_indexed_once(tmp_path, tiny_encoder, roots, expected):
    lib = tmp_path / "lib"
    random_photo(lib / "f.jpg", seed=1)
    random_photo(lib / "sub" / "g.jpg", seed=2)
    (lib / "sub" / "link.jpg").symlink_to(lib / "f.jpg")  # another path to the same photo: its own file row
    summary = index_into(tmp_path / "coll", tiny_encoder, [lib / r for r in roots])
    files = _files(tmp_path / "coll")
    assert set(files) == {os.fsencode(lib / name) for name in expected}
    assert summary.sync.scanned == len(expected) and summary.sync.file_errors == 0
    assert all(f.error is None and f.photo_id is not None for f in files.values())
    photos = {os.fsdecode(p)[len(str(lib)) + 1:]: f.photo_id for p, f in files.items()}
    assert len(set(photos.values())) == summary.encode.encoded == (2 if "sub/g.jpg" in photos else 1)
    if "sub/link.jpg" in photos:
        assert photos["sub/link.jpg"] == photos["f.jpg"]


# ---- 3. names whose display forms collide --------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_raw_byte_name_beside_its_escaped_twin(tmp_path, tiny_encoder, request, backend):
    db_url = _database_url(request, backend)
    lib = tmp_path / "lib"
    raw = os.fsencode(lib) + b"/a_\xff.jpg"
    twin = lib / "a_\\xff.jpg"  # literally backslash-x-f-f: the same display text as the raw name
    random_photo(lib / "other.jpg", seed=1)
    random_photo(twin, seed=2)
    with open(raw, "wb") as fh:
        fh.write(random_photo(tmp_path / "src.jpg", seed=3).read_bytes())
    summary = index_into(tmp_path / "coll", tiny_encoder, [lib], db_url)
    assert summary.encode.encoded == 3 and summary.sync.file_errors == 0
    files = _files(tmp_path / "coll", db_url)
    assert set(files) == {raw, os.fsencode(twin), os.fsencode(lib / "other.jpg")}
    assert files[raw].path == files[os.fsencode(twin)].path  # same display text, two rows
    assert files[raw].photo_id != files[os.fsencode(twin)].photo_id
    again = index_into(tmp_path / "coll", tiny_encoder, [lib], db_url)
    assert again.sync.unchanged == 3 and again.sync.hashed == 0 and again.encode.encoded == 0


def _upgrade(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_moves_uniqueness_from_path_to_path_bytes(tmp_path, request, backend):
    url = request.getfixturevalue("pg_database_url") if backend == "postgresql" else sqlite_url(tmp_path / "catalog.db")
    engine = make_engine(url)
    insert = sa.text("INSERT INTO photo_files (path, path_bytes, size, mtime_ns) VALUES (:p, :b, 1, 1)")
    try:
        _upgrade(engine, "0001")
        with engine.begin() as conn:
            conn.execute(insert, {"p": "/x/a_\\xff.jpg", "b": b"/x/a_\xff.jpg"})
        _upgrade(engine, "head")
        with engine.begin() as conn:  # the escaped twin: same text, other bytes
            conn.execute(insert, {"p": "/x/a_\\xff.jpg", "b": b"/x/a_\\xff.jpg"})
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(insert, {"p": "/elsewhere", "b": b"/x/a_\xff.jpg"})
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT path_bytes FROM photo_files ORDER BY id")).scalars().all()
        assert [bytes(r) for r in rows] == [b"/x/a_\xff.jpg", b"/x/a_\\xff.jpg"]
    finally:
        engine.dispose()


# ---- one refused row costs only itself ------------------------------------------------------------

def test_row_refused_by_the_database_does_not_roll_back_its_chunk(tmp_path, tiny_encoder):
    lib = tmp_path / "lib"
    for i, name in enumerate(["a.jpg", "poison.jpg", "z.jpg"]):
        random_photo(lib / name, seed=i)
    coll_dir = tmp_path / "coll"
    coll = Collection.open_for_encoder(coll_dir, tiny_encoder.spec)
    with coll.catalog.engine.begin() as conn:  # the database refuses to link this one file to a photo
        conn.exec_driver_sql("CREATE TRIGGER poison BEFORE INSERT ON photo_files "
                             "WHEN NEW.photo_id IS NOT NULL AND NEW.path LIKE '%poison%' "
                             "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")
    coll.close()
    summary = index_into(coll_dir, tiny_encoder, [lib])
    assert summary.encode.encoded == 2 and summary.sync.new_photos == 2 and summary.sync.file_errors == 1
    errors = _errors(coll_dir)
    assert list(errors) == ["poison.jpg"] and "poisoned row" in errors["poison.jpg"]
    coll = Collection.open(coll_dir)
    with coll.catalog.session() as s:
        assert s.scalar(select(sa.func.count()).select_from(Photo).where(Photo.status == INDEXED)) == 2
        assert s.scalar(select(sa.func.count()).select_from(Photo)) == 2  # no orphan left by the refused row
    coll.close()


# ---- a folder that cannot be listed ---------------------------------------------------------------

def test_unlistable_folder_keeps_its_indexed_files(tmp_path, tiny_encoder, monkeypatch):
    lib = tmp_path / "lib"
    random_photo(lib / "top.jpg", seed=1)
    random_photo(lib / "sub" / "inner.jpg", seed=2)
    coll_dir = tmp_path / "coll"
    index_into(coll_dir, tiny_encoder, [lib])
    before = _files(coll_dir)
    real_scandir = os.scandir
    denied = os.fsencode(lib / "sub")

    def scandir(path):  # noqa: ANN001, ANN202 - os.scandir's signature
        if os.fsencode(path) == denied:  # chmod cannot deny root, so deny here
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(indexer.sync.scan.os, "scandir", scandir)
    summary = index_into(coll_dir, tiny_encoder, [lib])
    assert summary.sync.removed_files == 0 and summary.sync.removed_photos == 0
    files = _files(coll_dir)
    inner = files[os.fsencode(lib / "sub" / "inner.jpg")]
    assert inner.photo_id == before[os.fsencode(lib / "sub" / "inner.jpg")].photo_id and inner.error is None
    assert _errors(coll_dir) == {"sub": "cannot list folder: Permission denied"}
    monkeypatch.undo()
    summary = index_into(coll_dir, tiny_encoder, [lib])
    assert summary.encode.encoded == 0 and _errors(coll_dir) == {}  # readable again: the folder's error row goes


# ---- many skipped files at once -------------------------------------------------------------------

def test_many_skipped_files_are_recorded_in_bounded_statements(tmp_path, tiny_encoder):
    """SQLite caps bound parameters per statement (32766; lowered here to keep the test small)."""
    import sqlite3

    lib = tmp_path / "lib"
    random_photo(lib / "good.jpg")
    for i in range(700):
        (lib / f"dangling_{i:03d}.jpg").symlink_to(lib / "missing.jpg")

    def low_limit(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI connection
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 600)

    sa.event.listen(sa.Engine, "connect", low_limit)
    try:
        summary = index_into(tmp_path / "coll", tiny_encoder, [lib])
    finally:
        sa.event.remove(sa.Engine, "connect", low_limit)
    assert summary.encode.encoded == 1 and summary.sync.file_errors == 700
    errors = _errors(tmp_path / "coll")
    assert len(errors) == 700 and all(e.startswith("cannot stat") for e in errors.values())
