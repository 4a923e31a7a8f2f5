"""Symlinks cannot take an index run or a served file outside the library (issue 21, items 1 and 2).

A library holds a folder symlink and a file symlink leading outside it: an API index job must not
catalogue what they reach, `photodex index` skips them unless told to follow them, and the API serves
only files that resolve inside its library roots and are still the very files that were indexed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from indexer.catalog.models import PhotoFile
from indexer.collection import Collection
from indexer.run import index_paths
from retrieval.index.store import refresh_index
from tests.api_support import assert_error
from tests.helpers import OPTS, make_library, random_photo
from ui.api.app import create_app
from ui.api.security import create_api_key
from ui.cli.app import main as cli
from ui.settings import Settings

API = "/api/v1"
KINDS = ["folder", "file"]


def _library(tmp: Path, kind: str) -> tuple[Path, Path, Path]:
    """``lib/small`` (3 photos) with one symlink of ``kind`` leading outside; (lib, small, outside)."""
    lib, outside = tmp / "lib", tmp / "outside"
    small = lib / "small"
    make_library(small, 3)
    make_library(outside / "folder", 2, start=50)
    random_photo(outside / "secret.jpg", seed=99)
    if kind == "folder":
        os.symlink(outside / "folder", small / "dirlink")
    else:
        os.symlink(outside / "secret.jpg", small / "filelink.jpg")
    return lib, small, outside


def _catalogued(coll_dir: Path) -> list[str]:
    with Collection.open(coll_dir) as coll, coll.catalog.session() as s:
        return [os.fsdecode(os.path.realpath(bytes(f.path_bytes))) for f in s.scalars(select(PhotoFile))]


def _api(coll_dir: Path, lib: Path, encoder, roots: bool = True) -> TestClient:
    settings = Settings(collection=coll_dir, api_library_roots=[lib] if roots else [], workers=0, batch_size=8)
    return TestClient(create_app(settings, encoder_loader=lambda s: encoder))


def _job(c: TestClient, key: str, path: Path) -> dict:
    started = c.post(f"{API}/index/jobs", json={"paths": [str(path)]}, headers={"X-API-Key": key})
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = c.get(f"{API}/index/jobs/{started.json()['id']}", headers={"X-API-Key": key}).json()
        if job["status"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def _empty_collection(coll_dir: Path, encoder) -> str:
    with Collection.open_for_encoder(coll_dir, encoder.spec) as coll:
        return create_api_key(coll.catalog, "writer", "write")


def _photo_ids(c: TestClient) -> list[int]:
    return [h["id"] for h in c.post(f"{API}/search", json={"text": "a photo", "k": 50, "collapse": None})
            .json()["results"]]


# ---- 1. scans stay inside the roots ----------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_api_job_skips_symlinks_leading_outside_the_library_roots(tmp_path, tiny_encoder, kind):
    lib, small, outside = _library(tmp_path, kind)
    key = _empty_collection(tmp_path / "coll", tiny_encoder)
    with _api(tmp_path / "coll", lib, tiny_encoder) as c:
        job = _job(c, key, small)
        assert job["status"] == "succeeded", job
        served = [c.get(f"{API}/photos/{i}/original").content for i in _photo_ids(c)]
    secrets = [p.read_bytes() for p in outside.rglob("*.jpg")]
    assert not any(s in served for s in secrets)
    assert not any(p.startswith(str(outside)) for p in _catalogued(tmp_path / "coll"))
    assert len(served) == 3 and job["summary"]["encode"]["encoded"] == 3
    assert job["summary"]["sync"]["outside_roots"] == 1, job["summary"]["sync"]


@pytest.mark.parametrize("kind", KINDS)
def test_api_job_follows_symlinks_that_stay_inside_a_library_root(tmp_path, tiny_encoder, kind):
    """A symlink to elsewhere under a configured root (outside the job's own path) is followed and served."""
    lib = tmp_path / "lib"
    small = lib / "small"
    make_library(small, 2)
    other = random_photo(lib / "other" / "in.jpg", seed=77)
    make_library(lib / "other" / "folder", 1, start=60)
    if kind == "folder":
        os.symlink(lib / "other" / "folder", small / "inlink")
    else:
        os.symlink(other, small / "inlink.jpg")
    key = _empty_collection(tmp_path / "coll", tiny_encoder)
    with _api(tmp_path / "coll", lib, tiny_encoder) as c:
        job = _job(c, key, small)
        assert job["status"] == "succeeded" and job["summary"]["sync"]["outside_roots"] == 0, job
        ids = _photo_ids(c)
        assert len(ids) == 3
        for i in ids:
            resp = c.get(f"{API}/photos/{i}/original")
            assert resp.status_code == 200, resp.text
            path = c.get(f"{API}/photos/{i}").json()["paths"][0]
            assert resp.content == Path(path).read_bytes()
            assert c.get(f"{API}/photos/{i}/thumbnail").status_code == 200


def _cli_index(coll_dir: Path, folder: Path, clip_dir: Path, *extra: str) -> int:
    return cli(["index", str(folder), "--collection", str(coll_dir), "--model", f"local-dir:{clip_dir}",
                "--workers", "0", *extra])


@pytest.mark.parametrize("kind", KINDS)
def test_cli_skips_symlinks_leading_outside_the_named_folders_and_says_so(tmp_path, tiny_clip, capsys, kind):
    lib, small, outside = _library(tmp_path, kind)
    os.symlink(small / "0", small / "again")  # a symlink that stays inside: followed (its folder once)
    assert _cli_index(tmp_path / "coll", small, tiny_clip[0]) == 0
    out = capsys.readouterr().out
    assert "1 symlinks leading outside the named folders skipped" in out, out
    assert "--follow-external-symlinks" in out
    paths = _catalogued(tmp_path / "coll")
    assert len(paths) == 3 and not any(p.startswith(str(outside)) for p in paths)

    # opting in follows them (and says nothing about skipping)
    assert _cli_index(tmp_path / "coll", small, tiny_clip[0], "--follow-external-symlinks") == 0
    out = capsys.readouterr().out
    assert "outside the named folders" not in out
    paths = _catalogued(tmp_path / "coll")
    assert sum(p.startswith(str(outside)) for p in paths) == (2 if kind == "folder" else 1)

    # without the flag again, the outside files are forgotten
    assert _cli_index(tmp_path / "coll", small, tiny_clip[0]) == 0
    assert not any(p.startswith(str(outside)) for p in _catalogued(tmp_path / "coll"))


@pytest.mark.parametrize("kind", KINDS)
def test_api_refuses_a_cli_indexed_file_outside_its_library_roots(tmp_path, tiny_encoder, kind):
    """Whoever indexed it, the API serves only files that resolve inside its library roots."""
    lib, small, outside = _library(tmp_path, kind)
    with Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec) as coll:
        index_paths(coll, tiny_encoder, [small, outside], OPTS)  # the user named both folders
        refresh_index(coll)
    with _api(tmp_path / "coll", lib, tiny_encoder) as c:
        by_path = {c.get(f"{API}/photos/{i}").json()["paths"][0]: i for i in _photo_ids(c)}
        assert len(by_path) == 6
        for path, i in by_path.items():
            inside = not os.path.realpath(path).startswith(str(outside))
            for route in ("original", "thumbnail"):
                resp = c.get(f"{API}/photos/{i}/{route}")
                if inside:
                    assert resp.status_code == 200, resp.text
                else:
                    assert_error(resp, 404, "file_unavailable")
    with _api(tmp_path / "coll", lib, tiny_encoder, roots=False) as c:  # no roots: what the CLI indexed is served
        assert all(c.get(f"{API}/photos/{i}/original").status_code == 200 for i in by_path.values())


