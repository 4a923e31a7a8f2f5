"""``POST /ask`` on the synthetic world with the tiny VLM: JSON equals the Answerer, the event stream's text equals
the JSON answer, VLM work is serialised off the event loop, a VLM that cannot load is 503, bad input is a 4xx."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from answerer.budget import ImageBudget
from answerer.rag import Answerer, AskOptions
from answerer.vlm import shared_vlm
from ui.settings import Settings
from retrieval.search.filters import parse_filters
from retrieval.search.searcher import Searcher, SearchOptions
from tests.api_support import assert_error
from ui.api.routers.ask import trimmed, wants_event_stream

API = "/api/v1"
SSE = {"Accept": "text/event-stream"}
RELEVANT = 0.85  # tiny-CLIP cosine: world concepts score > 0.9, unknown ones < 0.75
TOKENS = 8


@pytest.fixture(scope="module")
def world(large_world):
    return large_world


@pytest.fixture(scope="module")
def settings(world, world_tiny_vlm_dir) -> Settings:
    return Settings(collection=world.path, vlm=str(world_tiny_vlm_dir), device="cpu", vlm_max_new_tokens=TOKENS)


@pytest.fixture(scope="module")
def vlm(settings):
    """The process-wide VLM the API uses (same key), loaded once."""
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return shared_vlm(settings.vlm, settings.device, settings.precision).load()


@pytest.fixture(scope="module")
def client(world, settings, vlm, api_client):
    with api_client(settings, world.encoder) as c:
        yield c


@pytest.fixture(scope="module")
def answerer(world, vlm):
    coll = world.open()
    yield Answerer(Searcher(coll, world.encoder), vlm)
    coll.close()


def _options(settings: Settings, **kw) -> AskOptions:
    budget = ImageBudget(settings.vlm_max_images, settings.vlm_max_image_side, settings.vlm_max_image_tokens)
    base = {"strategy": settings.vlm_strategy, "min_relevance": settings.vlm_min_relevance,
            "max_new_tokens": settings.vlm_max_new_tokens, "budget": budget}
    return AskOptions(**{**base, **kw})


def _untimed(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "timings"}


def _events(resp) -> list[tuple[str, object]]:
    """(event, decoded data) of a text/event-stream body."""
    out = []
    for block in resp.text.split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if not lines:
            continue
        event = next((ln[len("event: "):] for ln in lines if ln.startswith("event: ")), "message")
        data = "\n".join(ln[len("data: "):] for ln in lines if ln.startswith("data: "))
        out.append((event, json.loads(data)))
    return out


def _stream(client, body) -> tuple[str, dict, list]:
    resp = client.post(f"{API}/ask", json=body, headers=SSE)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = _events(resp)
    assert [e for e, _ in events[:-1]] == ["token"] * (len(events) - 1) and events[-1][0] == "answer"
    return "".join(d for _, d in events[:-1]), events[-1][1], events


def test_json_answer_equals_the_answerer(client, answerer, settings):
    body = {"question": "is there a skull in any of the photos?", "k": 10, "collapse": None,
            "min_relevance": RELEVANT, "strategy": "per-photo"}
    resp = client.post(f"{API}/ask", json=body)
    assert resp.status_code == 200, resp.text
    got = resp.json()
    direct = answerer.ask(body["question"], _options(settings, k=10, collapse=None, min_relevance=RELEVANT,
                                                     strategy="per-photo")).to_dict()
    assert _untimed(got) == _untimed(direct) and set(got["timings"]) == set(direct["timings"])
    assert got["answer"].startswith("Yes") and got["citations"]
    assert {c["id"] for c in got["citations"]} <= set(got["shown"]) and not got["invented"]
    filtered = {"question": "is there a skull?", "k": 4, "min_relevance": None, "filters": {"path": "*/2023/*"}}
    got = client.post(f"{API}/ask", json=filtered).json()
    direct = answerer.ask("is there a skull?", _options(settings, k=4, min_relevance=None,
                                                        filters=parse_filters(["path=*/2023/*"]))).to_dict()
    assert _untimed(got) == _untimed(direct) and all("/2023/" in r["path"] for r in got["retrieved"])


@pytest.mark.parametrize("body", [
    {"question": "is there a red circle?", "k": 6, "collapse": None, "min_relevance": None, "strategy": "joint"},
    {"question": "is there a blue square?", "k": 5, "min_relevance": RELEVANT, "strategy": "per-photo"},
    {"question": "is there a bicycle?", "k": 5, "min_relevance": RELEVANT},  # nothing relevant: says so
], ids=["joint-token-stream", "per-photo", "nothing-relevant"])
def test_streamed_text_equals_the_json_answer(client, body):
    plain = client.post(f"{API}/ask", json=body).json()
    text, final, _ = _stream(client, body)
    assert text == final["answer"] == plain["answer"] and text
    assert _untimed(final) == _untimed(plain)  # citations, dropped, shown, ... in the final event
    if "bicycle" in body["question"]:
        assert final["nothing_relevant"] and final["strategy"] == "none" and not final["citations"]


def test_every_generated_chunk_is_its_own_event_and_whitespace_is_trimmed(client, monkeypatch):
    """The tiny VLM answers in one token; split what it streams into characters padded with whitespace."""
    from answerer import rag

    real = rag.stream_generate

    def chopped(*args, **kwargs):
        for chunk in real(*args, **kwargs):
            yield " "
            yield from chunk
            yield "\n"

    monkeypatch.setattr(rag, "stream_generate", chopped)
    body = {"question": "is there a red circle?", "k": 4, "collapse": None, "min_relevance": None, "strategy": "joint"}
    plain = client.post(f"{API}/ask", json=body).json()
    text, final, events = _stream(client, body)
    assert text == final["answer"] == plain["answer"]
    tokens = [d for e, d in events if e == "token"]
    assert len(tokens) == len("".join(text.split())) and all(t.strip() for t in tokens)  # a chunk each, none blank


def test_question_about_one_photo(client, answerer, settings):
    pid = answerer.searcher.search_text("a photo of a blue square", SearchOptions(k=1))[0].id
    body = {"question": "what colour is the object?", "photo_id": pid}
    got = client.post(f"{API}/ask", json=body)
    assert got.status_code == 200, got.text
    direct = answerer.ask_photo(pid, body["question"], _options(settings)).to_dict()
    assert _untimed(got.json()) == _untimed(direct) and got.json()["strategy"] == "single"
    assert [c["id"] for c in got.json()["citations"]] == [pid]
    text, final, _ = _stream(client, body)
    assert text == final["answer"] == got.json()["answer"]
    assert_error(client.post(f"{API}/ask", json={**body, "photo_id": 99999999}), 404, "not_found")
    assert_error(client.post(f"{API}/ask", json={**body, "photo_id": 99999999}, headers=SSE), 404, "not_found")


def test_vlm_work_is_serialised_and_off_the_event_loop(client, vlm, monkeypatch):
    busy, seen, lock = [0], {"max": 0, "on_loop": 0, "calls": 0}, threading.Lock()

    def track(fn):
        def wrapped(*a, **k):
            try:
                asyncio.get_running_loop()
                seen["on_loop"] += 1
            except RuntimeError:
                pass
            with lock:
                busy[0] += 1
                seen["max"] = max(seen["max"], busy[0])
                seen["calls"] += 1
            try:
                time.sleep(0.02)  # widen the window in which an overlap would show
                return fn(*a, **k)
            finally:
                with lock:
                    busy[0] -= 1
        return wrapped

    monkeypatch.setattr(vlm, "prepare", track(vlm.prepare))
    monkeypatch.setattr(vlm.model, "generate", track(vlm.model.generate))
    bodies = [({"question": q, "k": 3, "min_relevance": None, "strategy": s}, h)
              for q, s, h in (("is there a red circle?", "joint", SSE), ("is there a skull?", "per-photo", {}),
                              ("is there a blue square?", "joint", {}), ("is there a skull?", "per-photo", SSE))]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda bh: client.post(f"{API}/ask", json=bh[0], headers=bh[1]), bodies))
    assert [r.status_code for r in results] == [200] * 4
    assert seen["calls"] >= 8 and seen["max"] == 1 and seen["on_loop"] == 0


def test_a_vlm_that_cannot_load_is_503_with_how_to(world, tmp_path, api_client):
    for source in (str(tmp_path / "no-such-vlm"), "someorg/not-cached-vlm"):
        settings = Settings(collection=world.path, vlm=source, device="cpu")
        with api_client(settings, world.encoder) as c:
            for headers in ({}, SSE):
                err = assert_error(c.post(f"{API}/ask", json={"question": "is there a skull?"}, headers=headers),
                                   503, "vlm_unavailable")
                assert "PHOTODEX_VLM" in err["message"] and "local folder" in err["message"]
                assert "--" not in err["message"]  # no CLI flag (--vlm) for an HTTP client
            assert_error(c.post(f"{API}/ask", json={"question": "x", "k": 0}), 422)  # checked before loading
            assert c.post(f"{API}/search", json={"text": "a skull"}).status_code == 200  # the rest still serves


BAD = [
    ("empty question", {"question": ""}, 422, "validation_error"),
    ("blank question", {"question": "   "}, 422, "invalid_input"),
    ("k=0", {"question": "a?", "k": 0}, 422, "validation_error"),
    ("k too big", {"question": "a?", "k": 10_000}, 422, "validation_error"),
    ("unknown strategy", {"question": "a?", "strategy": "both"}, 422, "validation_error"),
    ("unknown filter", {"question": "a?", "filters": {"colour": "red"}}, 422, "validation_error"),
    ("bad date", {"question": "a?", "filters": {"taken_after": "last tuesday"}}, 422, "invalid_input"),
    ("photo and filters", {"question": "a?", "photo_id": 1, "filters": {"path": "*"}}, 422, "validation_error"),
    ("photo and k", {"question": "a?", "photo_id": 1, "k": 3}, 422, "validation_error"),
    ("unknown field", {"question": "a?", "vlm": "/etc"}, 422, "validation_error"),
    ("max_new_tokens 0", {"question": "a?", "max_new_tokens": 0}, 422, "validation_error"),
    ("not an object", [1, 2], 422, "validation_error"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "event-stream"])
@pytest.mark.parametrize("name,body,status,code", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_in_the_error_shape(client, name, body, status, code, stream):
    assert_error(client.post(f"{API}/ask", json=body, headers=SSE if stream else {}), status, code)


def test_bad_json_and_empty_collection(client, world, tmp_path, api_client):
    assert_error(client.post(f"{API}/ask", content=b"{nope", headers={"content-type": "application/json"}), 400,
                 "invalid_json")
    from indexer.collection import Collection

    Collection.open_for_encoder(tmp_path / "empty", world.encoder.spec).close()
    settings = Settings(collection=tmp_path / "empty", vlm=client.app.state.settings.vlm, device="cpu")
    with api_client(settings, world.encoder) as c:
        for headers in ({}, SSE):
            err = assert_error(c.post(f"{API}/ask", json={"question": "is there a skull?"}, headers=headers), 422,
                               "invalid_input")
            assert "no indexed photos" in err["message"] and "POST /api/v1/index/jobs" in err["message"]
            assert "photodex index" not in err["message"]  # the CLI's hint is the CLI's


def test_accept_negotiation_and_trimming():
    assert wants_event_stream("text/event-stream") and wants_event_stream("application/json;q=0.5, text/event-stream")
    assert not wants_event_stream(None) and not wants_event_stream("application/json")
    assert not wants_event_stream("*/*") and not wants_event_stream("text/event-stream;q=0")
    assert not wants_event_stream("text/event-stream;q=0.2, application/json")
    for chunks in (["  Yes", ", a ", "skull ", " [#3]  ", "\n"], ["", " ", "a"], [" \n"], ["x"], []):
        assert "".join(trimmed(chunks)) == "".join(chunks).strip()
        assert all(trimmed(chunks))  # no empty events


def test_openapi_documents_ask_with_named_schemas_and_the_event_stream(client):
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/api/v1/ask"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/AskRequest")
    ok = op["responses"]["200"]["content"]
    assert ok["application/json"]["schema"]["$ref"].endswith("/AskResponse") and "text/event-stream" in ok
    assert {"503", "422", "404"} <= set(op["responses"])
    named = {"AskRequest", "AskResponse", "CitationOut", "DroppedOut", "RetrievedOut", "PhotoAnswerOut"}
    assert named <= set(doc["components"]["schemas"])


def test_a_quarantined_photo_is_refused_unless_moderation_is_given(client, answerer, settings):
    from indexer.catalog.models import Tag

    coll = answerer.searcher.coll
    pid = answerer.searcher.search_text("a photo of a red circle", SearchOptions(k=1))[0].id
    with coll.catalog.session() as s, s.begin():
        s.add(Tag(photo_id=pid, taxonomy="moderation", label="quarantine", score=1.0, manual=True))
    try:
        body = {"question": "what colour is the object?", "photo_id": pid}
        for headers in ({}, SSE):
            err = assert_error(client.post(f"{API}/ask", json=body, headers=headers), 422, "invalid_input")
            assert "quarantined or blocked" in err["message"] and '"moderation": "any"' in err["message"]
            assert "--filter" not in err["message"]
        got = client.post(f"{API}/ask", json={**body, "moderation": "any"})
        assert got.status_code == 200, got.text
        direct = answerer.ask_photo(pid, body["question"],
                                    _options(settings, filters=parse_filters(["moderation=any"]))).to_dict()
        assert _untimed(got.json()) == _untimed(direct)
        text, final, _ = _stream(client, {**body, "moderation": "quarantine"})
        assert text == final["answer"] == got.json()["answer"]
        assert_error(client.post(f"{API}/ask", json={"question": "is there a skull?", "moderation": "any"}), 422)
    finally:
        with coll.catalog.session() as s, s.begin():
            s.query(Tag).filter(Tag.photo_id == pid, Tag.taxonomy == "moderation").delete()


def test_search_with_caption_weight_is_hybrid(client, answerer):
    from datetime import datetime

    from indexer.catalog.models import PhotoCaption

    coll = answerer.searcher.coll
    ranked = answerer.searcher.search_text("a photo of a green triangle", SearchOptions(k=500, collapse=None))
    last = ranked[-1].id
    with coll.catalog.session() as s, s.begin():
        s.add(PhotoCaption(photo_id=last, caption="a green triangle", model="test", created_at=datetime.now()))
    try:
        body = {"text": "a photo of a green triangle", "k": 3, "collapse": None}
        plain = client.post(f"{API}/search", json=body).json()["results"]
        assert last not in [h["id"] for h in plain] and plain[0]["caption_score"] is None
        hybrid = client.post(f"{API}/search", json={**body, "caption_weight": 3.0}).json()["results"]
        assert hybrid[0]["id"] == last and hybrid[0]["caption"] == "a green triangle"
        assert hybrid[0]["score"] == pytest.approx(hybrid[0]["clip_score"] + 3.0 * hybrid[0]["caption_score"])
        assert [h["id"] for h in hybrid[1:]] == [h["id"] for h in plain[:2]]  # no other photo has a caption
        assert_error(client.post(f"{API}/search", json={**body, "caption_weight": -1}), 422)
    finally:
        with coll.catalog.session() as s, s.begin():
            s.delete(s.get(PhotoCaption, last))
