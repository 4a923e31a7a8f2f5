"""Stored VLM captions (``photodex caption --all``) and hybrid text search over them, on the synthetic world."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from answerer.captions import CaptionOptions, caption_collection
from answerer.rag import Answerer, AskOptions, HiddenPhotoError
from indexer.catalog.models import PhotoCaption, Tag
from indexer.core.errors import InputError, WriterBusyError
from retrieval.search.captions import CaptionIndex, caption_matches, tokenize
from retrieval.search.filters import parse_filters
from retrieval.search.searcher import Searcher, SearchOptions
from tests.helpers import LARGE_WORLD, cli, env_offline, make_library
from ui.demo.world import CLASSES
from ui.demo.collection import WorldCollection, build_world_collection

POSITION = "is the object on the left or the right?"  # the tiny VLM answers "left" / "right"


@pytest.fixture(scope="module")
def world(tmp_path_factory, world_encoder) -> WorldCollection:
    """A world of this module's own, like ``large_world``: the captioning run here damages a photo file."""
    return build_world_collection(tmp_path_factory.mktemp("caption_world"), n=LARGE_WORLD[0], seed=LARGE_WORLD[1],
                                  encoder=world_encoder)


@pytest.fixture(scope="module")
def coll(world):
    c = world.open()
    yield c
    c.close()


@pytest.fixture(scope="module")
def searcher(world, coll) -> Searcher:
    return Searcher(coll, world.encoder)


def _path_ids(coll) -> dict[str, int]:
    from indexer.catalog.models import PhotoFile

    with coll.catalog.session() as s:
        return {p: int(i) for i, p in s.execute(select(PhotoFile.photo_id, PhotoFile.path))}


def _stored(coll) -> dict[int, tuple[str, str]]:
    with coll.catalog.session() as s:
        return {int(p): (c, m) for p, c, m in s.execute(select(PhotoCaption.photo_id, PhotoCaption.caption,
                                                               PhotoCaption.model))}


def _quarantine(coll, pid: int) -> None:
    with coll.catalog.session() as s, s.begin():
        s.add(Tag(photo_id=pid, taxonomy="moderation", label="quarantine", score=1.0, manual=True))


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def captioned(world, coll, vlm):
    """The world captioned with the position prompt, after a run killed at its first commit, one corrupt
    file and one quarantined photo; returns what each run reported."""
    ids = _path_ids(coll)
    broken_path, quarantined_path = sorted(ids)[3], sorted(ids)[7]
    Path(broken_path).write_bytes(b"\xff\xd8\xff definitely not a JPEG")
    _quarantine(coll, ids[quarantined_path])
    options = CaptionOptions(prompt=POSITION, batch_size=16, max_new_tokens=4)

    def kill_after_first_batch(phase: str, done: int, total: int) -> None:
        if done > 0:
            raise Killed

    with pytest.raises(Killed):
        caption_collection(coll, vlm, options, progress=kill_after_first_batch)
    after_kill = _stored(coll)
    resumed = caption_collection(coll, vlm, options)
    again = caption_collection(coll, vlm, options)
    return {"ids": ids, "broken": ids[broken_path], "quarantined": ids[quarantined_path], "after_kill": after_kill,
            "resumed": resumed, "again": again, "stored": _stored(coll)}


def test_caption_all_is_resumable_skips_bad_and_hidden_photos(world, coll, vlm, captioned):
    after_kill, resumed, again, stored = (captioned[k] for k in ("after_kill", "resumed", "again", "stored"))
    n = len(world.truth)
    assert len(after_kill) in (15, 16)  # the first batch was committed before the kill (16 minus a broken one)
    assert resumed.candidates == n and resumed.hidden == 1
    assert resumed.already_captioned == len(after_kill)  # went on where it stopped
    assert [f.id for f in resumed.failed] == [captioned["broken"]] and resumed.failed[0].reason
    assert resumed.captioned == n - 2 - len(after_kill)
    assert len(stored) == n - 2 and captioned["broken"] not in stored and captioned["quarantined"] not in stored
    assert {m for _, m in stored.values()} == {vlm.model_id_or_path}
    assert again.captioned == 0 and again.already_captioned == n - 2  # nothing twice
    # captions are the VLM's answers: mostly the true position of single-object photos
    singles = [(stored[captioned["ids"][p]][0], s.position) for p, s in world.truth.items()
               if s.position is not None and captioned["ids"][p] in stored]
    assert sum(c == pos for c, pos in singles) / len(singles) >= 0.8
    with coll.writer_lock().acquire():  # every run released the writer lock, the killed one too
        pass


