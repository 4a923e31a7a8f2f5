"""Sharded search (one index per photo-id range, merged top-k) equals one exact index over everything."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.core.vectors import l2_normalize
from retrieval.index.choice import flat_spec, ivf_spec
from retrieval.index.recall import exact_knn, recall_at_k
from retrieval.index.sharded import ShardedIndex, merge_top_k, shard_bounds, shard_of
from retrieval.index.store import SearchableIndex
from retrieval.index.vector_index import VectorIndex
from retrieval.search.collapse import collapse_groups

DIM = 32


def _data(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1, 10 * n), n, replace=False)).astype(np.int64)  # gaps, like a catalog
    vecs = l2_normalize(rng.normal(size=(n, DIM)).astype(np.float32))
    queries = l2_normalize(rng.normal(size=(25, DIM)).astype(np.float32))
    return ids, vecs, queries


def _same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    """Same scores and same ids; photos with exactly equal scores may come in either order."""
    def canonical(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return np.stack([ids[r][np.lexsort((ids[r], -scores[r]))] for r in range(len(ids))])

    return np.allclose(a[0], b[0], atol=1e-6) and np.array_equal(canonical(*a), canonical(*b))


def test_bounds_cover_every_id_in_contiguous_ranges_of_equal_count():
    ids, _, _ = _data()
    bounds = shard_bounds(ids, 4)
    assert len(bounds) == 5 and bounds[0] == 0 and bounds[-1] == ids.max() + 1
    counts = np.bincount(shard_of(ids, bounds), minlength=4)
    assert counts.sum() == len(ids) and counts.max() - counts.min() <= 1
    assert shard_of(np.array([ids.max() + 1000]), bounds)[0] == 3  # later photos go to the last range
    assert len(shard_bounds(ids[:3], 8)) - 1 <= 4  # more shards than ids: no duplicate edges


@pytest.mark.parametrize("n_shards", [1, 3, 7])
def test_sharded_equals_unsharded_exact_search(n_shards):
    ids, vecs, queries = _data()
    single = VectorIndex.build(ids, vecs, flat_spec())
    sharded = ShardedIndex.build(ids, vecs, n_shards, flat_spec())
    assert len(sharded) == len(ids) and np.array_equal(sharded.ids, ids)
    truth_s, truth_i = exact_knn(vecs, queries, 10, ids)
    for k in (1, 10, 600):  # k larger than a shard
        assert _same(single.search(queries, k), sharded.search(queries, k))
    assert _same(sharded.search(queries, 10), (truth_s, truth_i))
    # filters: the allowed set is split by range; some shards get none of it
    rng = np.random.default_rng(1)
    for allowed in (rng.choice(ids, 40, replace=False), ids[:5], ids[ids % 2 == 0], np.array([ids[-1]])):
        s2, i2 = sharded.search(queries, 10, allowed_ids=allowed)
        assert _same(single.search(queries, 10, allowed_ids=allowed), (s2, i2))
        assert np.isin(i2[i2 >= 0], allowed).all()
    sharded.close()


def test_searchable_view_filters_and_collapse_unchanged_on_a_sharded_base():
    """A ShardedIndex as the base of the readers' view: deltas, removed photos, filters, collapse."""
    ids, vecs, queries = _data(2000)
    base_ids, base_vecs = ids[:1800], vecs[:1800]
    delta_ids, delta_vecs, gone = ids[1800:], vecs[1800:], ids[[3, 500, 1700]]
    views = [SearchableIndex(DIM, base, delta_ids, delta_vecs, gone, 1)
             for base in (VectorIndex.build(base_ids, base_vecs, flat_spec()),
                          ShardedIndex.build(base_ids, base_vecs, 4, flat_spec()))]
    allowed = np.setdiff1d(ids[::3], gone[:1])
    assert np.array_equal(views[0].ids, views[1].ids)
    for kw in ({}, {"allowed_ids": allowed}):
        (s1, i1), (s2, i2) = (v.search(queries, 20, **kw) for v in views)
        assert _same((s1, i1), (s2, i2))
        assert not np.isin(i2, gone).any()
    hits = i2[0][i2[0] >= 0]
    assert np.allclose(views[0].vectors(hits), views[1].vectors(hits), atol=1e-6)
    assert collapse_groups(hits, views[0].vectors(hits), 0.3) == collapse_groups(hits, views[1].vectors(hits), 0.3)


def test_ivf_shards_share_a_quantizer_and_equal_one_ivf_and_reload(tmp_path):
    ids, vecs, queries = _data(6000)
    spec = ivf_spec(len(ids), nlist=32, nprobe=4)  # approximate: 4 of 32 lists probed
    single = VectorIndex.build(ids, vecs, spec)
    sharded = ShardedIndex.build(ids, vecs, 3, spec)  # same training sample, one quantizer for all shards
    assert _same(single.search(queries, 10), sharded.search(queries, 10))
    allowed = ids[::5]
    assert _same(single.search(queries, 10, allowed_ids=allowed), sharded.search(queries, 10, allowed_ids=allowed))
    sharded.save(tmp_path / "shards")
    loaded = ShardedIndex.load(tmp_path / "shards")
    s2, i2 = loaded.search(queries, 10)
    assert _same(sharded.search(queries, 10), (s2, i2))
    _, truth = exact_knn(vecs, queries, 10, ids)
    assert recall_at_k(i2, truth) < 1.0  # it is approximate, and sharding kept it exactly as approximate


def test_merge_pads_and_ignores_padding():
    parts = [(np.array([[0.9, -np.inf]], np.float32), np.array([[7, -1]])),
             (np.array([[0.95, 0.1]], np.float32), np.array([[3, 4]]))]
    scores, ids = merge_top_k(parts, 1, 4)
    assert ids.tolist() == [[3, 7, 4, -1]] and np.isneginf(scores[0, 3])
