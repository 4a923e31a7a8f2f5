"""Answering end to end on the synthetic world: tiny CLIP retrieval + tiny VLM, and the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from answerer.budget import ImageBudget
from answerer.rag import Answerer, AskOptions, load_photo
from answerer.rerank import rerank
from answerer.vlm import VLM
from indexer.core.errors import InputError
from retrieval.search.searcher import Searcher, SearchOptions
from ui.demo.world import CLASSES, generate_samples
from ui.demo.collection import WorldCollection

RELEVANT = 0.85  # tiny-CLIP cosine: world concepts score > 0.9, unknown ones ("a bicycle") < 0.75


@pytest.fixture(scope="module")
def world(large_world) -> WorldCollection:
    return large_world


@pytest.fixture(scope="module")
def answerer(world, vlm):
    coll = world.open()
    yield Answerer(Searcher(coll, world.encoder), vlm)
    coll.close()


def truth_of(world: WorldCollection, answerer: Answerer, photo_id: int):
    (path,) = answerer.searcher._hydrate([(photo_id, 1.0, [])])[0].paths
    return world.truth[path]


def test_skull_question_cites_only_skull_photos_and_finds_most(world, answerer):
    skulls = sum(s.unsafe for s in world.truth.values())
    assert skulls >= 8
    result = answerer.ask("is there a skull in any of the photos?",
                          AskOptions(k=30, collapse=None, min_relevance=RELEVANT, strategy="auto"))
    assert result.strategy == "per-photo"  # the tiny LLaVA is a single-image model
    assert result.answer.startswith("Yes")
    cited = [c.id for c in result.citations]
    assert set(cited) <= set(result.shown)
    precision = sum(truth_of(world, answerer, i).unsafe for i in cited) / len(cited)
    recall = sum(truth_of(world, answerer, i).unsafe for i in cited) / skulls
    assert precision >= 0.9 and recall >= 0.7, (precision, recall)
    kept = {p.id for p in result.per_photo if p.supports}
    assert set(cited) == kept  # exactly the photos whose own answer was yes
    assert all(p.answer == "no" for p in result.per_photo if p.id not in kept)
    assert all(c.paths and Path(c.paths[0]).is_file() for c in result.citations)


def test_rag_answers_reach_the_vlms_single_image_accuracy(world, answerer, vlm):
    """Per-photo answers inside RAG are as good as the VLM on single held-out images."""
    held = [s for s in generate_samples(60, 4242) if not s.unsafe]
    items = [([s.image], f"is there a {c}?") for s in held for c in (s.class_name, CLASSES[(CLASSES.index(s.class_name) + 4) % 12])]
    truth = [a for s in held for a in ("yes", "no")]
    single = sum(a == t for a, t in zip(vlm.answer_batch(items, batch_size=16), truth)) / len(truth)
    right = total = yes_answers = 0
    for cls in CLASSES:
        result = answerer.ask(f"is there a {cls}?", AskOptions(k=8, collapse=None, min_relevance=None))
        yes_answers += result.answer.startswith("Yes")
        for p in result.per_photo:
            right += (p.answer == "yes") == (truth_of(world, answerer, p.id).class_name == cls)
            total += 1
        assert {c.id for c in result.citations} <= set(result.shown)
    rag = right / total
    assert rag >= single - 0.05, (rag, single)
    assert yes_answers >= 11  # every class is in the library


def test_nothing_relevant_says_so_without_calling_the_vlm(answerer, monkeypatch):
    calls = []
    monkeypatch.setattr(answerer.vlm, "generate", lambda *a, **k: calls.append(a) or ["yes"])
    result = answerer.ask("is there a bicycle?", AskOptions(k=5, min_relevance=RELEVANT))
    assert result.nothing_relevant and result.strategy == "none"
    assert result.answer.startswith("Nothing in the collection looks relevant") and "not guessing" in result.answer
    assert not result.citations and not result.shown and not calls
    assert result.retrieved and all(d.reason == "below relevance threshold" for d in result.dropped)
    answered = answerer.ask("is there a skull?", AskOptions(k=5, min_relevance=RELEVANT))  # same threshold
    assert not answered.nothing_relevant and calls


def test_joint_strategy_drops_what_does_not_fit_and_streams_the_same_text(answerer):
    opts = AskOptions(k=20, collapse=None, min_relevance=None, strategy="joint", max_new_tokens=8,
                      budget=ImageBudget(max_images=20))
    result = answerer.ask("is there a red circle?", opts)
    assert result.strategy == "joint"
    reasons = [d.reason for d in result.dropped]
    assert reasons and set(reasons) == {"context"}  # 20 x (16 image + ~14 intro) tokens > 256 positions
    assert len(result.shown) + len(reasons) == 20 and len(result.shown) >= 5
    assert result.answer  # generated, no crash
    stream = answerer.ask_stream("is there a red circle?", opts)
    text = "".join(stream)
    assert text.strip() == result.answer == stream.result.answer
    few = answerer.ask("is there a red circle?", AskOptions(k=8, collapse=None, min_relevance=None,
                                                            strategy="joint", budget=ImageBudget(max_images=3)))
    assert len(few.shown) == 3 and [d.reason for d in few.dropped] == ["max_images"] * 5


class CitingVLM(VLM):
    """The tiny VLM with a scripted reply (it cannot write ids): cites the first two photos it was
    shown and one it never saw; the ids come from the prompt it was really given."""

    def prepare(self, requests, budget=None):
        self.last_content = requests[0].content
        return super().prepare(requests, budget)

    def generate(self, prepared, max_new_tokens, min_new_tokens=0, streamer=None):
        self.check_fits(prepared, max_new_tokens)
        import re

        ids = [int(m) for item in self.last_content if item["type"] == "text"
               for m in re.findall(r"Photo #(\d+) ", item["text"])]
        return [f"Yes, photo {ids[0]} shows it [#{ids[1]}], as does [#{self.invented}]."]


def test_joint_citations_are_checked_against_the_photos_shown(world, answerer, world_tiny_vlm_dir):
    citing = CitingVLM(str(world_tiny_vlm_dir), device="cpu")
    citing.invented = 100_000
    joint = Answerer(answerer.searcher, citing)
    result = joint.ask("is there a blue square?", AskOptions(k=6, collapse=None, min_relevance=None,
                                                             strategy="joint"))
    assert [c.id for c in result.citations] == result.shown[:2]
    assert result.invented == [100_000]  # dropped from the citations and reported
    assert "[#100000]" in result.answer
    texts = [i["text"] for i in citing.last_content if i["type"] == "text"]
    images = [i for i in citing.last_content if i["type"] == "image"]
    assert len(images) == len(result.shown) == 6
    for pid, intro in zip(result.shown, texts):
        hit = answerer.searcher._hydrate([(pid, 1.0, [])])[0]
        folder = "/".join(Path(hit.paths[0]).parent.parts[-2:])
        assert intro.startswith(f"Photo #{pid} (") and f"folder {folder}" in intro
    assert "blue square" in texts[-1] and "[#ID]" in texts[-1]


def test_filters_and_unreadable_photos(world, answerer):
    result = answerer.ask("is there a skull?", AskOptions(k=5, min_relevance=None, collapse=None,
                                                          filters=_filters("path=*garden*")))
    assert result.retrieved and all("/garden/" in r.path for r in result.retrieved)
    broken = {result.retrieved[0].id}

    def loader(hit, side):
        if hit.id in broken:
            raise InputError(f"photo #{hit.id} cannot be read: corrupt")
        return load_photo(hit, side)

    flaky = Answerer(answerer.searcher, answerer.vlm, image_loader=loader)
    again = flaky.ask("is there a skull?", AskOptions(k=5, min_relevance=None, collapse=None,
                                                      filters=_filters("path=*garden*")))
    assert [d.id for d in again.dropped if d.reason.startswith("unreadable")] == list(broken)
    assert not broken & set(again.shown)


def _filters(*items: str):
    from retrieval.search.filters import parse_filters

    return parse_filters(list(items))


def test_single_photo_questions(world, answerer):
    ids = [h.id for h in answerer.searcher.search_text("a photo of a blue square", SearchOptions(k=10, collapse=None))]
    right = 0
    for pid in ids:
        r = answerer.ask_photo(pid, "what colour is the object?")
        assert r.strategy == "single" and [c.id for c in r.citations] == [pid]
        right += r.answer == truth_of(world, answerer, pid).colour
    assert right >= 8
    stream = answerer.ask_photo(ids[0], "what shape is the object?", stream=True)
    assert "".join(stream).strip() == stream.result.answer == answerer.ask_photo(ids[0], "what shape is the object?").answer
    with pytest.raises(InputError, match="not in the collection"):
        answerer.ask_photo(10**9, "what colour is the object?")


def test_bad_questions_and_empty_collection(answerer, world, tmp_path):
    from indexer.collection import Collection

    with pytest.raises(InputError, match="empty"):
        answerer.ask("   ")
    with pytest.raises(InputError, match="-k must be at least 1"):
        answerer.ask("is there a skull?", AskOptions(k=0))
    empty = Collection.open_for_encoder(tmp_path / "empty", world.encoder.spec)
    with empty, pytest.raises(InputError, match="no indexed photos"):
        Answerer(Searcher(empty, world.encoder), answerer.vlm).ask("is there a skull?")


def test_rerank_keeps_candidates_and_scores_with_the_vlm(world, answerer):
    ranked = rerank(answerer.searcher, answerer.vlm, "a red circle", SearchOptions(k=10, collapse=None),
                    rerank_k=30, template="is there {query}?")
    assert len(ranked) == 10 and all(0 <= h.p_yes <= 1 for h in ranked)
    assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)
    top = [truth_of(world, answerer, h.id).class_name for h in ranked]
    assert top.count("red circle") >= 9
    with pytest.raises(InputError, match="query"):
        rerank(answerer.searcher, answerer.vlm, "x", template="no placeholder")


# --------------------------------------------------------------------------- CLI (in-process)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from ui.cli.app import main

    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_ask_json_stream_caption_and_errors(world, world_tiny_vlm_dir, capsys, tmp_path):
    common = ["--collection", str(world.path), "--vlm", str(world_tiny_vlm_dir), "--device", "cpu"]
    rc, out, err = _cli(capsys, "ask", "is there a skull?", "-k", "10", "--min-relevance", str(RELEVANT),
                        "--json", *common)
    assert rc == 0, err
    data = json.loads(out)
    assert {"answer", "citations", "retrieved", "dropped", "strategy", "timings"} <= set(data)
    assert data["citations"] and all(c["paths"] for c in data["citations"])
    assert {c["id"] for c in data["citations"]} <= {r["id"] for r in data["retrieved"]}

    rc, out, _ = _cli(capsys, "ask", "is there a skull?", "-k", "10", "--min-relevance", str(RELEVANT),
                      "--stream", *common)
    assert rc == 0 and out.splitlines()[0] == data["answer"]

    image = next(p for p, s in world.truth.items() if s.class_name == "green triangle" and s.count == 1)
    rc, out, _ = _cli(capsys, "caption", image, "--prompt", "what shape is the object?", "--json", *common)
    assert rc == 0 and json.loads(out)["caption"] == "triangle"

    rc, out, _ = _cli(capsys, "rerank", "a red circle", "-k", "5", "--rerank-k", "10",
                      "--rerank-template", "is there {query}?", "--json", *common)
    assert rc == 0 and len(json.loads(out)) == 5

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    for args, message in [(("ask", "  "), "question is empty"), (("ask", "is there a skull?", "-k", "0"), "-k must"),
                          (("caption", str(broken)), "cannot read image"),
                          (("ask", "is there a skull?", "--vlm", str(tmp_path)), "could not load VLM")]:
        rc, _, err = _cli(capsys, args[0], args[1], *common, *args[2:])  # the last --vlm wins
        assert rc == 2 and message in err and "Traceback" not in err, (args, err)
