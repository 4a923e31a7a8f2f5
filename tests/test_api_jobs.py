"""Index jobs through the API: allow-list, lifecycle with progress, one writer (409), cancel; served files."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from indexer.collection import Collection
from indexer.core.errors import WriterBusyError
from indexer.run import RunOptions, index_paths
from ui.settings import Settings
from retrieval.index.store import refresh_index
from tests.helpers import make_library
from tests.api_support import assert_error
from ui.api.app import create_app
from ui.api.security import create_api_key

API = "/api/v1"


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_encoder):
    """A 6-photo collection indexed with the tiny encoder; its library root; a write key."""
    root = tmp_path_factory.mktemp("api_jobs")
    lib = root / "lib"
    make_library(lib / "first", 6)
    coll = Collection.open_for_encoder(root / "coll", tiny_encoder.spec)
    index_paths(coll, tiny_encoder, [lib / "first"], RunOptions(batch_size=8, workers=0))
    refresh_index(coll)
    key = create_api_key(coll.catalog, "writer", "write")
    coll.close()
    return root, lib, key


def _settings(root: Path, lib: Path) -> Settings:
    return Settings(collection=root / "coll", api_library_roots=[lib], workers=0, batch_size=8)


def _wait(client: TestClient, job_id: str, key: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{API}/index/jobs/{job_id}", headers={"X-API-Key": key}).json()
        if job["status"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_job_lifecycle_progress_and_search_sees_new_photos(small, tiny_encoder):
    root, lib, key = small
    h = {"X-API-Key": key}
    app = create_app(_settings(root, lib), encoder_loader=lambda s: tiny_encoder)
    with TestClient(app) as c:
        before = c.get(f"{API}/readyz").json()["vectors"]
        make_library(lib / "second", 5, start=100)
        started = c.post(f"{API}/index/jobs", json={"paths": [str(lib / "second")]}, headers=h)
        assert started.status_code == 202, started.text
        job = _wait(c, started.json()["id"], key)
        assert job["status"] == "succeeded", job
        assert job["summary"]["encode"]["encoded"] == 5 and job["summary"]["index"]["vectors"] == before + 5
        assert job["phase"] == "index" and job["done"] == job["total"] > 0 and job["finished_at"]
        assert c.get(f"{API}/readyz").json()["vectors"] == before + 5
        hits = c.post(f"{API}/search", json={"text": "a photo", "k": 50, "collapse": None}).json()["results"]
        assert sum("/second/" in h_["paths"][0] for h_ in hits) == 5
        assert started.json()["id"] in [j["id"] for j in c.get(f"{API}/index/jobs").json()]
        assert_error(c.delete(f"{API}/index/jobs/{job['id']}", headers=h), 409, "job_finished")
        assert "photodex_index_jobs_running 0.0" in c.get(f"{API}/metrics").text


@pytest.mark.parametrize("path,status,code", [
    ("/etc", 403, "path_not_allowed"),
    ("{lib}/../../..", 403, "path_not_allowed"),
    ("{lib}/first/../../../etc", 403, "path_not_allowed"),
    ("{lib}/escape", 403, "path_not_allowed"),  # a symlink inside the root pointing outside
    ("relative/folder", 422, "invalid_path"),
    ("{lib}/does-not-exist", 422, "path_not_found"),
])
def test_paths_outside_the_library_roots_are_refused(small, tiny_encoder, path, status, code):
    root, lib, key = small
    if not (lib / "escape").exists():
        os.symlink("/etc", lib / "escape")
    app = create_app(_settings(root, lib), encoder_loader=lambda s: tiny_encoder)
    with TestClient(app) as c:
        resp = c.post(f"{API}/index/jobs", json={"paths": [path.format(lib=lib)]}, headers={"X-API-Key": key})
        assert_error(resp, status, code)
        assert c.get(f"{API}/index/jobs", headers={"X-API-Key": key}).json() == []  # nothing was started


def test_no_library_roots_means_no_index_jobs(small, tiny_encoder):
    root, lib, key = small
    app = create_app(Settings(collection=root / "coll"), encoder_loader=lambda s: tiny_encoder)
    with TestClient(app) as c:
        assert_error(c.post(f"{API}/index/jobs", json={"paths": [str(lib)]}, headers={"X-API-Key": key}),
                     403, "no_library_roots")


def test_one_writer_409_and_cancel(small, tiny_encoder):
    root, lib, key = small
    h = {"X-API-Key": key}
    release = threading.Event()

    def slow_runner(coll, encoder, roots, options, progress, lock):  # index_paths's signature
        assert lock.held
        for i in range(10_000):
            progress("hash", i, 10_000)
            if release.wait(0.01):
                break

    app = create_app(_settings(root, lib), encoder_loader=lambda s: tiny_encoder, index_runner=slow_runner)
    with TestClient(app) as c:
        first = c.post(f"{API}/index/jobs", json={"paths": [str(lib)]}, headers=h)
        assert first.status_code == 202 and first.json()["status"] == "running"
        busy = c.post(f"{API}/index/jobs", json={"paths": [str(lib)]}, headers=h)
        err = assert_error(busy, 409, "writer_busy")
        job_id = first.json()["id"]
        assert f"pid {os.getpid()}" in err["message"]
        # what an HTTP client can do: follow the job that holds the writer, retry after Retry-After (issue 21.8)
        assert f"index job {job_id}" in err["message"] and f"GET {API}/index/jobs/{job_id}" in err["message"]
        hint = err["message"].rsplit("); ", 1)[-1]  # past the holder's own command line, which may hold "--"
        assert "--" not in hint and busy.headers["Retry-After"] == "10"
        assert err["detail"] == {"job_id": job_id, "retry_after_s": 10}
        with Collection.open(root / "coll") as other:  # another process-level writer is refused too
            with pytest.raises(WriterBusyError, match=f"being written by index job {job_id}") as refused:
                other.writer_lock().acquire()
            assert "pass --wait" in str(refused.value)  # the CLI's hint stays the CLI's
        time.sleep(0.1)
        progress = c.get(f"{API}/index/jobs/{first.json()['id']}", headers=h).json()
        assert progress["phase"] == "hash" and progress["total"] == 10_000 and progress["done"] >= 1
        assert c.delete(f"{API}/index/jobs/{first.json()['id']}", headers=h).status_code == 202
        job = _wait(c, first.json()["id"], key)
        assert job["status"] == "cancelled"
    # the lock was released: an outside writer now gets it, and holding it makes the API answer 409
    app = create_app(_settings(root, lib), encoder_loader=lambda s: tiny_encoder)
    with Collection.open(root / "coll") as holder, holder.writer_lock().acquire():
        with TestClient(app) as c:
            busy = c.post(f"{API}/index/jobs", json={"paths": [str(lib)]}, headers=h)
            err = assert_error(busy, 409, "writer_busy")
            assert "--wait" not in err["message"] and "retry when it ends (Retry-After: 10 s)" in err["message"]
            assert busy.headers["Retry-After"] == "10" and err["detail"] == {"job_id": None, "retry_after_s": 10}


def test_original_refuses_a_catalogued_file_swapped_for_a_symlink(small, tiny_encoder, tmp_path):
    root, lib, key = small
    app = create_app(_settings(root, lib), encoder_loader=lambda s: tiny_encoder)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret\n")
    with TestClient(app) as c:
        hit = c.post(f"{API}/search", json={"text": "a photo", "k": 1}).json()["results"][0]
        target = Path(hit["paths"][0])
        assert c.get(f"{API}/photos/{hit['id']}/original").content == target.read_bytes()
        saved = target.read_bytes()
        target.unlink()
        os.symlink(secret, target)
        try:
            for url in (f"/photos/{hit['id']}/original", f"/photos/{hit['id']}/thumbnail"):
                resp = c.get(API + url)
                assert_error(resp, 404, "file_unavailable")
                assert "secret" not in resp.text
        finally:
            target.unlink()
            target.write_bytes(saved)


def test_index_jobs_keep_the_index_in_the_configured_shards(tmp_path, tiny_encoder):
    """PHOTODEX_INDEX_SHARDS applies to API index jobs as it does to `photodex index`."""
    from retrieval.index.state import index_state, shard_layout

    lib = tmp_path / "lib"
    make_library(lib / "first", 6)
    with Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec) as coll:
        index_paths(coll, tiny_encoder, [lib / "first"], RunOptions(batch_size=8, workers=0))
        refresh_index(coll)
        assert shard_layout(index_state(coll)) is None  # one file
        key = create_api_key(coll.catalog, "writer", "write")
    settings = Settings(collection=tmp_path / "coll", api_library_roots=[lib], workers=0, batch_size=8, index_shards=3)
    with TestClient(create_app(settings, encoder_loader=lambda s: tiny_encoder)) as c:
        make_library(lib / "second", 4, start=50)
        started = c.post(f"{API}/index/jobs", json={"paths": [str(lib / "second")]}, headers={"X-API-Key": key})
        assert started.status_code == 202, started.text
        assert _wait(c, started.json()["id"], key)["status"] == "succeeded"
        hits = c.post(f"{API}/search", json={"text": "a photo", "k": 20, "collapse": None}).json()["results"]
        assert len(hits) == 10
    with Collection.open(tmp_path / "coll") as coll:
        files, _ = shard_layout(index_state(coll))
        assert len(files) == 3
