"""A collection whose index is kept in id-range shards (``photodex reindex --shards N``): the product's
search (Searcher, CLI) gives what the one-file index gives; the writer keeps the layout, rewrites only the
shards that changed and re-splits uneven ranges; a damaged shard is detected and only its range is
scanned exactly until the writer rebuilds it."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from sqlalchemy import select

from indexer.catalog.models import PhotoFile
from indexer.collection import Collection
from indexer.run import index_paths
from retrieval.index import store
from retrieval.index.persistence import IndexFileError
from retrieval.index.sharded import ShardedIndex, shard_of
from retrieval.index.state import index_dir, index_files, index_state
from retrieval.index.store import open_index, refresh_index
from retrieval.index.vector_index import VectorIndex
from retrieval.search.filters import parse_filters
from retrieval.search.searcher import Searcher, SearchOptions
from tests.helpers import OPTS, damage_index_file, exact_search, make_library, queries_near_stored
from ui.demo.world import CLASSES, class_prompt
from ui.cli import main



# ---- the product's search on a sharded collection -------------------------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory, world):
    """The same world collection twice: one index file (the shared world), and (a copy, after
    `reindex --shards 3`) three shards."""
    sharded = tmp_path_factory.mktemp("shard_world") / "sharded"
    shutil.copytree(world.path, sharded)
    assert main(["reindex", "--collection", str(sharded), "--shards", "3", "--json"]) == 0
    return world, sharded


def _same_hits(a, b) -> bool:
    """Same photos, groups and order; scores equal up to float summation order."""
    return ([(h.id, tuple(sorted(h.duplicates)), tuple(h.paths)) for h in a]
            == [(h.id, tuple(sorted(h.duplicates)), tuple(h.paths)) for h in b]
            and np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5))


def test_searcher_on_shards_equals_one_index_with_filters_and_collapse(pair):
    world, sharded_dir = pair
    one, many = world.open(), Collection.open(sharded_dir)
    try:
        state = index_state(many)
        assert state["shards"] == 3 and len(state["files"]) == 3 and "file" not in state
        assert sum(state["counts"]) == state["vectors"] == len(world.truth) and max(state["counts"]) - min(state["counts"]) <= 1
        view_one, view_many = open_index(one), open_index(many)
        assert isinstance(view_one.base, VectorIndex) and isinstance(view_many.base, ShardedIndex)
        assert len(view_many.base.shards) == 3 and view_many.exact_rows == 0
        assert np.array_equal(view_one.ids, view_many.ids)
        a, b = Searcher(one, world.encoder), Searcher(many, world.encoder)
        grouped = 0
        for cls in CLASSES[:4]:
            q = class_prompt(cls)
            for options in (SearchOptions(k=12, collapse=None), SearchOptions(k=12, collapse=0.9),
                            SearchOptions(k=40, collapse=0.8, offset=3),
                            SearchOptions(k=10, collapse=0.9, filters=parse_filters(["path=*/2023/*"])),
                            SearchOptions(k=10, collapse=None, filters=parse_filters(["type=png"]))):
                ha, hb = a.search_text(q, options), b.search_text(q, options)
                assert ha and _same_hits(ha, hb), (cls, options)
                grouped += sum(len(h.duplicates) for h in hb)
            first = a.search_text(q, SearchOptions(k=1, collapse=None))[0].id
            assert _same_hits(a.search_similar(photo_id=first), b.search_similar(photo_id=first))
        assert grouped > 0  # collapse really merged results (through the shards' reconstruct)
    finally:
        one.close()
        many.close()


def test_cli_search_on_shards_equals_one_index(pair, capsys):
    world, sharded_dir = pair
    for flags in ([], ["--filter", "type=jpeg", "--collapse", "0.9"], ["--no-collapse", "-k", "30"]):
        outs = []
        for coll in (world.path, sharded_dir):
            capsys.readouterr()
            assert main(["search", "a photo of a red circle", "--collection", str(coll), "--json", *flags]) == 0
            outs.append(json.loads(capsys.readouterr().out))
        assert outs[0] and len(outs[0]) == len(outs[1]), flags
        for a, b in zip(*outs):  # scores: the same sums in another order (BLAS over other row blocks)
            assert abs(a.pop("score") - b.pop("score")) < 1e-5 and a == b, flags


# ---- the writer: layout kept, only changed shards rewritten, uneven ranges re-split ------------------
@pytest.fixture()
def sharded(tmp_path, tiny_encoder):
    """A 30-photo collection indexed into 3 shards."""
    lib = tmp_path / "lib"
    make_library(lib, 30)
    with Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec) as coll:
        index_paths(coll, tiny_encoder, [lib], OPTS)
        result = refresh_index(coll, shards=3)
    assert result["action"] == "rebuilt" and result["counts"] == [10, 10, 10]
    store.clear_cache()
    return tmp_path / "coll", lib






def _files(coll: Collection) -> set[str]:
    return {p.name for p in index_dir(coll).glob("vectors-*.faiss")}


def test_adds_and_removals_after_sharding_touch_only_their_shards(sharded, tiny_encoder):
    coll_dir, lib = sharded
    with Collection.open(coll_dir) as coll:
        before = index_state(coll)
        first = open_index(coll)
        make_library(lib, 6, start=500)
        index_paths(coll, tiny_encoder, [lib], OPTS)
        new_ids = np.setdiff1d(coll.vector_ids(), first.ids)
        assert len(new_ids) == 6
        result = refresh_index(coll)  # no shards argument: the collection's layout is kept
        assert result["action"] == "updated (+6 -0)" and result["shards"] == 3 and result["counts"] == [10, 10, 16]
        assert (shard_of(new_ids, np.asarray(result["bounds"])) == 2).all()  # larger ids: the last range
        assert result["bounds"] == before["bounds"]
        assert result["files"][:2] == before["files"][:2] and result["files"][2] != before["files"][2]
        assert np.isin(new_ids, VectorIndex.load(index_dir(coll) / result["files"][2]).ids).all()
        # a reader that already searches loads the new version in the background, reusing unchanged shards
        q = queries_near_stored(coll)
        np.testing.assert_array_equal(open_index(coll).search(q, 8)[1], exact_search(coll, q, 8)[1])
        for _ in range(600):
            view = open_index(coll)
            if view.base is not first.base:
                break
            __import__("time").sleep(0.05)
        assert view.exact_rows == 0 and len(view) == 36
        assert view.base.shards[0] is first.base.shards[0] and view.base.shards[2] is not first.base.shards[2]
        np.testing.assert_array_equal(view.search(q, 8)[1], exact_search(coll, q, 8)[1])
        # removing photos from the first range rewrites only that shard
        with coll.catalog.session() as s:
            path_of = dict(s.execute(select(PhotoFile.photo_id, PhotoFile.path)).all())
        gone = first.base.shards[0].ids[:4]
        for pid in gone.tolist():
            os.unlink(path_of[pid])
        index_paths(coll, tiny_encoder, [lib], OPTS)
        assert np.array_equal(np.setdiff1d(first.ids, coll.vector_ids()), gone)
        removed = refresh_index(coll)
        assert removed["action"] == "updated (+0 -4)" and removed["counts"] == [6, 10, 16]
        assert removed["files"][0] != result["files"][0] and removed["files"][1:] == result["files"][1:]
        store.clear_cache()
        _, i = open_index(coll).search(q, 32)
        assert not np.isin(i, gone).any()
        np.testing.assert_array_equal(i[:, :8], exact_search(coll, q, 8)[1])
        # superseded files are pruned: only this version's and the previous one's remain
        assert _files(coll) == set(removed["files"]) | set(result["files"])


def test_a_range_that_outgrows_the_others_is_re_split(sharded, tiny_encoder):
    coll_dir, lib = sharded
    with Collection.open(coll_dir) as coll:
        make_library(lib, 40, start=600)  # the last shard would hold 50 of 70: more than twice its share
        index_paths(coll, tiny_encoder, [lib], OPTS)
        result = refresh_index(coll)
        assert result["action"] == "rebuilt (re-sharded)" and result["shards"] == 3
        assert max(result["counts"]) - min(result["counts"]) <= 1 and sum(result["counts"]) == 70
        q = queries_near_stored(coll)
        store.clear_cache()
        np.testing.assert_array_equal(open_index(coll).search(q, 10)[1], exact_search(coll, q, 10)[1])
        assert refresh_index(coll)["action"] == "up-to-date"




@pytest.mark.parametrize("how", ["truncated", "same-size", "no-sidecar", "missing"])
def test_damaged_shard_is_detected_its_range_searched_exactly_and_rebuilt(sharded, how):
    coll_dir, _ = sharded
    with Collection.open(coll_dir) as coll:
        state = index_state(coll)
        victim = index_dir(coll) / state["files"][1]
        q = queries_near_stored(coll)
        truth_s, truth_i = exact_search(coll, q, 12)
        damage_index_file(victim, how)
        if how != "missing":
            with pytest.raises(IndexFileError):
                VectorIndex.load(victim)
        view = open_index(coll)  # a reader: only the damaged shard's range is scanned exactly
        assert isinstance(view.base, ShardedIndex) and not view.base.complete
        assert view.exact_rows == 10 and len(view) == 30
        assert (shard_of(view.delta_ids, np.asarray(state["bounds"])) == 1).all()
        s, i = view.search(q, 12)
        np.testing.assert_array_equal(i, truth_i)
        np.testing.assert_allclose(s, truth_s, atol=1e-5)
        assert np.abs(s).max() <= 1.0 + 1e-4
        result = refresh_index(coll)  # the writer notices and rebuilds
        assert result["action"] == "rebuilt" and result["counts"] == [10, 10, 10]
        for name in result["files"]:
            VectorIndex.load(index_dir(coll) / name)  # verifies again
        store.clear_cache()
        view = open_index(coll)
        assert view.base.complete and view.exact_rows == 0
        np.testing.assert_array_equal(view.search(q, 12)[1], truth_i)


def test_shard_count_from_the_cli_and_settings_and_back_to_one_file(sharded, monkeypatch, capsys):
    coll_dir, _ = sharded
    monkeypatch.setenv("PHOTODEX_INDEX_SHARDS", "2")
    assert main(["reindex", "--collection", str(coll_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == [15, 15]
    assert main(["reindex", "--collection", str(coll_dir), "--shards", "1", "--json"]) == 0  # the flag wins
    state = json.loads(capsys.readouterr().out)
    assert state["file"] and "files" not in state and state["vectors"] == 30
    monkeypatch.delenv("PHOTODEX_INDEX_SHARDS")
    assert main(["reindex", "--collection", str(coll_dir), "--force", "--json"]) == 0  # one file is kept
    capsys.readouterr()
    with Collection.open(coll_dir) as coll:
        now = index_state(coll)
        assert "files" not in now and _files(coll) == {now["file"], state["file"]}  # old shard files pruned
        assert index_files(now) == [now["file"]]
    for bad in ("0", "x", "5000"):
        with pytest.raises(SystemExit) as exc:
            main(["reindex", "--collection", str(coll_dir), "--shards", bad])
        assert exc.value.code == 2
    monkeypatch.setenv("PHOTODEX_INDEX_SHARDS", "0")
    capsys.readouterr()
    assert main(["reindex", "--collection", str(coll_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "index_shards" in err
