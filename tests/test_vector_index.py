"""Tests for retrieval.vector_index / retrieval.index_choice on clustered normalised vectors."""

from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pytest

from retrieval.index.choice import IndexSpec, SearchParams, choose_index_spec, flat_spec, hnsw_spec, ivf_spec
from retrieval.index.recall import exact_knn, measure_recall
from retrieval.index.gpu import gpu_available
from retrieval.index.vector_index import VectorIndex

N, DIM, CLUSTERS, K = 20_000, 64, 100, 10

SPECS = {
    "flat": flat_spec(),
    "hnsw_flat": hnsw_spec(storage="Flat", ef_search=64),
    "hnsw_sq8": hnsw_spec(storage="SQ8", ef_search=64),
    "ivf_sq8": ivf_spec(N, nlist=128, nprobe=16),
}


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(1234)
    centres = _normalise(rng.standard_normal((CLUSTERS, DIM)))
    labels = rng.integers(0, CLUSTERS, N)
    x = _normalise(centres[labels] + 0.1 * rng.standard_normal((N, DIM)))
    ids = (np.arange(N, dtype=np.int64) * 7 + 1000)[rng.permutation(N)]
    rows = rng.choice(N, 100, replace=False)
    q = _normalise(x[rows] + 0.03 * rng.standard_normal((100, DIM)))
    return {"x": x, "ids": ids, "q": q, "labels": labels}


@pytest.fixture(scope="module")
def built(data) -> dict[str, VectorIndex]:
    return {name: VectorIndex.build(data["ids"], data["x"], spec) for name, spec in SPECS.items()}


def test_flat_equals_bruteforce(data, built):
    scores, ids = built["flat"].search(data["q"], K)
    s = data["q"] @ data["x"].T
    order = np.argsort(-s, axis=1)[:, :K]
    np.testing.assert_array_equal(ids, data["ids"][order])
    np.testing.assert_allclose(scores, np.take_along_axis(s, order, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["hnsw_flat", "hnsw_sq8", "ivf_sq8"])
def test_approx_recall(data, built, name):
    r = measure_recall(built[name], data["x"], data["q"], K, ids=data["ids"])
    assert r >= 0.9, f"{name} recall@10 {r:.3f}"


def test_measure_recall_on_raw_faiss_index(data):
    index = faiss.IndexFlatIP(DIM)
    index.add(data["x"])
    assert measure_recall(index, data["x"], data["q"], K) == 1.0


def test_choose_index_spec():
    assert choose_index_spec(5_000, 512).kind == "flat"
    assert choose_index_spec(45_000, 512).kind == "flat"
    assert choose_index_spec(200_000, 512).kind == "ivf"  # measured better than HNSW at 1M (bench/results)
    for n in (1_000_000, 4_000_000, 50_000_000):
        spec = choose_index_spec(n, 512)
        assert spec.kind in ("hnsw", "ivf") and not spec.uses_pq
    big = choose_index_spec(50_000_000, 512)
    assert big.kind == "ivf" and 4 <= big.params["nlist"] / np.sqrt(50_000_000) <= 16
    assert big.params["train_size"] <= 40 * big.params["nlist"] < 50_000_000 // 10  # bounded sample
    budget = choose_index_spec(1_000_000, 512, memory_budget_bytes=1_000_000_000)
    assert budget.factory.endswith("SQ8")
    forced = choose_index_spec(10_000_000, 512, memory_budget_bytes=2_000_000_000)
    assert forced.uses_pq  # only when memory forces it
    spec = choose_index_spec(1_000_000, 512)
    assert IndexSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["factory"] == spec.factory


@pytest.mark.parametrize("name", list(SPECS))
def test_add_remove(data, name):
    x, ids = data["x"][:4000], data["ids"][:4000]
    vi = VectorIndex.build(ids, x, SPECS[name] if name != "ivf_sq8" else ivf_spec(4000, nlist=32, nprobe=8))
    gone = ids[:500]
    assert vi.remove(np.concatenate([gone, [-5]])) == 500
    assert len(vi) == 3500
    _, found = vi.search(x[:500], K)  # queries == removed vectors
    assert not np.isin(found, gone).any()
    assert (found >= 0).all()
    _, found = vi.search(x[:500], K, allowed_ids=ids[:600])  # filter mixing removed and live
    assert np.isin(found[found >= 0], ids[500:600]).all()
    # re-add a removed id with a new vector (upsert) and replace a live one
    new = _normalise(data["x"][-2:])
    vi.add(np.array([gone[0], ids[1000]]), new)
    assert len(vi) == 3501
    _, found = vi.search(new, 1)
    assert found[:, 0].tolist() == [gone[0], ids[1000]]
    _, found = vi.search(np.concatenate([x[1000:1001], new]), K)
    assert all(len(set(row)) == K for row in found.tolist())  # replaced entries never duplicate
    if name.startswith("hnsw"):
        assert vi.num_tombstones == 501 and not vi.needs_rebuild
        vi.remove(ids[600:2000])
        assert vi.needs_rebuild
        vi.rebuild()
        assert vi.num_tombstones == 0 and len(vi) == vi.ntotal == 3501 - 1400
        _, found = vi.search(x[600:700], K)
        assert not np.isin(found, ids[600:2000]).any()


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("exact_path", [True, False])
def test_allowed_ids_filter(data, built, name, exact_path):
    vi = built[name]
    saved = vi.exact_subset_max, vi.exact_subset_fraction
    if not exact_path:  # force the in-faiss IDSelector path even for a tiny allowed set
        vi.exact_subset_max, vi.exact_subset_fraction = 0, 0.0
    try:
        # restrictive: 60 photos from a single cluster the queries are mostly not near
        members = np.flatnonzero(data["labels"] == data["labels"][0])[:60]
        allowed = data["ids"][members]
        scores, found = vi.search(data["q"], K, allowed_ids=allowed)
        assert np.isin(found, allowed).all() and (found >= 0).all()
        assert np.all(np.diff(scores, axis=1) <= 1e-6)
        # fewer than k allowed: pad with -1 / -inf
        scores, found = vi.search(data["q"][:5], K, allowed_ids=allowed[:3])
        assert (found[:, 3:] == -1).all() and np.isinf(scores[:, 3:]).all()
        assert np.isin(found[:, :3], allowed[:3]).all()
        # broad filter (half the collection) through the selector
        half = data["ids"][::2]
        _, found = vi.search(data["q"], K, allowed_ids=half)
        assert np.isin(found, half).all() and (found >= 0).all()
    finally:
        vi.exact_subset_max, vi.exact_subset_fraction = saved


def test_filtered_search_matches_exact_on_subset(data, built):
    allowed = data["ids"][:3000]
    _, truth = exact_knn(data["x"][:3000], data["q"], K, allowed)
    _, found = built["flat"].search(data["q"], K, allowed_ids=allowed)
    np.testing.assert_array_equal(found, truth)
    lookup_calls = []

    def lookup(ids: np.ndarray) -> np.ndarray:
        lookup_calls.append(len(ids))
        pos = {int(i): r for r, i in enumerate(data["ids"])}
        return data["x"][[pos[int(i)] for i in ids]]

    _, found = built["ivf_sq8"].search(data["q"], K, allowed_ids=allowed[:200], vectors_lookup=lookup)
    _, truth = exact_knn(data["x"][:200], data["q"], K, allowed[:200])
    np.testing.assert_array_equal(found, truth)
    assert lookup_calls == [200]


def test_per_call_params_do_not_mutate(data, built):
    ivf, hnsw = built["ivf_sq8"], built["hnsw_flat"]
    inner = faiss.downcast_index(hnsw._index.index)
    before = (ivf._index.nprobe, inner.hnsw.efSearch)
    lo = measure_recall(ivf, data["x"], data["q"], K, ids=data["ids"], params=SearchParams(nprobe=1))
    hi = measure_recall(ivf, data["x"], data["q"], K, ids=data["ids"], params=SearchParams(nprobe=128))
    assert hi > lo
    hnsw.search(data["q"], K, params=SearchParams(ef_search=512))
    assert (ivf._index.nprobe, inner.hnsw.efSearch) == before


@pytest.mark.parametrize("name", list(SPECS))
def test_save_load_roundtrip_mmap(tmp_path, data, name):
    vi = VectorIndex.build(data["ids"][:5000], data["x"][:5000],
                           SPECS[name] if name != "ivf_sq8" else ivf_spec(5000, nlist=32, nprobe=8))
    vi.remove(data["ids"][:100])
    path = tmp_path / "sub" / "photos.faiss"
    vi.save(path)
    vi.save(path)  # overwrite in place
    assert sorted(os.listdir(path.parent)) == ["photos.faiss", "photos.faiss.json"]
    meta = json.loads(VectorIndex.sidecar_path(path).read_text())
    assert IndexSpec.from_dict(meta["spec"]) == vi.spec and meta["count"] == 4900
    loaded = VectorIndex.load(path, mmap=True)
    assert loaded.is_mmapped and len(loaded) == 4900 and loaded.spec == vi.spec
    for kw in ({"allowed_ids": data["ids"][:1000]}, {}):
        s1, i1 = vi.search(data["q"], K, **kw)
        s2, i2 = loaded.search(data["q"], K, **kw)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)
    loaded.add(data["ids"][:1], data["x"][:1])  # copies into RAM first, never writes the file
    assert not loaded.is_mmapped and len(loaded) == 4901
    assert VectorIndex.load(path, mmap=False).search(data["q"], K)[1].tolist() == i1.tolist()


