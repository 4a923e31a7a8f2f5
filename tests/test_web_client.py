"""The web UI's API client against the real app (TestClient, lifespan running) on the synthetic world,
its pure helpers, and the Streamlit pages through ``AppTest`` with that client behind them."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from indexer.catalog.models import PhotoFile
from indexer.collection import Collection
from ui.settings import Settings
from tests.api_support import png_bytes
from tests.helpers import WORLD, env_offline, make_library
from ui.demo.world import UNSAFE_CONCEPT, class_prompt
from ui.api.ask_schemas import AskResponse
from ui.api.schemas import SearchFiltersIn, SearchHitOut
from ui.api.security import create_api_key
from ui.web import logic
from ui.web.client import ApiError, NotAvailable, PhotodexClient, filter_items, iter_sse

TEMPLATES = ["a photo of a {}", "a picture of a {}", "an image of a {}"]


@pytest.fixture(scope="module")
def world(world_of, tmp_path_factory):
    """A copy of the shared world: these tests store keys, policies, decisions and new photos in it."""
    return world_of(*WORLD).copy(tmp_path_factory.mktemp("web_client") / "collection")


@pytest.fixture(scope="module")
def more(tmp_path_factory) -> Path:
    """A second library root, for photos these tests add (the shared world's library stays as it is)."""
    return tmp_path_factory.mktemp("web_client_more")


@pytest.fixture(scope="module")
def write_key(world):
    with Collection.open(world.path) as coll:
        return create_api_key(coll.catalog, "web-write", "write")


@pytest.fixture(scope="module")
def http(world, more, world_tiny_vlm_dir, api_client):
    settings = Settings(collection=world.path, api_library_roots=[world.library, more], vlm=str(world_tiny_vlm_dir),
                        vlm_max_new_tokens=12, vlm_min_relevance=-1.0)
    with api_client(settings, world.encoder) as c:
        yield c


@pytest.fixture()
def api(http):
    return PhotodexClient(http)


@pytest.fixture()
def writer(http, write_key):
    """The same app, the write key sent with every request."""
    return PhotodexClient(http, write_key)


@pytest.fixture(scope="module")
def labels(world):
    with world.open() as coll, coll.catalog.session() as s:
        rows = s.execute(select(PhotoFile.photo_id, PhotoFile.path)).all()
    unsafe = {int(pid): world.truth[path].unsafe for pid, path in rows}
    return sorted(i for i, u in unsafe.items() if u), sorted(i for i, u in unsafe.items() if not u)


# ---- search, photos, classify ------------------------------------------------------------------
def test_search_photos_and_thumbnails(api, world):
    assert api.health().status == "ok" and api.ready().vectors == 160
    resp = api.search(class_prompt("red circle"), k=6, collapse=None)
    assert resp.count == 6 and [h.score for h in resp.results] == sorted((h.score for h in resp.results), reverse=True)
    assert world.sample_of(resp.results[0].paths).class_name == "red circle"
    top = resp.results[0]
    # min_score and offset go through
    higher = api.search(class_prompt("red circle"), k=6, collapse=None, min_score=resp.results[2].score)
    assert [h.id for h in higher.results] == [h.id for h in resp.results[:3]]
    assert [h.id for h in api.search(class_prompt("red circle"), k=3, offset=3, collapse=None).results] == \
        [h.id for h in resp.results[3:6]]
    thumb = Image.open(io.BytesIO(api.thumbnail(top.id, size=32)))
    assert thumb.format == "JPEG" and max(thumb.size) == 32
    assert api.original(top.id) == Path(top.paths[0]).read_bytes()
    photo = api.photo(top.id)
    assert photo.id == top.id and photo.paths == top.paths
    with pytest.raises(ApiError) as err:
        api.photo(10_000)
    assert err.value.status == 404 and err.value.code == "not_found" and not isinstance(err.value, NotAvailable)


def test_similar_image_search_and_filters(api, world):
    first = api.search(class_prompt("blue square"), k=1, collapse=None).results[0]
    similar = api.similar(first.id, k=5, collapse=None)
    assert similar.count == 5 and first.id not in {h.id for h in similar.results}
    by_upload = api.search_image(Path(first.paths[0]).read_bytes(), "q.png", k=3, collapse=None)
    assert by_upload.results[0].id == first.id and by_upload.results[0].score > 0.99
    # typed filters reach the form and query routes as KEY=VALUE items
    folder = first.paths[0].rsplit("/", 1)[0]
    only = SearchFiltersIn(path=folder + "/*")
    for resp in (api.similar(first.id, k=50, collapse=None, filters=only),
                 api.search_image(Path(first.paths[0]).read_bytes(), k=50, collapse=None, filters=only),
                 api.search("a photo", k=50, collapse=None, filters=only)):
        assert resp.results and all(h.paths[0].startswith(folder + "/") for h in resp.results)
    assert api.search("a photo", k=50, filters=SearchFiltersIn(file_type="gif")).results == []


def test_classify_and_tags(api, world):
    hit = api.search(class_prompt("green triangle"), k=1, collapse=None).results[0]
    names = ["red circle", "green triangle", "blue square", "yellow circle"]
    by_id = api.classify(names, photo_id=hit.id, templates="photos", k=2)
    assert by_id.source == f"photo:{hit.id}" and len(by_id.labels) == 2
    assert by_id.labels[0].label == world.sample_of(hit.paths).class_name
    by_upload = api.classify(names, data=Path(hit.paths[0]).read_bytes(), filename="x.png", k=4)
    assert by_upload.source == "upload" and [x.label for x in by_upload.labels][:1] == [by_id.labels[0].label]
    assert api.tags() == []
    with pytest.raises(ApiError) as err:
        api.classify(names, data=b"not an image", filename="x.jpg")
    assert err.value.status in (415, 422)


def test_errors_unreachable_and_unavailable(api):
    assert api.supports("/search", "POST") and api.supports("/ask", "POST") and not api.supports("/search", "GET")
    with pytest.raises(NotAvailable) as err:
        api._send("GET", "/no/such/route")
    assert "not available on this server" in err.value.message
    dead = PhotodexClient.connect("http://127.0.0.1:9", timeout=2)
    with pytest.raises(ApiError) as err:
        dead.health()
    assert err.value.status == 0 and err.value.code == "unreachable"
    assert not dead.supports("/search", "POST")


# ---- moderation --------------------------------------------------------------------------------
def test_moderation_preview_apply_and_calibrate(api, writer, labels):
    unsafe, safe = labels
    assert unsafe and safe
    body = {"name": "web", "concepts": [{"name": UNSAFE_CONCEPT, "prompts": [UNSAFE_CONCEPT], "templates": TEMPLATES,
                                         "threshold": 0.9, "review_threshold": 0.8, "action": "quarantine"}]}
    with pytest.raises(ApiError) as err:
        api.create_policy(body)
    assert err.value.status == 401
    v1 = writer.create_policy(body, activate=True)
    assert v1.active and v1.version == 1 and v1.policy.concept(UNSAFE_CONCEPT).threshold == 0.9
    cal = api.calibrate(UNSAFE_CONCEPT, unsafe, safe[:20], target_recall=1.0, policy="web")
    assert cal.point.recall == 1.0 and len(cal.curve.thresholds) == len(cal.curve.precision) > 1
    # the web page's preview: the policy with the concept at the calibrated threshold, stored inactive, dry run
    preview = writer.create_policy(logic.with_threshold(v1.policy.model_dump(), UNSAFE_CONCEPT, cal.point.threshold))
    assert not preview.active and preview.version == 2
    assert preview.policy.concept(UNSAFE_CONCEPT).review_threshold == pytest.approx(cal.point.threshold - 0.1, abs=1e-6)
    dry = api.rescan("web", preview.version)
    assert dry.dry_run and dry.photos == 160 and dry.by_concept[UNSAFE_CONCEPT].hit >= len(unsafe)
    assert dry.changed == 160 and sum(dry.changes.values()) == 160  # no photo had a decision yet
    assert all(set(ids) <= set(unsafe + safe) for ids in dry.examples.values())
    assert api.decisions().count == 0  # a dry run writes nothing
    with pytest.raises(ApiError) as err:
        api.rescan("web", preview.version, dry_run=False)
    assert err.value.status == 401
    assert writer.activate_policy("web", preview.version).active
    done = writer.rescan("web", preview.version, dry_run=False)
    assert not done.dry_run and done.changed == 160 and done.run_id is not None
    quarantined = api.decisions(action="quarantine", limit=1000)
    assert {d.photo_id for d in quarantined.results} >= set(unsafe)
    assert api.rescan().changed == 0  # the active version, again: nothing would change
    decision = api.moderate(photo_id=unsafe[0])
    assert decision.action == "quarantine" and decision.hits == [UNSAFE_CONCEPT] and decision.version == 2
    assert api.moderate(data=png_bytes()).source == "upload"
    # a calibration written as a version carries its curve, which the page plots
    written = writer.calibrate(UNSAFE_CONCEPT, unsafe, safe[:20], target_precision=0.9, policy="web", write=True)
    stored = {v.version: v for v in api.policies(name="web", curves=True)}
    entry = stored[written.written_version].calibration[UNSAFE_CONCEPT]
    assert entry.curve is not None and entry.point.threshold == written.point.threshold
    assert logic.curve_at(entry.curve.thresholds, entry.curve.recall, -1.0) == 1.0


# ---- answering ---------------------------------------------------------------------------------
def test_ask_json_and_stream(api):
    question = "is there a red circle?"
    answer = api.ask(question, k=3)
    assert answer.question == question and answer.answer and answer.retrieved
    items = list(api.ask_stream(question, k=3))
    final = items[-1]
    assert isinstance(final, AskResponse) and all(isinstance(x, str) for x in items[:-1]) and len(items) > 1
    assert "".join(items[:-1]) == final.answer == answer.answer  # the streamed text is the answer
    assert {c.id for c in final.citations} <= set(final.shown)
    one = api.ask("what colour is the shape?", photo_id=final.retrieved[0].id)
    assert one.strategy == "single"
    with pytest.raises(ApiError) as err:
        list(api.ask_stream("anything?", photo_id=10_000))
    assert err.value.status == 404


# ---- index jobs --------------------------------------------------------------------------------
def test_index_jobs_need_a_write_key_and_report_progress(api, writer, world, more):
    with pytest.raises(ApiError) as err:
        api.start_index_job([str(more)])
    assert err.value.status == 401
    make_library(more / "new", 3, start=1000)  # after the other tests: they count 160 photos
    job = writer.start_index_job([str(more)])
    assert job.status == "running" and job.paths == [str(more)]
    deadline = time.monotonic() + 60
    while (job := writer.index_job(job.id)).status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job.status == "succeeded", job.error
    assert job.total >= 3 and job.done == job.total and logic.progress_fraction(job.done, job.total) == 1.0
    assert api.ready().vectors == 163
    assert job.id in [j.id for j in api.index_jobs()]
    with pytest.raises(ApiError) as err:
        writer.cancel_index_job(job.id)
    assert err.value.status == 409


# ---- pure helpers ------------------------------------------------------------------------------
def test_sse_parsing_and_filter_items():
    lines = [": keep-alive", "event: token", 'data: "Hel"', "", "event: token", 'data: "lo"', "",
             "data: line one", "data: line two", "", "event: answer", 'data: {"a": 1}']
    events = list(iter_sse(lines))
    assert [(e.event, e.json()) for e in events] == [("token", "Hel"), ("token", "lo"),
                                                     ("message", "line one\nline two"), ("answer", {"a": 1})]
    assert filter_items(None) == []
    items = filter_items(SearchFiltersIn(taken_after="2024-01-01", has_gps=False, tags=["dog", "cat"], file_type="png"))
    assert sorted(items) == ["file_type=png", "has_gps=false", "tag=cat", "tag=dog", "taken_after=2024-01-01"]


def test_logic_helpers():
    assert logic.api_url(["--api", "http://h:1/"], {}) == "http://h:1"
    assert logic.api_url([], {"PHOTODEX_API_URL": "http://e:2"}) == "http://e:2"
    assert logic.api_url(["--other", "x"], {}) == logic.DEFAULT_API_URL
    hits = [SearchHitOut(id=i, score=s, paths=[f"/p/{i}.jpg"]) for i, s in enumerate([0.314, 0.2, 0.151])]
    assert logic.score_bounds(hits) == (0.15, 0.31) and logic.score_bounds([]) == (0.0, 1.0)
    lo, hi = logic.score_bounds(hits[:1])
    assert lo < hi
    assert [h.id for h in logic.above(hits, 0.2)] == [0, 1] and logic.caption(hits[0]) == "#0 · 0.314"
    assert logic.parse_labels("dog, cat\nDog,, bird ") == ["dog", "cat", "bird"]
    assert logic.build_filters() is None
    f = logic.build_filters(path=" */2024/* ", has_gps=True, tags=["x"], file_type="png")
    assert f == SearchFiltersIn(path="*/2024/*", has_gps=True, tags=["x"], file_type="png")
    assert logic.md_escape("a_b*c#1") == "a\\_b\\*c\\#1"
    policy = {"name": "p", "concepts": [{"name": "c", "threshold": 0.3, "review_threshold": 0.25},
                                        {"name": "d", "threshold": 0.5, "review_threshold": None}]}
    moved = logic.with_threshold(policy, "c", 0.2)
    assert moved["concepts"][0] == {"name": "c", "threshold": 0.2, "review_threshold": pytest.approx(0.15)}
    assert policy["concepts"][0]["threshold"] == 0.3 and logic.with_threshold(policy, "d", 0.6)["concepts"][1][
        "review_threshold"] is None
    with pytest.raises(KeyError):
        logic.with_threshold(policy, "e", 0.1)
    assert logic.curve_at([0.5, 0.3, 0.1], [1.0, 0.8, 0.5], 0.3) == 0.8
    assert logic.curve_at([0.5, 0.3, 0.1], [1.0, 0.8, 0.5], 0.6) is None
    assert logic.threshold_range(0.25) == (0.15, 0.35)
    assert logic.threshold_range(0.25, (0.2, None, 0.9, -0.95)) == (-1.0, 1.0)
    assert logic.threshold_range(0.25, (0.2,)) == (0.1, 0.35)


# ---- what the web imports ----------------------------------------------------------------------
WEB_IMPORTS = """
import json, sys
import ui.web.client, ui.web.logic, ui.web.models
print(json.dumps(sorted(sys.modules)))
"""
HEAVY = ("sqlalchemy", "torch", "faiss", "fastapi", "retrieval", "answerer", "indexer", "ui.api.app", "ui.api.routers")
# the shared search defaults (one source for the API, CLI and web): an import-free module under docstring-only packages
LIGHT = ("retrieval", "retrieval.search", "retrieval.search.defaults")


def test_web_models_are_the_apis_own_without_its_heavy_imports():
    """The web reads the API's response models, and importing them loads no server, catalog or model code."""
    proc = subprocess.run([sys.executable, "-c", WEB_IMPORTS], env=env_offline(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert "ui.api.moderation_schemas" in loaded and "ui.api.ask_schemas" in loaded
    assert "retrieval.search.defaults" in loaded
    assert [m for m in loaded if m not in LIGHT and any(m == h or m.startswith(h + ".") for h in HEAVY)] == []


# ---- the pages, through Streamlit's AppTest ----------------------------------------------------
def _search_page() -> None:
    from ui.web.app import main  # the whole app: sidebar, navigation, the default page

    main()


def _moderation_page() -> None:
    from ui.web.views import moderation
    from ui.web.widgets import connection_sidebar

    connection_sidebar()
    moderation.render()


def _indexing_page() -> None:
    from ui.web.views import indexing
    from ui.web.widgets import connection_sidebar

    connection_sidebar()
    indexing.render()


@pytest.fixture()
def app_test(http, monkeypatch):
    """AppTest of a page function, its API calls going to the TestClient app (with the sidebar's key)."""
    streamlit = pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from ui.web import session

    streamlit.cache_data.clear()
    monkeypatch.setattr(session, "client_for", lambda url, key: PhotodexClient(http, key))
    monkeypatch.setattr("sys.argv", ["app.py"])
    return lambda page: AppTest.from_function(page, default_timeout=60)


def _showing(at) -> tuple[int, int]:
    text = next(c.value for c in at.caption if c.value.startswith("Showing"))
    shown, total = re.match(r"Showing (\d+) of (\d+) results", text).groups()
    return int(shown), int(total)


def test_search_page_grid_and_min_score(app_test):
    at = app_test(_search_page).run()
    assert not at.exception and at.title[0].value == "Search"
    at.text_input(key="q").input(class_prompt("red circle")).run()
    assert not at.exception, at.exception
    shown, total = _showing(at)
    assert shown == total > 5 and len(at.get("image")) == total
    slider = next(s for s in at.slider if s.label == "Minimum score")
    slider.set_value(slider.max).run()
    shown, _ = _showing(at)
    assert 1 <= shown < total and len(at.get("image")) == shown


def test_moderation_page_previews_a_threshold_before_applying(app_test, writer, write_key):
    if not writer.policies():
        body = {"name": "web", "concepts": [{"name": UNSAFE_CONCEPT, "prompts": [UNSAFE_CONCEPT],
                                             "templates": TEMPLATES, "threshold": 0.9, "action": "quarantine"}]}
        writer.create_policy(body, activate=True)
    active = next(v for v in writer.policies() if v.active)
    before = len(writer.policies())
    at = app_test(_moderation_page).run()
    assert not at.exception, at.exception
    slider = next(s for s in at.slider if s.label.startswith("Threshold for"))
    assert slider.value == pytest.approx(active.policy.concept(UNSAFE_CONCEPT).threshold)
    assert any(m.label == "Decisions that would change" for m in at.metric)
    slider.set_value(slider.min).run()  # a preview: a dry run with the threshold moved, no key needed
    assert not at.exception, at.exception
    assert len(writer.policies()) == before  # previewing stores nothing
    moved = {UNSAFE_CONCEPT: slider.min}
    hits = next(m for m in at.metric if m.label.endswith(": hits"))
    expected = writer.rescan(active.name, active.version, thresholds=moved)
    assert int(hits.value) == expected.by_concept[UNSAFE_CONCEPT].hit
    assert expected.by_concept[UNSAFE_CONCEPT].hit >= writer.rescan(active.name, active.version).by_concept[
        UNSAFE_CONCEPT].hit  # a lower threshold never hits fewer photos
    at.text_input(key="api_key").input(write_key).run()
    apply = next(b for b in at.button if b.label.startswith(("Apply", "Activate")))
    apply.click().run()
    assert not at.exception, at.exception
    assert any("is active" in s.value for s in at.success)
    assert len(writer.policies()) == before + 1  # stored only when applied
    now = next(v for v in writer.policies() if v.active)
    assert now.version == before + 1 and writer.rescan().changed == 0
    assert now.policy.concept(UNSAFE_CONCEPT).threshold == pytest.approx(slider.min, abs=1e-6)


def test_indexing_page_starts_a_job_and_shows_its_progress(app_test, writer, world, write_key):
    at = app_test(_indexing_page).run()
    assert not at.exception and at.title[0].value == "Indexing"
    at.text_area(key="i_paths").input(str(world.library))
    next(b for b in at.button if b.label == "Start indexing").click().run()
    assert any("API key" in w.value for w in at.warning)  # no key: refused, and the page says why
    at.text_input(key="api_key").input(write_key)
    at.text_area(key="i_paths").input(str(world.library))
    next(b for b in at.button if b.label == "Start indexing").click().run()
    assert not at.exception, at.exception
    job_id = at.session_state["job_id"]
    deadline = time.monotonic() + 60
    while writer.index_job(job_id).status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    at.run()
    assert not at.exception, at.exception
    bars = at.get("progress")
    assert bars and bars[0].value == 100 and "succeeded" in bars[0].proto.text


# ---- against a private server (bound beyond loopback: reads need a key) ------------------------
@pytest.fixture(scope="module")
def private_http(world, api_client):
    with api_client(Settings(collection=world.path, api_host="0.0.0.0"), world.encoder) as c:
        yield c


@pytest.fixture(scope="module")
def read_key(world):
    with Collection.open(world.path) as coll:
        return create_api_key(coll.catalog, "web-read", "read")


def test_client_against_a_private_server_with_and_without_a_key(private_http, read_key):
    anonymous = PhotodexClient(private_http)
    assert anonymous.health().status == "ok" and anonymous.ready().reads_need_key is True
    with pytest.raises(ApiError) as err:
        anonymous.search(class_prompt("red circle"), k=3)
    assert err.value.status == 401 and err.value.code == "unauthorized" and "scope read" in err.value.message
    keyed = PhotodexClient(private_http, read_key)
    top = keyed.search(class_prompt("red circle"), k=3, collapse=None).results[0]
    assert keyed.original(top.id) == Path(top.paths[0]).read_bytes()
    assert keyed.thumbnail(top.id, size=32) and keyed.decisions().offset == 0


def test_api_key_from_the_sidebar_else_the_environment():
    assert logic.api_key(" typed ", {"PHOTODEX_API_KEY": "env"}) == "typed"
    assert logic.api_key("", {"PHOTODEX_API_KEY": " env "}) == "env"
    assert logic.api_key(None, {}) is None and logic.api_key("  ", {"PHOTODEX_API_KEY": ""}) is None


@pytest.fixture()
def private_app_test(private_http, monkeypatch):
    """AppTest of a page against the private app."""
    streamlit = pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from ui.web import session

    streamlit.cache_data.clear()
    monkeypatch.delenv("PHOTODEX_API_KEY", raising=False)
    monkeypatch.setattr(session, "client_for", lambda url, key: PhotodexClient(private_http, key))
    monkeypatch.setattr("sys.argv", ["app.py"])
    return lambda page: AppTest.from_function(page, default_timeout=60)


def test_search_page_says_a_private_server_wants_a_key_and_works_with_one(private_app_test, read_key, monkeypatch):
    at = private_app_test(_search_page).run()
    assert not at.exception, at.exception
    assert any("needs an API key" in w.value and "--scope read" in w.value for w in at.warning), \
        [w.value for w in at.warning]
    at.text_input(key="q").input(class_prompt("red circle")).run()
    assert not at.exception and not at.get("image")
    at.text_input(key="api_key").input(read_key[:-4] + "AAAA").run()  # a wrong key: refused, and said so
    assert any("unknown or revoked" in w.value for w in at.warning), [w.value for w in at.warning]
    at.text_input(key="api_key").input(read_key).run()  # typed into the sidebar
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    shown, total = _showing(at)
    assert shown == total > 5 and len(at.get("image")) == total
    monkeypatch.setenv("PHOTODEX_API_KEY", read_key)  # or from the UI's environment (`photodex ui`, compose)
    at = private_app_test(_search_page).run()
    at.text_input(key="q").input(class_prompt("red circle")).run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    assert len(at.get("image")) == _showing(at)[1] > 5
