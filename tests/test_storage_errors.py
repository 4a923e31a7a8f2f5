"""A read-only or full disk under the collection: one line naming the path, exit 2, nothing lost, the next run resumes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import env_offline, make_library


def _photodex(*args: str, drop_root_override: bool = False) -> subprocess.CompletedProcess:
    """Run the CLI; ``drop_root_override``: as root without the capabilities that bypass file permissions."""
    prefix = ["setpriv", "--bounding-set", "-dac_override,-fowner"] if drop_root_override else []
    return subprocess.run([*prefix, sys.executable, "-m", "ui.cli", *args], env=env_offline(), capture_output=True,
                          text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


def _needs_setpriv() -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        if os.environ.get("CI"):
            pytest.fail("CI runs as root with setpriv: this test must run there")
        pytest.skip("needs root and setpriv to drop the capabilities that bypass file permissions")


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _owned_by_nobody(path: Path, mode_file: int = 0o444, mode_dir: int = 0o555) -> None:
    os.chown(path, 65534, 65534)
    os.chmod(path, mode_dir if path.is_dir() else mode_file)


@pytest.fixture()
def indexed(tmp_path, tiny_clip):
    """(library, collection, model flag) with 4 indexed photos and 2 new ones not yet indexed."""
    lib, coll = tmp_path / "lib", tmp_path / "coll"
    make_library(lib, 4)
    model = f"local-dir:{tiny_clip[0]}"
    done = _photodex("index", str(lib), "--collection", str(coll), "--model", model, "--workers", "0", "--json")
    assert done.returncode == 0, done.stderr
    make_library(lib, 2, start=100)
    return lib, coll, model


def test_read_only_collection_is_one_line_naming_the_path(indexed, tmp_path):
    _needs_setpriv()
    lib, coll, _ = indexed
    ro = tmp_path / "ro"
    shutil.copytree(coll, ro)
    for p in [ro, *ro.rglob("*")]:
        _owned_by_nobody(p)
    before = _snapshot(ro)
    for args in (["index", str(lib)], ["reindex"], ["reindex", "--force"]):
        err = _one_line_error(_photodex(*args, "--collection", str(ro), drop_root_override=True))
        assert str(ro) in err and "writ" in err and "Permission denied" in err, err
    assert _snapshot(ro) == before
    search = _photodex("search", "a photo", "--collection", str(ro), "--no-collapse", "--json",
                       drop_root_override=True)
    assert search.returncode == 0 and len(json.loads(search.stdout)) == 4  # still readable


def test_read_only_catalog_with_new_photos_is_one_line_and_loses_nothing(indexed):
    _needs_setpriv()
    lib, coll, model = indexed
    catalog = coll / "catalog.db"
    _owned_by_nobody(catalog)
    before = _snapshot(coll)
    err = _one_line_error(_photodex("index", str(lib), "--collection", str(coll), "--workers", "0",
                                    drop_root_override=True))
    assert str(catalog) in err and "read-only" in err, err
    after = _snapshot(coll)
    wal = coll / "catalog.db-wal"  # SQLite makes it (and -shm) on opening; nothing may have gone into it
    assert not wal.exists() or wal.stat().st_size == 0
    lock_and_wal = {"writer.lock", "catalog.db-wal", "catalog.db-shm"}
    assert {k: v for k, v in after.items() if k not in lock_and_wal} == \
        {k: v for k, v in before.items() if k not in lock_and_wal}
    os.chmod(catalog, 0o644)
    os.chown(catalog, 0, 0)
    again = _photodex("index", str(lib), "--collection", str(coll), "--workers", "0", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["collection"]["vectors"] == 6


@pytest.fixture()
def small_fs(tmp_path):
    """A 4 MiB tmpfs mounted for this test (root only; CI runs as root, so it never skips there)."""
    where = tmp_path / "small"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", f"photodex-test-{uuid.uuid4().hex[:8]}",
                           str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs as root and must be able to mount a tmpfs: {proc.stderr.strip()}")
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on the file system of ``folder``."""
    st = os.statvfs(folder)
    ballast = folder / "ballast"
    with open(ballast, "wb") as fh:
        fh.truncate(0)
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return ballast


def test_full_disk_says_so_keeps_the_catalog_consistent_and_the_next_run_resumes(small_fs, tmp_path, tiny_clip):
    lib, coll = tmp_path / "lib", small_fs / "coll"
    model = f"local-dir:{tiny_clip[0]}"
    make_library(lib, 5)
    first = _photodex("index", str(lib), "--collection", str(coll), "--model", model, "--workers", "0")
    assert first.returncode == 0, first.stderr
    make_library(lib, 300, start=100, size=(16, 16))
    ballast = _fill(small_fs, 150_000)
    err = _one_line_error(_photodex("index", str(lib), "--collection", str(coll), "--workers", "0"))
    assert "disk" in err and "full" in err and str(coll) in err and "again" in err, err
    assert " of " in err, err  # how far the run got
    db = sqlite3.connect(coll / "catalog.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM embeddings e LEFT JOIN photos p ON p.id = e.photo_id "
                      "WHERE p.id IS NULL OR p.status != 'indexed'").fetchone()[0] == 0
    db.close()
    ballast.unlink()
    again = _photodex("index", str(lib), "--collection", str(coll), "--workers", "0", "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)["collection"]
    assert summary["photos"] == summary["vectors"] == 305 and summary["errors"] == 0


def test_api_answers_a_full_or_read_only_disk_with_507_in_the_one_error_shape() -> None:
    """A server whose disk refuses writes is not a client error and not a bug: 507, never a 500."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from indexer.core.errors import StorageError
    from ui.api.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/write")
    def write() -> None:
        raise StorageError("the disk holding /c/catalog.db is full (No space left on device)")

    r = TestClient(app, raise_server_exceptions=False).post("/write")
    assert r.status_code == 507
    assert r.json()["error"]["code"] == "storage_unavailable"
    assert "disk holding /c/catalog.db is full" in r.json()["error"]["message"]