def test_caption_all_overwrite_filters_and_writer_lock(coll, vlm, captioned):
    path_glob = parse_filters(["path=*/2023/*"])
    subset = caption_collection(coll, vlm, CaptionOptions(prompt="what colour is the object?", batch_size=32,
                                                          max_new_tokens=4, filters=path_glob))
    assert subset.candidates > 0 and subset.captioned == 0  # same model: skipped
    assert subset.already_captioned + subset.hidden + len(subset.failed) == subset.candidates
    before = _stored(coll)
    over = caption_collection(coll, vlm, CaptionOptions(prompt="what colour is the object?", batch_size=32,
                                                        max_new_tokens=4, filters=path_glob, overwrite=True))
    after = _stored(coll)
    changed = {i for i in after if after[i] != before[i]}
    assert over.captioned == subset.candidates - subset.hidden - len(over.failed) and len(changed) == over.captioned
    assert all(after[i][0] in ("red", "green", "blue", "yellow", "white") for i in changed)
    for i in changed:  # put the position captions back for the search tests
        with coll.catalog.session() as s, s.begin():
            s.merge(PhotoCaption(photo_id=i, caption=before[i][0], model=before[i][1], created_at=datetime.now()))
    with coll.writer_lock().acquire(), pytest.raises(WriterBusyError, match="being written"):
        caption_collection(coll, vlm, CaptionOptions(prompt=POSITION))
    with pytest.raises(InputError, match="prompt is empty"):
        caption_collection(coll, vlm, CaptionOptions(prompt="  "))


# --------------------------------------------------------------------------- the caption match score


def test_bm25_match_is_normalised_and_ignores_terms_no_caption_has():
    index = CaptionIndex.build([(1, "three red circles"), (2, "a red square"), (3, "blue"), (4, "red red red")])
    assert tokenize("Three RED circles, on the left!") == ["three", "red", "circle", "on", "the", "left"]
    ids, scores = index.scores("red circle on the beach")  # "on", "the", "beach": in no caption, left out
    assert ids[0] == 1 and list(ids) == [1, 4, 2] and np.all((scores > 0) & (scores <= 1))
    assert index.scores("blue")[1].tolist() == pytest.approx([1.0])  # every answerable term, average length
    assert index.scores("bicycle")[0].size == 0


# --------------------------------------------------------------------------- hybrid search


def _r_precision(world, searcher, weight: float | None) -> float:
    """Mean over "a {class} on the {side}" queries of the share of the top R that are right (R = how many are)."""
    relevant: dict[tuple[str, str], int] = {}
    for s in world.truth.values():
        if s.position is not None and s.class_name in CLASSES:
            relevant[(s.class_name, s.position)] = relevant.get((s.class_name, s.position), 0) + 1
    right = total = 0
    for (cls, side), r in sorted(relevant.items()):
        if r < 2:
            continue
        opts = SearchOptions(k=r, collapse=None)
        q = f"a {cls} on the {side}"
        hits = searcher.search_text(q, opts) if weight is None else searcher.search_hybrid(q, opts, weight)
        right += sum(world.truth[h.paths[0]].class_name == cls and world.truth[h.paths[0]].position == side
                     for h in hits)
        total += r
    return right / total


