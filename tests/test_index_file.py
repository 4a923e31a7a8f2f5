"""The index file is derived: damage is detected and repaired; readers never build it, never wait, never miss."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from indexer.collection import Collection
from indexer.run import index_paths
from retrieval.index import store
from retrieval.index.choice import flat_spec
from retrieval.index.persistence import IndexFileError
from retrieval.index.store import current_index_file
from retrieval.index.store import open_index, refresh_index
from retrieval.index.vector_index import VectorIndex
from tests.helpers import OPTS, damage_index_file, env_offline, exact_search, make_library, queries_near_stored

K = 5


@pytest.fixture()
def indexed(tmp_path, tiny_encoder):
    """A 30-photo collection with an up-to-date index file."""
    lib = tmp_path / "lib"
    make_library(lib, 30)
    with Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec) as coll:
        index_paths(coll, tiny_encoder, [lib], OPTS)
        refresh_index(coll)
    store.clear_cache()
    return tmp_path / "coll", lib








@pytest.mark.parametrize("how", ["truncated", "same-size", "no-sidecar", "missing"])
def test_damaged_index_is_detected_searched_exactly_and_rebuilt(indexed, how):
    coll_dir, _ = indexed
    with Collection.open(coll_dir) as coll:
        index_file = current_index_file(coll)
        q = queries_near_stored(coll)
        truth_s, truth_i = exact_search(coll, q, K)
        damage_index_file(index_file, how)
        if how != "missing":
            with pytest.raises(IndexFileError):
                VectorIndex.load(index_file)
        view = open_index(coll)  # a reader: never builds, still complete
        assert view.base is None and view.exact_rows == 30
        s, i = view.search(q, K)
        np.testing.assert_array_equal(i, truth_i)
        np.testing.assert_allclose(s, truth_s, atol=1e-5)
        assert np.abs(s).max() <= 1.0 + 1e-4
        assert not index_file.exists() or how in ("truncated", "same-size", "no-sidecar")
        result = refresh_index(coll)  # the writer repairs it
        assert result["action"] == "rebuilt" and result["vectors"] == 30
        VectorIndex.load(current_index_file(coll))  # verifies again
        store.clear_cache()
        view = open_index(coll)
        assert view.base is not None and view.exact_rows == 0
        np.testing.assert_array_equal(view.search(q, K)[1], truth_i)


def test_open_index_is_cached_per_process_until_clear_cache(indexed):
    coll_dir, _ = indexed
    with Collection.open(coll_dir) as coll:
        first = open_index(coll)
        assert open_index(coll) is first  # same index file, same catalog generation: the cached view
        store.clear_cache()
        again = open_index(coll)
        assert again is not first and again.base is not first.base and open_index(coll) is again
        np.testing.assert_array_equal(again.ids, first.ids)


def test_reader_sees_vectors_committed_after_the_index_file(indexed, tiny_encoder):
    coll_dir, lib = indexed
    make_library(lib, 6, start=500)
    with Collection.open(coll_dir) as coll:
        state_before = store.index_state(coll)
        index_paths(coll, tiny_encoder, [lib], OPTS)  # no refresh_index: the file is now stale
        view = open_index(coll)
        assert view.base is not None and view.exact_rows == 6 and len(view) == 36
        ids, vecs = coll.load_vectors(view.delta_ids)
        s, i = view.search(vecs, 1)
        np.testing.assert_array_equal(i[:, 0], ids)  # each new photo finds itself first
        q = queries_near_stored(coll)
        np.testing.assert_array_equal(view.search(q, K)[1], exact_search(coll, q, K)[1])
        assert store.index_state(coll) == state_before  # the reader wrote nothing


def test_reader_never_returns_removed_photos(indexed, tiny_encoder):
    coll_dir, lib = indexed
    victims = sorted(lib.rglob("*.jpg"))[:4]
    with Collection.open(coll_dir) as coll:
        ids_before = coll.vector_ids()
        for v in victims:
            v.unlink()
        index_paths(coll, tiny_encoder, [lib], OPTS)
        gone = np.setdiff1d(ids_before, coll.vector_ids())
        assert len(gone) == 4
        view = open_index(coll)
        _, i = view.search(queries_near_stored(coll), 30)
        assert not np.isin(i, gone).any() and (i >= 0).sum(axis=1).min() == 26


def test_rebuild_keeps_adds_and_removes_made_during_it(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    vi = VectorIndex.build(np.arange(100), x[:100], flat_spec())
    building, proceed = threading.Event(), threading.Event()
    real_build = VectorIndex.build.__func__

    def slow_build(cls, *a, **kw):  # noqa: ANN001
        building.set()
        assert proceed.wait(30)
        return real_build(cls, *a, **kw)

    monkeypatch.setattr(VectorIndex, "build", classmethod(slow_build))
    worker = threading.Thread(target=vi.rebuild)
    worker.start()
    assert building.wait(30)
    vi.add(np.arange(100, 120), x[100:120])  # during the build
    vi.remove(np.arange(0, 5))
    s, i = vi.search(x[100:101], 1)  # searches go on meanwhile
    assert i[0, 0] == 100
    proceed.set()
    worker.join(30)
    assert set(vi.ids.tolist()) == set(range(5, 120))
    _, i = vi.search(x[110:111], 1)
    assert i[0, 0] == 110


def test_searches_during_an_index_run_and_a_forced_rebuild_are_complete(indexed, tiny_encoder):
    coll_dir, lib = indexed
    make_library(lib, 40, start=1000)
    errors: list[BaseException] = []
    latencies: list[float] = []
    short: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        with Collection.open(coll_dir) as coll:
            q = queries_near_stored(coll, 2)
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    view = open_index(coll)
                    _, i = view.search(q, 10)
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)
                    return
                latencies.append(time.perf_counter() - t0)
                short.extend(int(n) for n in (i >= 0).sum(axis=1) if n < 10)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        with Collection.open(coll_dir) as coll:
            index_paths(coll, tiny_encoder, [lib], OPTS)
            refresh_index(coll)
            refresh_index(coll, force_rebuild=True)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert len(latencies) >= 4 and not short
    assert max(latencies) < 5.0  # never blocked behind the writer
    with Collection.open(coll_dir) as coll:
        q = queries_near_stored(coll)
        np.testing.assert_array_equal(open_index(coll).search(q, K)[1], exact_search(coll, q, K)[1])


def test_read_only_collection_can_be_searched(indexed, tmp_path, tiny_clip):
    """As root without CAP_DAC_OVERRIDE/CAP_FOWNER, files owned by nobody and not writable are read-only."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop the capabilities that bypass file permissions")
    coll_dir, lib = indexed
    make_library(lib, 3, start=900)  # vectors committed after the index file: the reader must scan them
    with Collection.open(coll_dir) as coll:
        index_paths(coll, coll_dir and _encoder_for(tiny_clip), [lib], OPTS)
    ro = tmp_path / "ro"
    shutil.copytree(coll_dir, ro)
    for root, dirs, files in os.walk(ro):
        for name in dirs + files + ["."]:
            p = os.path.join(root, name)
            os.chown(p, 65534, 65534)
            os.chmod(p, 0o555 if os.path.isdir(p) else 0o444)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in ro.rglob("*")}
    proc = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-fowner", sys.executable, "-m", "ui.cli",
                           "search", "a photo", "--collection", str(ro), "-k", "40", "--no-collapse", "--json"],
                          env=env_offline(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(__import__("json").loads(proc.stdout)) == 33
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in ro.rglob("*")} == before