def test_atomic_save_failure_leaves_no_temp(tmp_path, data, built, monkeypatch):
    path = tmp_path / "idx.faiss"
    built["flat"].save(path)
    before = path.read_bytes()

    def boom(index, fname):
        open(fname, "wb").write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(RuntimeError):
        built["flat"].save(path)
    assert sorted(os.listdir(tmp_path)) == ["idx.faiss", "idx.faiss.json"]
    assert path.read_bytes() == before


def test_to_gpu_falls_back_on_cpu(built, caplog):
    if gpu_available()[0]:
        pytest.skip("GPU present")
    with caplog.at_level("INFO"):
        assert built["flat"].to_gpu() is False
    assert "using CPU FAISS" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available()[0], reason="no GPU FAISS")
@pytest.mark.parametrize("name", ["flat", "ivf_sq8"])
def test_gpu_search_matches_cpu(data, name):  # pragma: no cover - GPU only
    vi = VectorIndex.build(data["ids"], data["x"], SPECS[name])
    _, cpu = vi.search(data["q"], K)
    assert vi.to_gpu()
    _, gpu = vi.search(data["q"], K)
    assert (cpu == gpu).mean() > 0.95


def test_live_members_equals_intersect1d_on_random_sets() -> None:
    """The filter intersection used by every filtered search (binary search into the sorted live ids)."""
    from retrieval.index.selectors import live_members

    rng = np.random.default_rng(7)
    for _ in range(300):
        live = np.unique(rng.integers(0, 500, rng.integers(0, 200))).astype(np.int64)
        ids = rng.integers(-5, 600, rng.integers(0, 100)).astype(np.int64)  # unsorted, repeats, misses
        got = live_members(ids, live)
        assert np.array_equal(got, np.intersect1d(ids, live)) and got.dtype == np.int64