# ---- 2. a file swapped for a symlink to another file of the same size and mtime ------------------------

@pytest.fixture()
def served(tmp_path, tiny_encoder):
    lib = tmp_path / "lib"
    make_library(lib, 4)
    with Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec) as coll:
        index_paths(coll, tiny_encoder, [lib], OPTS)
        refresh_index(coll)
    with _api(tmp_path / "coll", lib, tiny_encoder) as c:
        hit = c.post(f"{API}/search", json={"text": "a photo", "k": 1}).json()["results"][0]
        yield c, hit["id"], Path(hit["paths"][0]), lib


def _same_size_and_mtime(path: Path, photo: Path) -> Path:
    data = bytes(reversed(photo.read_bytes()))  # another file's bytes, same length
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    st = os.stat(photo)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r
    return path


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_swapped_in_symlink_with_same_size_and_mtime_is_refused(served, tmp_path, where):
    c, pid, photo, lib = served
    assert c.get(f"{API}/photos/{pid}/original").content == photo.read_bytes()
    other = _same_size_and_mtime((tmp_path if where == "outside" else lib) / "other" / "x.bin", photo)
    st = os.stat(photo)
    photo.unlink()
    os.symlink(other, photo)
    assert (os.stat(photo).st_size, os.stat(photo).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    for route in ("original", "thumbnail"):
        resp = c.get(f"{API}/photos/{pid}/{route}")
        assert_error(resp, 404, "file_unavailable")
        assert other.read_bytes() not in resp.content


def test_file_replaced_in_place_with_same_size_and_mtime_is_refused(served, tmp_path):
    """No symlink at all: another inode at the same path, same size and mtime, other bytes."""
    c, pid, photo, _ = served
    other = _same_size_and_mtime(tmp_path / "x.bin", photo)
    os.replace(other, photo)
    assert_error(c.get(f"{API}/photos/{pid}/original"), 404, "file_unavailable")


def test_file_restored_as_a_copy_with_the_same_bytes_is_still_served(served, tmp_path):
    """A new inode (restored from a backup, cp -p) holding the indexed bytes: the content hash vouches for it."""
    c, pid, photo, _ = served
    saved = photo.read_bytes()
    copy = tmp_path / "copy.jpg"
    shutil.copy2(photo, copy)
    os.replace(copy, photo)
    resp = c.get(f"{API}/photos/{pid}/original")
    assert resp.status_code == 200 and resp.content == saved
    assert c.get(f"{API}/photos/{pid}/thumbnail").status_code == 200


def test_rows_indexed_before_identities_were_recorded(served, tmp_path, tiny_encoder):
    """Rows from before migration 0007 (NULL identity) are vouched for by content hash; the next run records them."""
    c, pid, photo, lib = served
    coll_dir = tmp_path / "coll"
    with Collection.open(coll_dir) as coll, coll.catalog.session() as s, s.begin():
        for f in s.scalars(select(PhotoFile)):
            f.real_path_bytes = f.device = f.inode = None
    assert c.get(f"{API}/photos/{pid}/original").content == photo.read_bytes()
    saved, st = photo.read_bytes(), os.stat(photo)
    os.replace(_same_size_and_mtime(tmp_path / "x.bin", photo), photo)
    assert_error(c.get(f"{API}/photos/{pid}/original"), 404, "file_unavailable")
    photo.write_bytes(saved)
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))
    with Collection.open(coll_dir) as coll:
        sync = index_paths(coll, tiny_encoder, [lib], OPTS).sync
    assert sync.hashed == 4 and sync.new_photos == 0 and sync.removed_photos == 0  # hashed once to record them
    with Collection.open(coll_dir) as coll, coll.catalog.session() as s:
        rows = list(s.scalars(select(PhotoFile)))
    assert all(f.real_path_bytes and f.inode is not None for f in rows)
    with Collection.open(coll_dir) as coll:
        assert index_paths(coll, tiny_encoder, [lib], OPTS).sync.unchanged == 4