def _encoder_for(tiny_clip):
    from indexer.encode.encoders import load_encoder

    return load_encoder("local-dir:" + str(tiny_clip[0]), device="cpu")


def test_a_new_index_version_loads_in_the_background_while_searches_stay_complete(indexed, tiny_encoder):
    coll_dir, lib = indexed
    with Collection.open(coll_dir) as coll:
        first = open_index(coll)
        assert first.base is not None and first.exact_rows == 0
        make_library(lib, 5, start=700)
        index_paths(coll, tiny_encoder, [lib], OPTS)
        refresh_index(coll)  # the writer switches to a new version (35 vectors)
        interim = open_index(coll)  # returns at once: the old version + an exact scan of the 5 new vectors
        q = queries_near_stored(coll)
        truth = exact_search(coll, q, K)[1]
        if interim.base is first.base:
            assert interim.exact_rows == 5 and len(interim) == 35
        np.testing.assert_array_equal(interim.search(q, K)[1], truth)
        deadline = time.monotonic() + 30
        while (view := open_index(coll)).base is first.base:
            assert time.monotonic() < deadline, "the new version never arrived"
            time.sleep(0.05)
        assert view.exact_rows == 0 and len(view.base) == 35
        np.testing.assert_array_equal(view.search(q, K)[1], truth)
