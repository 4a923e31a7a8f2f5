"""Moderation through the API on the synthetic world (its unsafe concept is the skull): every route equals its
service function, dry runs write nothing, mutating routes need a write key, bad input is a 4xx in the error shape."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from sqlalchemy import func, select

from indexer.catalog.models import ModerationDecision, ModerationPolicy, ModerationRun, ModerationState, PhotoFile
from indexer.collection import Collection
from ui.settings import Settings
from retrieval.moderation.calibrate import Examples, calibrate_concept
from retrieval.moderation.history import list_decisions
from retrieval.outcomes import OUTCOMES
from retrieval.moderation.rescan import rescan
from retrieval.moderation.service import moderate_bytes, moderate_ids
from retrieval.moderation.store import get_policy, list_policies
from tests.api_support import assert_error
from tests.helpers import WORLD
from ui.demo.world import UNSAFE_CONCEPT
from ui.api.moderation_schemas import Outcome
from ui.api.security import create_api_key

API = "/api/v1"
TEMPLATES = ["a photo of a {}", "a picture of a {}", "an image of a {}"]
TABLES = (ModerationPolicy, ModerationRun, ModerationDecision, ModerationState)


def skull_policy(threshold: float, review: float | None = None, name: str = "world", **concept) -> dict:
    return {"name": name, "concepts": [{"name": UNSAFE_CONCEPT, "prompts": [UNSAFE_CONCEPT], "templates": TEMPLATES,
                                        "threshold": threshold, "review_threshold": review,
                                        "action": "quarantine", **concept}]}


@pytest.fixture(scope="module")
def world(world_of, tmp_path_factory):
    """A copy of the shared world: these tests store keys, policies and decisions in it."""
    return world_of(*WORLD).copy(tmp_path_factory.mktemp("api_moderation") / "collection")


@pytest.fixture(scope="module")
def keys(world):
    with Collection.open(world.path) as coll:
        return {scope: create_api_key(coll.catalog, f"mod-{scope}", scope) for scope in ("read", "write")}


@pytest.fixture(scope="module")
def client(world, keys, api_client):
    with api_client(Settings(collection=world.path, api_max_upload_bytes=300_000), world.encoder) as c:
        yield c


@pytest.fixture(scope="module")
def coll(world):
    """The same collection opened directly, for the service functions the routes must equal."""
    c = world.open()
    yield c
    c.close()


@pytest.fixture(scope="module")
def labels(world, coll):
    """Photo ids of the skulls and of the other photos."""
    with coll.catalog.session() as s:
        rows = s.execute(select(PhotoFile.photo_id, PhotoFile.path)).all()
    unsafe = {int(pid): world.truth[path].unsafe for pid, path in rows}
    return sorted(i for i, u in unsafe.items() if u), sorted(i for i, u in unsafe.items() if not u)


@pytest.fixture(scope="module")
def stored(client, keys, coll):
    """The skull policy stored through the API as version 1 and activated (before it: no active policy)."""
    assert_error(client.post(f"{API}/moderate", data={"photo_id": "1"}), 404, "no_active_policy")
    resp = client.post(f"{API}/policies", json=skull_policy(0.5, review=0.3), params={"activate": "true"},
                       headers={"X-API-Key": keys["write"]})
    assert resp.status_code == 201, resp.text
    return resp.json()


def _w(keys: dict[str, str]) -> dict[str, str]:
    return {"X-API-Key": keys["write"]}


def _counts(coll: Collection) -> dict[str, int]:
    with coll.catalog.session() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in TABLES}


def test_policies_store_list_and_activate_equal_the_store(client, keys, coll, stored):
    assert stored == get_policy(coll, "world", 1).to_dict() and stored["active"] and stored["version"] == 1
    v2 = client.post(f"{API}/policies", json=skull_policy(0.4), headers=_w(keys))
    assert v2.status_code == 201 and v2.json()["version"] == 2 and not v2.json()["active"]
    assert v2.json()["policy"]["concepts"][0]["threshold"] == 0.4
    listed = client.get(f"{API}/policies")
    assert listed.status_code == 200 and listed.json() == [r.to_dict() for r in list_policies(coll)]
    assert [r["version"] for r in client.get(f"{API}/policies", params={"name": "world"}).json()][:2] == [1, 2]
    assert client.get(f"{API}/policies", params={"name": "nobody"}).json() == []
    by_query = client.post(f"{API}/policies/world/activate", params={"version": 2}, headers=_w(keys))
    assert by_query.status_code == 200 and by_query.json() == get_policy(coll).to_dict()
    assert get_policy(coll).version == 2
    by_body = client.post(f"{API}/policies/world/activate", json={"version": 1}, headers=_w(keys))
    assert by_body.status_code == 200 and get_policy(coll).version == 1 and by_body.json()["active"]
    assert_error(client.post(f"{API}/policies/world/activate", json={"version": 1}, params={"version": 2},
                             headers=_w(keys)), 422, "invalid_input")
    with coll.catalog.session() as s:
        assert s.scalar(select(func.count()).where(ModerationPolicy.active.is_(True))) == 1


def test_moderate_upload_and_photo_id_equal_the_service(client, world, coll, labels, stored):
    skulls, others = labels
    record = get_policy(coll)
    (path,) = [p for p, s in world.truth.items() if s.unsafe][:1]
    data = Path(path).read_bytes()
    up = client.post(f"{API}/moderate", files={"file": ("x.png", data, "image/png")})
    assert up.status_code == 200, up.text
    assert up.json() == moderate_bytes(record, world.encoder, data).to_dict()
    assert up.json()["action"] == "quarantine" and up.json()["hits"] == [UNSAFE_CONCEPT]
    concept = up.json()["concepts"][0]
    assert concept["margin"] == pytest.approx(concept["score"] - concept["threshold"], abs=2e-6)
    for pid, action in ((skulls[0], "quarantine"), (others[0], None)):
        got = client.post(f"{API}/moderate", data={"photo_id": str(pid), "policy": "world", "version": "1"})
        assert got.status_code == 200
        assert got.json() == moderate_ids(coll, get_policy(coll, "world", 1), [pid])[0].to_dict()
        assert got.json()["photo_id"] == pid and got.json()["policy"] == "world" and got.json()["version"] == 1
        assert action is None or got.json()["action"] == action
    assert client.post(f"{API}/moderate", data={"photo_id": str(skulls[0]), "policy": "world", "version": "2"}
                       ).json()["version"] == 2


def test_moderate_several_images_gives_one_entry_each_and_a_bad_one_fails_alone(client, world, coll, stored):
    """Issue 20.3: ``files`` repeated → one decision per image in order; an undecodable image (valid header,
    truncated data) and a non-image get their own 4xx entry, the others their decisions."""
    record = get_policy(coll)
    skull = next(Path(p) for p, s in world.truth.items() if s.unsafe).read_bytes()
    other = next(Path(p) for p, s in world.truth.items() if not s.unsafe).read_bytes()
    truncated = skull[: len(skull) // 2]
    parts = [("files", ("a.png", skull, "image/png")), ("files", ("b.png", truncated, "image/png")),
             ("files", ("c.png", other, "image/png")), ("files", ("d.txt", b"not an image at all", "text/plain"))]
    resp = client.post(f"{API}/moderate", files=parts)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["count"] == 4 and body["decided"] == 2
    assert [r["index"] for r in body["results"]] == [0, 1, 2, 3]
    assert [r["status"] for r in body["results"]] == [200, 422, 200, 415]
    assert body["results"][1]["error"]["code"] == "undecodable_image" and body["results"][1]["decision"] is None
    assert body["results"][3]["error"]["code"] == "unsupported_media_type"
    for i, data in ((0, skull), (2, other)):  # the same decision a single-image request gets
        want = moderate_bytes(record, world.encoder, data).to_dict()
        got = body["results"][i]["decision"]
        assert got["action"] == want["action"] and got["hits"] == want["hits"]
        for g, w in zip(got["concepts"], want["concepts"]):
            assert g["score"] == pytest.approx(w["score"], abs=1e-5)
    assert body["results"][0]["decision"]["action"] == "quarantine"
    assert body["results"][0]["filename"] == "a.png"
    single = client.post(f"{API}/moderate", files={"file": ("b.png", truncated, "image/png")})
    assert single.status_code == 422  # alone, the same image is the request's own 4xx


def test_moderate_refuses_too_many_images_or_two_kinds_of_input(client, stored):
    from ui.api.routers.moderation import MAX_MODERATE_FILES

    png = next(iter([b"\x89PNG"]))  # never decoded: the count is checked first
    too_many = [("files", (f"{i}.png", png, "image/png")) for i in range(MAX_MODERATE_FILES + 1)]
    assert_error(client.post(f"{API}/moderate", files=too_many), 422, "invalid_input")
    assert_error(client.post(f"{API}/moderate", files=[("files", ("a.png", png, "image/png"))],
                             data={"photo_id": "1"}), 422, "invalid_input")


def test_rescan_dry_run_writes_nothing_and_a_real_run_needs_write_and_the_lock(client, keys, world, coll, stored):
    record = get_policy(coll)
    before = _counts(coll)
    dry = client.post(f"{API}/moderate/rescan")  # no body, no key: a dry run
    assert dry.status_code == 200, dry.text
    assert _counts(coll) == before  # not even a run row
    direct = rescan(coll, record, dry_run=True).to_dict()
    assert {k: v for k, v in dry.json().items() if k != "seconds"} == \
           {k: v for k, v in direct.items() if k != "seconds"}
    assert dry.json()["dry_run"] and dry.json()["run_id"] is None and dry.json()["changed"] > 0
    explicit = client.post(f"{API}/moderate/rescan", json={"policy": "world", "version": 2, "dry_run": True})
    assert explicit.json()["version"] == 2 and _counts(coll) == before
    real = {"dry_run": False}
    assert_error(client.post(f"{API}/moderate/rescan", json=real), 401, "unauthorized")
    assert_error(client.post(f"{API}/moderate/rescan", json=real, headers={"X-API-Key": keys["read"]}), 403)
    with Collection.open(world.path) as holder, holder.writer_lock().acquire():
        busy = client.post(f"{API}/moderate/rescan", json=real, headers=_w(keys))
        assert "--wait" not in assert_error(busy, 409, "writer_busy")["message"] and busy.headers["Retry-After"]
    assert _counts(coll) == before
    done = client.post(f"{API}/moderate/rescan", json=real, headers=_w(keys))
    assert done.status_code == 200 and done.json()["run_id"] and not done.json()["dry_run"]
    assert {k: v for k, v in done.json().items() if k not in ("seconds", "run_id", "dry_run")} == \
           {k: v for k, v in direct.items() if k not in ("seconds", "run_id", "dry_run")}
    after = _counts(coll)
    assert after["moderation_runs"] == before["moderation_runs"] + 1
    assert after["moderation_decisions"] == before["moderation_decisions"] + direct["changed"]


def test_decisions_filter_and_page_like_list_decisions(client, coll, labels, stored):
    if not list_decisions(coll, limit=1):
        rescan(coll, get_policy(coll))

    def as_dicts(rows: list) -> list[dict]:
        return [r.to_dict() for r in rows]

    everything = client.get(f"{API}/decisions", params={"limit": 1000})
    assert everything.status_code == 200 and everything.json()["results"] == as_dicts(list_decisions(coll))
    quarantined = client.get(f"{API}/decisions", params={"action": "quarantine"}).json()
    assert quarantined["results"] == as_dicts(list_decisions(coll, action="quarantine"))
    assert {r["photo_id"] for r in quarantined["results"]} == set(labels[0])  # exactly the skulls
    page = client.get(f"{API}/decisions", params={"limit": 3, "offset": 2}).json()
    assert page["results"] == as_dicts(list_decisions(coll))[2:5] and (page["count"], page["offset"]) == (3, 2)
    one = client.get(f"{API}/decisions", params={"photo_id": labels[0][0], "history": "true"}).json()["results"]
    assert one == as_dicts(list_decisions(coll, photo_id=labels[0][0], history=True)) and one[0]["history"]
    assert client.get(f"{API}/decisions", params={"offset": 100_000}).json() == \
           {"offset": 100_000, "limit": 100, "count": 0, "results": []}


def test_calibrate_equals_the_service_and_writes_only_with_write_scope(client, keys, coll, labels, stored):
    skulls, others = labels
    assert len(skulls) >= 5
    body = {"concept": UNSAFE_CONCEPT, "positive_ids": skulls, "negative_ids": others, "target_precision": 0.95,
            "policy": "world", "version": 1}
    got = client.post(f"{API}/moderate/calibrate", json=body)
    assert got.status_code == 200, got.text
    direct = calibrate_concept(coll, get_policy(coll, "world", 1), UNSAFE_CONCEPT, Examples(ids=skulls),
                               Examples(ids=others), target_precision=0.95).to_dict()
    assert got.json() == {k: v for k, v in direct.items() if k not in ("skipped", "plot")}
    assert got.json()["point"]["precision"] >= 0.95 and got.json()["written_version"] is None
    versions = len(list_policies(coll))
    write = {**body, "write": True}
    assert_error(client.post(f"{API}/moderate/calibrate", json=write), 401)
    assert_error(client.post(f"{API}/moderate/calibrate", json=write, headers={"X-API-Key": keys["read"]}), 403)
    assert len(list_policies(coll)) == versions
    written = client.post(f"{API}/moderate/calibrate", json=write, headers=_w(keys)).json()
    assert written["written_version"] == versions + 1 == get_policy(coll, "world").version
    new = get_policy(coll, "world", written["written_version"])
    assert new.policy.concepts[0].threshold == pytest.approx(written["point"]["threshold"], abs=1e-6) and not new.active
    with_curves = client.get(f"{API}/policies", params={"name": "world", "curves": "true"}).json()[-1]
    assert with_curves["calibration"][UNSAFE_CONCEPT]["curve"]["precision"] == written["curve"]["precision"]
    summary = client.get(f"{API}/policies", params={"name": "world"}).json()[-1]
    assert "curve" not in summary["calibration"][UNSAFE_CONCEPT] and summary["calibration"][UNSAFE_CONCEPT]["point"]


@pytest.mark.parametrize("method,url,kwargs", [
    ("post", "/policies", {"json": skull_policy(0.2, name="other")}),
    ("post", "/policies/world/activate", {"json": {"version": 1}}),
    ("post", "/moderate/rescan", {"json": {"dry_run": False}}),
    ("post", "/moderate/calibrate", {"json": {"concept": UNSAFE_CONCEPT, "positive_ids": [1], "negative_ids": [2],
                                              "target_recall": 1.0, "write": True}}),
], ids=["store-policy", "activate", "real-rescan", "calibrate-write"])
def test_mutating_routes_refuse_missing_wrong_and_read_keys(client, keys, coll, stored, method, url, kwargs):
    before = _counts(coll)
    call = getattr(client, method)
    assert_error(call(API + url, **kwargs), 401, "unauthorized")
    assert_error(call(API + url, headers={"X-API-Key": keys["write"][:-4] + "AAAA"}, **kwargs), 401)
    assert_error(call(API + url, headers={"X-API-Key": keys["read"]}, **kwargs), 403, "forbidden")
    assert _counts(coll) == before


def _policy_with(**concept) -> dict:
    policy = skull_policy(0.3)
    policy["concepts"][0].update(concept)
    return policy


BAD = [
    ("threshold > 1", "post", "/policies", {"json": _policy_with(threshold=1.5)}, 422, "validation_error",
     "threshold"),
    ("review above threshold", "post", "/policies", {"json": _policy_with(review_threshold=0.4)}, 422,
     "validation_error", "review_threshold"),
    ("unknown action", "post", "/policies", {"json": _policy_with(action="delete")}, 422, "validation_error", "action"),
    ("empty prompts", "post", "/policies", {"json": _policy_with(prompts=[])}, 422, "validation_error", "prompts"),
    ("blank prompt", "post", "/policies", {"json": _policy_with(prompts=["  "])}, 422, "validation_error", "prompts"),
    ("template file", "post", "/policies", {"json": _policy_with(templates="/etc/passwd")}, 422, "validation_error",
     "templates"),
    ("unknown field", "post", "/policies", {"json": {**skull_policy(0.3), "colour": "red"}}, 422, "validation_error",
     "colour"),
    ("no concepts", "post", "/policies", {"json": {"name": "x", "concepts": []}}, 422, "validation_error", "concepts"),
    ("bad name", "post", "/policies", {"json": skull_policy(0.3, name="../x")}, 422, "validation_error", "name"),
    ("other encoder", "post", "/policies", {"json": {**skull_policy(0.3), "encoder": "ViT-B-32|openai|512"}}, 422,
     "encoder_mismatch", None),
    ("not JSON", "post", "/policies", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 400,
     "invalid_json", None),
    ("moderate neither", "post", "/moderate", {"data": {"policy": "world"}}, 422, "invalid_input", None),
    ("moderate unknown photo", "post", "/moderate", {"data": {"photo_id": "99999999"}}, 404, "not_found", None),
    ("moderate unknown policy", "post", "/moderate", {"data": {"photo_id": "1", "policy": "nope"}}, 404, "not_found",
     None),
    ("moderate version without name", "post", "/moderate", {"data": {"photo_id": "1", "version": "1"}}, 422,
     "invalid_input", None),
    ("moderate not an image", "post", "/moderate", {"files": {"file": ("a.pdf", b"%PDF-1.4", "application/pdf")}},
     415, "unsupported_media_type", None),
    ("moderate too large", "post", "/moderate", {"files": {"file": ("a.png", b"x" * 400_000, "image/png")}}, 413,
     "payload_too_large", None),
    ("activate unknown policy", "post", "/policies/nope/activate", {"json": {"version": 1}}, 404, "not_found", None),
    ("activate unknown version", "post", "/policies/world/activate", {"json": {"version": 99}}, 404, "not_found",
     None),
    ("activate without version", "post", "/policies/world/activate", {}, 422, "invalid_input", None),
    ("activate version 0", "post", "/policies/world/activate", {"params": {"version": 0}}, 422, "validation_error",
     "version"),
    ("decisions unknown action", "get", "/decisions?action=delete", {}, 422, "validation_error", "action"),
    ("decisions limit 0", "get", "/decisions?limit=0", {}, 422, "validation_error", "limit"),
    ("rescan unknown policy", "post", "/moderate/rescan", {"json": {"policy": "nope"}}, 404, "not_found", None),
    ("rescan unknown field", "post", "/moderate/rescan", {"json": {"dryrun": False}}, 422, "validation_error",
     "dryrun"),
    ("calibrate one class", "post", "/moderate/calibrate", {"json": {"concept": UNSAFE_CONCEPT, "positive_ids": [1, 2],
     "negative_ids": [], "target_precision": 0.9}}, 422, "validation_error", "negative_ids"),
    ("calibrate two targets", "post", "/moderate/calibrate", {"json": {"concept": UNSAFE_CONCEPT, "positive_ids": [1],
     "negative_ids": [2], "target_precision": 0.9, "target_recall": 0.9}}, 422, "validation_error", "target"),
    ("calibrate target > 1", "post", "/moderate/calibrate", {"json": {"concept": UNSAFE_CONCEPT, "positive_ids": [1],
     "negative_ids": [2], "target_precision": 1.5}}, 422, "validation_error", "target_precision"),
    ("calibrate too few", "post", "/moderate/calibrate", {"json": {"concept": UNSAFE_CONCEPT, "positive_ids": [1, 2],
     "negative_ids": [3, 4], "target_precision": 0.9}}, 422, "invalid_input", "too few"),
    ("calibrate unknown concept", "post", "/moderate/calibrate", {"json": {"concept": "gore", "positive_ids": [1],
     "negative_ids": [2], "target_precision": 0.9}}, 422, "invalid_input", "gore"),
    ("calibrate unknown ids", "post", "/moderate/calibrate", {"json": {"concept": UNSAFE_CONCEPT,
     "positive_ids": [99999999], "negative_ids": [2], "target_precision": 0.9}}, 422, "invalid_input", "99999999"),
]


@pytest.mark.parametrize("name,method,url,kwargs,status,code,names", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_in_the_error_shape_and_changes_nothing(client, keys, coll, stored, name, method, url,
                                                                    kwargs, status, code, names):
    before = _counts(coll)
    kwargs = {**kwargs, "headers": {**kwargs.get("headers", {}), **_w(keys)}}
    resp = getattr(client, method)(API + url, **kwargs)
    err = assert_error(resp, status, code)
    if names:
        assert names in err["message"], err
    assert "root:" not in resp.text
    assert _counts(coll) == before


def test_calibrate_with_95k_unknown_ids_names_their_count_and_a_few(world, keys, stored):
    unknown = list(range(10_000_000, 10_095_000))  # a 950 KB body: under the default 32 MiB limit
    body = {"concept": UNSAFE_CONCEPT, "positive_ids": unknown, "negative_ids": [2], "target_precision": 0.9}
    app = create_app(Settings(collection=world.path), encoder_loader=lambda s: world.encoder)
    with TestClient(app, raise_server_exceptions=False) as big_bodies:
        resp = big_bodies.post(f"{API}/moderate/calibrate", json=body, headers=_w(keys))
    err = assert_error(resp, 422, "invalid_input")
    assert len(resp.content) < 2_000, len(resp.content)
    assert "95000 photo ids" in err["message"] and "10000000, 10000001" in err["message"], err
    assert "10094999" not in err["message"]


def test_openapi_lists_the_moderation_routes_with_named_schemas(client):
    doc = client.get("/openapi.json").json()
    routes = {("/api/v1/moderate", "post"): ("ModerateForm", "ModerationDecisionOut"),
              ("/api/v1/policies", "get"): (None, None),
              ("/api/v1/policies", "post"): ("PolicyIn", "PolicyVersionOut"),
              ("/api/v1/policies/{name}/activate", "post"): (None, "PolicyVersionOut"),
              ("/api/v1/decisions", "get"): (None, "DecisionPage"),
              ("/api/v1/moderate/rescan", "post"): ("RescanRequest", "RescanReportOut"),
              ("/api/v1/moderate/calibrate", "post"): ("CalibrateRequest", "CalibrationOut")}
    for (path, method), (request, response) in routes.items():
        op = doc["paths"][path][method]
        text = str(op)
        assert op["summary"] and op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorResponse")
        for name in (request, response):
            assert name is None or f"#/components/schemas/{name}" in text, (path, name)
    schemas = doc["components"]["schemas"]
    assert {"ConceptIn", "ConceptScoreOut", "StoredDecisionOut", "PRCurveOut", "OperatingPointOut"} <= set(schemas)
    assert doc["paths"]["/api/v1/policies"]["post"]["security"] == [{"APIKeyHeader": []}]
    assert not [n for n in schemas if n.startswith("Body_")]
    # the documented outcomes are the moderation vocabulary's, in its order
    assert get_args(Outcome) == OUTCOMES == tuple(schemas["StoredDecisionOut"]["properties"]["action"]["enum"])


def test_no_active_policy_and_another_collection_copy(tmp_path, world, api_client):
    """A copy of the collection without policies: every policy-using route says there is none (404)."""
    with world.private_copy(tmp_path / "coll") as c, c.catalog.session() as s, s.begin():
        for table in (ModerationState, ModerationDecision, ModerationRun, ModerationPolicy):
            s.query(table).delete()
    with api_client(Settings(collection=tmp_path / "coll"), world.encoder) as c:
        for url, kw in (("/moderate", {"data": {"photo_id": "1"}}), ("/moderate/rescan", {}),
                        ("/moderate/calibrate", {"json": {"concept": "x", "positive_ids": [1], "negative_ids": [2],
                                                          "target_recall": 1.0}})):
            assert_error(c.post(API + url, **kw), 404, "no_active_policy")
        assert c.get(f"{API}/policies").json() == [] and c.get(f"{API}/decisions").json()["results"] == []
