"""One writer per collection (SQLite lock file, PostgreSQL advisory lock); readers never take it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from indexer.catalog.models import INDEXED, Embedding, Photo
from indexer.collection import Collection
from indexer.core.errors import WriterBusyError
from indexer.run import index_paths
from tests.helpers import OPTS, env_offline, make_library



def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ui.cli", *args], env=env_offline(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _exactly_once(coll: Collection, n_files: int) -> None:
    with coll.catalog.session() as s:
        vec_ids = list(s.scalars(select(Embedding.photo_id)))
        indexed = s.scalar(select(func.count()).select_from(Photo).where(Photo.status == INDEXED))
        photos = s.scalar(select(func.count()).select_from(Photo))
    assert len(vec_ids) == len(set(vec_ids)) == indexed == photos == n_files


@pytest.fixture()
def created(tmp_path, tiny_encoder):
    """A collection created for the tiny encoder (nothing indexed yet) and a 12-photo library."""
    lib = tmp_path / "lib"
    make_library(lib, 12)
    Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec).close()
    return tmp_path / "coll", lib


def test_second_writer_is_refused_naming_the_holder(created, tiny_encoder):
    coll_dir, lib = created
    with Collection.open(coll_dir) as holder, holder.writer_lock().acquire():
        with Collection.open(coll_dir) as other:
            with pytest.raises(WriterBusyError, match=f"pid {os.getpid()}"):
                index_paths(other, tiny_encoder, [lib], OPTS)
            assert other.stats()["photos"] == 0  # refused before touching the catalog
    with Collection.open(coll_dir) as coll:  # released on exit: the next run goes ahead
        assert index_paths(coll, tiny_encoder, [lib], OPTS).encode.encoded == 12


def test_cli_second_run_exits_2_with_one_line_or_waits(created, tiny_clip):
    coll_dir, lib = created
    with Collection.open(coll_dir) as holder:
        lock = holder.writer_lock().acquire()
        refused = _cli("index", str(lib), "--collection", str(coll_dir))
        out, err = refused.communicate(timeout=120)
        assert refused.returncode == 2, err
        assert "being written by pid" in err and str(os.getpid()) in err and "Traceback" not in err
        assert "or pass --wait" in err and err.count("\n") == 1  # the CLI's hint: one line
        waiting = _cli("index", str(lib), "--collection", str(coll_dir), "--wait", "--json")
        time.sleep(1.0)
        assert waiting.poll() is None  # still waiting for the lock
        lock.release()
        out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    assert json.loads(out)["encode"]["encoded"] == 12


def test_stale_lock_of_a_dead_process_is_taken_over(created, tiny_encoder):
    coll_dir, lib = created
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (coll_dir / "writer.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": "h", "started_at": "x"}))
    with Collection.open(coll_dir) as coll:
        assert index_paths(coll, tiny_encoder, [lib], OPTS).encode.encoded == 12


KILLED_WRITER = """
import os, sys, time
from indexer.writer_lock import WriterLock
engine = None
if len(sys.argv) > 2:
    from indexer.catalog.engine import make_engine
    engine = make_engine(sys.argv[2])
lock = WriterLock(sys.argv[1], engine).acquire()
if os.fork() == 0:  # a decode worker: it inherits the writer's open files and outlives it for a while
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1), os.dup2(null, 2)  # not the test's pipes: it reads until they close
    time.sleep(10)
    os._exit(0)
print("locked", flush=True)
time.sleep(0.2)
os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_sigkilled_writers_lingering_worker_does_not_keep_the_lock(created, backend, request):
    """flock belongs to the open file (a PostgreSQL advisory lock to the session behind the socket), and
    a forked worker shares both: a worker still alive after its writer was SIGKILLed kept the collection
    locked in the dead writer's name until it noticed."""
    from indexer.catalog.engine import Catalog
    from indexer.writer_lock import WriterLock

    coll_dir, _ = created
    url = [request.getfixturevalue("pg_database_url")] if backend == "postgresql" else []
    catalog = Catalog(url[0]) if url else None  # the schema, with its meta table
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(coll_dir), *url], capture_output=True,
                          text=True, timeout=60, env=env_offline())
    assert proc.returncode == -9 and proc.stdout.strip() == "locked", proc.stderr
    try:
        with WriterLock(coll_dir, catalog.engine if catalog else None).acquire(wait=True, timeout=3):
            pass  # at once (well within the orphaned child's 10 s), not after it exits
    finally:
        if catalog:
            catalog.dispose()


def _two_concurrent_runs(coll_dir: Path, lib: Path, extra: list[str]) -> list[tuple[int, str]]:
    procs = [_cli("index", str(lib), "--collection", str(coll_dir), *extra) for _ in range(2)]
    results = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        results.append((p.returncode, err))
    return results


def test_two_concurrent_index_runs_on_sqlite(created):
    coll_dir, lib = created
    results = _two_concurrent_runs(coll_dir, lib, ["--workers", "0"])
    for rc, err in results:
        assert rc in (0, 2) and "Traceback" not in err and "IntegrityError" not in err, err
        assert rc == 0 or "being written by" in err
    assert 0 in [rc for rc, _ in results]
    with Collection.open(coll_dir) as coll:
        _exactly_once(coll, 12)
    waited = _two_concurrent_runs(coll_dir, lib, ["--workers", "0", "--wait"])
    assert [rc for rc, _ in waited] == [0, 0], waited


def test_two_concurrent_index_runs_on_postgresql(tmp_path, tiny_encoder, pg_database_url):
    lib = tmp_path / "lib"
    make_library(lib, 12)
    coll_dir = tmp_path / "coll"
    Collection.open_for_encoder(coll_dir, tiny_encoder.spec, pg_database_url).close()
    with Collection.open(coll_dir, pg_database_url) as holder:
        assert holder.catalog.engine.dialect.name == "postgresql"
        lock = holder.writer_lock()
        assert lock.engine is not None  # the advisory lock is used
        lock.acquire()
        # a second holder on another folder of the same catalog is refused too (advisory lock)
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        (other_dir / "manifest.json").write_text((coll_dir / "manifest.json").read_text())
        with Collection.open(other_dir, pg_database_url) as other, pytest.raises(WriterBusyError, match="pid"):
            other.writer_lock().acquire()
        lock.release()
    results = _two_concurrent_runs(coll_dir, lib, ["--workers", "0", "--wait", "--database-url", pg_database_url])
    assert [rc for rc, _ in results] == [0, 0], results
    with Collection.open(coll_dir, pg_database_url) as coll:
        _exactly_once(coll, 12)