def test_captions_that_answer_the_query_rank_their_photos_higher(world, searcher, captioned):
    """Tiny CLIP barely knows left from right; the VLM's position captions do. Its cosines within a class are
    compressed into ~0.05, so a small weight matters."""
    clip = _r_precision(world, searcher, None)
    assert _r_precision(world, searcher, 0.0) == pytest.approx(clip)  # weight 0: CLIP's ranking exactly
    hybrid = _r_precision(world, searcher, 0.02)
    assert hybrid >= clip + 0.03, (clip, hybrid)
    hits = searcher.search_hybrid("a red circle on the left", SearchOptions(k=10, collapse=None), 0.1)
    assert all(h.score == pytest.approx(h.clip_score + 0.1 * h.caption_score) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    matched = [h.caption == "left" for h in hits]
    assert matched == sorted(matched, reverse=True)  # captioned matches first (CLIP spread < weight here)


def test_a_caption_match_enters_even_if_clip_did_not_retrieve_it(coll, searcher, captioned):
    query = "a photo of a blue square"
    clip_ids = [h.id for h in searcher.search_text(query, SearchOptions(k=300, collapse=None))]
    outsider = clip_ids[-1]  # CLIP's very last photo for this query
    old = _stored(coll).get(outsider)
    with coll.catalog.session() as s, s.begin():
        s.merge(PhotoCaption(photo_id=outsider, caption="blue", model="test", created_at=datetime.now()))
    try:  # the one caption with "blue" (the others say "left" / "right"), as long as the average caption
        hits = searcher.search_hybrid(query, SearchOptions(k=5, collapse=None), caption_weight=2.0)
        assert hits[0].id == outsider
        assert hits[0].caption_score == pytest.approx(1.0) and hits[0].caption == "blue"
        assert hits[0].score == pytest.approx(hits[0].clip_score + 2.0) and hits[0].clip_score < hits[1].clip_score
    finally:
        with coll.catalog.session() as s, s.begin():
            if old is None:
                s.delete(s.get(PhotoCaption, outsider))
            else:
                s.merge(PhotoCaption(photo_id=outsider, caption=old[0], model=old[1], created_at=datetime.now()))


def test_hybrid_search_keeps_filters_and_moderation(coll, vlm, searcher, captioned):
    hidden = captioned["quarantined"]
    shown = caption_collection(coll, vlm, CaptionOptions(prompt=POSITION, batch_size=16, max_new_tokens=4,
                                                         filters=parse_filters(["moderation=any"])))
    assert shown.captioned == 1 and hidden in _stored(coll)  # moderation=any: the quarantined photo too
    word = _stored(coll)[hidden][0]
    everything = SearchOptions(k=300, collapse=None)
    assert hidden not in [h.id for h in searcher.search_hybrid(word, everything, 5.0)]
    assert hidden in caption_matches(coll, word)[0]  # its caption does match
    anyway = SearchOptions(k=300, collapse=None, filters=parse_filters(["moderation=any"]))
    assert hidden in [h.id for h in searcher.search_hybrid(word, anyway, 5.0)]
    garden = searcher.search_hybrid("left", SearchOptions(k=50, collapse=None, filters=parse_filters(["path=*/2023/*"])),
                                    1.0)
    assert garden and all("/2023/" in h.paths[0] for h in garden)
    above = searcher.search_hybrid("left", SearchOptions(k=300, min_score=1.0, collapse=None), 1.0)
    assert above and all(h.score >= 1.0 and h.caption == "left" for h in above)  # min_score: on the hybrid score
    for bad in (-0.1, float("nan"), 11.0):
        with pytest.raises(InputError, match="caption weight"):
            searcher.search_hybrid("left", SearchOptions(k=5), bad)


# --------------------------------------------------------------------------- moderation of single photos


def test_ask_and_caption_refuse_a_quarantined_photo_unless_asked(world, coll, searcher, vlm, captioned, capsys,
                                                                world_tiny_vlm_dir):
    from ui.cli.app import main

    hidden = captioned["quarantined"]
    answerer = Answerer(searcher, vlm)
    with pytest.raises(HiddenPhotoError, match="quarantined or blocked"):
        answerer.ask_photo(hidden, "what colour is the object?")
    ok = answerer.ask_photo(hidden, "what colour is the object?",
                            AskOptions(filters=parse_filters(["moderation=any"])))
    assert ok.answer and [c.id for c in ok.citations] == [hidden]
    common = ["--collection", str(world.path), "--vlm", str(world_tiny_vlm_dir), "--device", "cpu"]
    for args in (["ask", "what colour is the object?", "--id", str(hidden)], ["caption", "--id", str(hidden)]):
        rc = main([*args, *common])
        err = capsys.readouterr().err
        assert rc == 2 and "quarantined or blocked" in err and "moderation=any" in err and "Traceback" not in err
        rc = main([*args, *common, "--filter", "moderation=any", "--json", "--max-new-tokens", "4"])
        assert rc == 0 and json.loads(capsys.readouterr().out)


# --------------------------------------------------------------------------- CLI


def test_cli_caption_all_and_search_captions(world, coll, captioned, capsys, world_tiny_vlm_dir):
    from ui.cli.app import main

    common = ["--collection", str(world.path), "--vlm", str(world_tiny_vlm_dir), "--device", "cpu"]
    rc = main(["caption", "--all", "--prompt", POSITION, "--batch-size", "32", "--json", *common])
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads(out)
    assert summary["captioned"] == 0 and summary["hidden"] == 1
    assert summary["already_captioned"] == summary["candidates"] - 1 - len(summary["failed"])
    assert summary["model"] == str(world_tiny_vlm_dir) and summary["failed"][0]["id"] == captioned["broken"]
    rc = main(["search", "a red circle on the left", "--captions", "--caption-weight", "0.05", "-k", "5", "--json",
               "--collection", str(world.path)])
    hits = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(hits) == 5
    assert all(h["score"] == pytest.approx(h["clip_score"] + 0.05 * h["caption_score"]) for h in hits)
    for args, message in [(["caption", "--all", "--id", "1"], "one of"), (["caption", "--overwrite", "--id", "1"],
                                                                           "go with --all"),
                          (["caption", "--all", "--batch-size", "0"], "must be >= 1")]:
        rc = main([*args, *common])
        assert rc == 2 and message in capsys.readouterr().err
    rc = main(["search", "left", "--caption-weight", "-1", "--collection", str(world.path)])
    assert rc == 2 and "caption weight" in capsys.readouterr().err


PROBE = """
import json, sys
from ui.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def test_hybrid_search_stays_on_the_torch_free_text_path(tmp_path, world_tiny_clip_dir):
    make_library(tmp_path / "lib", 12)
    coll_dir = tmp_path / "coll"
    cli("index", str(tmp_path / "lib"), "--collection", str(coll_dir), "--model", f"local-dir:{world_tiny_clip_dir}",
        "--workers", "0", "--json")
    from indexer.collection import Collection

    with Collection.open(coll_dir) as c, c.catalog.session() as s, s.begin():
        first = min(c.vector_ids().tolist())
        s.add(PhotoCaption(photo_id=first, caption="a zebra crossing", model="test", created_at=datetime.now()))
        assert s.scalar(select(func.count()).select_from(PhotoCaption)) == 1
    proc = subprocess.run([sys.executable, "-c", PROBE, "search", "zebra", "--captions", "--caption-weight", "2",
                           "--collection", str(coll_dir), "--json", "-k", "3"],
                          env=env_offline(), capture_output=True, text=True, timeout=300)
    info = json.loads(proc.stderr.strip().splitlines()[-1])
    assert info["rc"] == 0 and not info["torch"], proc.stderr
    hits = json.loads(proc.stdout)
    assert hits[0]["id"] == first and hits[0]["caption"] == "a zebra crossing" and hits[0]["caption_score"] == 1.0
