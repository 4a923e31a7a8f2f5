"""Search on the synthetic world with the trained tiny CLIP: meaning, filters, pages, thresholds, collapse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.core.errors import EncoderMismatchError
from indexer.run import RunOptions, index_paths
from retrieval.search.filters import FilterError, parse_filters
from retrieval.search.query import QueryError
from retrieval.search.searcher import Searcher, SearchOptions
from ui.demo.world import CLASSES, class_prompt, generate_samples


@pytest.fixture(scope="module")
def world(large_world):
    return large_world


@pytest.fixture()
def searcher(world):
    coll = world.open()
    yield Searcher(coll, world.encoder)
    coll.close()


def _cls(world, hit) -> str:
    return world.sample_of(hit.paths).class_name


def test_text_query_precision_at_10(world, searcher):
    precisions = {}
    for cls in CLASSES:
        hits = searcher.search_text(class_prompt(cls), SearchOptions(k=10, collapse=None))
        assert len(hits) == 10
        precisions[cls] = np.mean([_cls(world, h) == cls for h in hits])
        assert all(hits[i].score >= hits[i + 1].score for i in range(9))
    assert min(precisions.values()) >= 0.9, precisions


def test_image_query_returns_its_own_class_first(world, searcher):
    for path, sample in list(world.truth.items())[:12]:
        if sample.unsafe:
            continue
        by_path = searcher.search_similar(path=path, options=SearchOptions(k=3, collapse=None))
        assert by_path[0].paths == [path] and by_path[0].score > 0.99  # the stored vector is reused
        by_id = searcher.search_similar(photo_id=by_path[0].id, options=SearchOptions(k=1, collapse=None))
        assert by_id[0].id != by_path[0].id and _cls(world, by_id[0]) == sample.class_name
        upload = Image.open(path).convert("RGB")
        import io

        buf = io.BytesIO()
        upload.save(buf, "PNG")
        by_bytes = searcher.search_similar(data=buf.getvalue(), options=SearchOptions(k=1, collapse=None))
        assert _cls(world, by_bytes[0]) == sample.class_name


def test_filters_pagination_and_min_score(world, searcher):
    q = class_prompt("blue square")
    hits = searcher.search_text(q, SearchOptions(k=10, collapse=None, filters=parse_filters(["path=*/2023/*"])))
    assert len(hits) == 10 and all("/2023/" in h.paths[0] for h in hits)
    pngs = searcher.search_text(q, SearchOptions(k=8, collapse=None, filters=parse_filters(["type=png"])))
    assert len(pngs) == 8 and all(h.format == "PNG" and h.paths[0].endswith(".png") for h in pngs)
    # a restrictive filter still returns k matches when k exist (here: every photo of 2022 is allowed)
    n_2022 = sum("/2022/" in p for p in world.truth)
    many = searcher.search_text(q, SearchOptions(k=n_2022 + 50, collapse=None,
                                                 filters=parse_filters(["path=*/2022/*"])))
    assert len(many) == n_2022
    top10 = searcher.search_text(q, SearchOptions(k=10, collapse=None))
    page1 = searcher.search_text(q, SearchOptions(k=5, collapse=None))
    page2 = searcher.search_text(q, SearchOptions(k=5, offset=5, collapse=None))
    assert [h.id for h in page1 + page2] == [h.id for h in top10]
    cutoff = top10[4].score
    above = searcher.search_text(q, SearchOptions(k=50, min_score=cutoff, collapse=None))
    assert len(above) >= 5 and all(h.score >= cutoff for h in above)
    assert searcher.search_text(q, SearchOptions(k=5, min_score=1.0)) == []
    with pytest.raises(FilterError):
        parse_filters(["colour=red"])
    with pytest.raises(FilterError, match="date"):
        parse_filters(["after=last tuesday"])
    with pytest.raises(QueryError):
        searcher.search_text("   ")
    with pytest.raises(QueryError):
        searcher.search_text("-red")


def test_query_arithmetic_moves_results(world, searcher):
    plain = searcher.search_text("a photo of a red circle", SearchOptions(k=10, collapse=None))
    moved = searcher.search_text("a photo of a red circle +blue -red", SearchOptions(k=10, collapse=None))
    red = sum(world.sample_of(h.paths).colour == "red" for h in plain)
    red_moved = sum(world.sample_of(h.paths).colour == "red" for h in moved)
    blue_moved = sum(world.sample_of(h.paths).colour == "blue" for h in moved)
    assert red >= 9 and red_moved <= 2 and blue_moved >= 6


def test_near_duplicates_collapse_and_deleted_photos_vanish(tmp_path, world):
    # a photo of this test's own and its near-copy, in a folder beside the shared world's library
    sample = next(s for s in generate_samples(8, 4711) if not s.unsafe)
    more = tmp_path / "more"
    more.mkdir()
    src, near = str(more / "original.jpg"), str(more / "near_copy.jpg")
    sample.image.save(src, quality=92)
    sample.image.save(near, quality=70)  # same picture, different bytes: a near-duplicate, not an exact one
    coll = world.private_copy(tmp_path / "coll")
    roots = [world.library, more]
    index_paths(coll, world.encoder, roots, RunOptions(batch_size=32, workers=0))
    s = Searcher(coll, world.encoder)
    q = class_prompt(sample.class_name)
    every = len(world.truth) + 2  # k: every photo of the collection
    loose = s.search_text(q, SearchOptions(k=every, collapse=None))
    ids = {h.paths[0]: h.id for h in loose}
    collapsed = s.search_text(q, SearchOptions(k=every, collapse=0.97))
    groups = [{h.id, *h.duplicates} for h in collapsed]
    assert len(collapsed) < len(loose)
    assert sum(len(g) for g in groups) == len(loose)  # every result is shown or collapsed into one, once
    assert any({ids[src], ids[near]} <= g for g in groups)  # the near-copy sits in its original's group
    assert all(np.dot(*s.coll.load_vectors(np.array([h.id, d]))[1]) >= 0.97 for h in collapsed for d in h.duplicates)
    # delete the original: it is removed from catalog and index and never returned
    Path(src).unlink()
    index_paths(coll, world.encoder, roots, RunOptions(batch_size=32, workers=0))
    after = s.search_text(q, SearchOptions(k=every, collapse=None))
    assert ids[src] not in {h.id for h in after} and ids[near] in {h.id for h in after}
    coll.close()


def test_search_refuses_another_encoder(world, tiny_encoder):
    coll = world.open()
    with pytest.raises(EncoderMismatchError):
        Searcher(coll, tiny_encoder)
    coll.close()
