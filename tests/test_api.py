"""The API through TestClient (lifespan running) on the synthetic world: search, photos, classify, errors, docs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from ui.settings import Settings
from retrieval.search.filters import parse_filters
from retrieval.search.searcher import Searcher, SearchOptions
from tests.api_support import assert_error, png_bytes
from tests.helpers import bomb_png
from ui.demo.world import CLASSES, class_prompt
from ui.api.app import ROUTER_MODULES

API = "/api/v1"
MAX_BYTES = 300_000
MAX_PIXELS = 600 * 600


@pytest.fixture(scope="module")
def client(world, api_client):
    settings = Settings(collection=world.path, api_max_upload_bytes=MAX_BYTES, api_max_upload_pixels=MAX_PIXELS)
    with api_client(settings, world.encoder) as c:
        yield c


@pytest.fixture(scope="module")
def searcher(world):
    coll = world.open()
    yield Searcher(coll, world.encoder)
    coll.close()


def test_search_returns_the_same_ids_as_the_searcher(client, world, searcher):
    for cls in CLASSES[:4]:
        q = class_prompt(cls)
        got = client.post(f"{API}/search", json={"text": q, "k": 10, "collapse": None})
        assert got.status_code == 200, got.text
        body = got.json()
        direct = searcher.search_text(q, SearchOptions(k=10, collapse=None))
        assert [h["id"] for h in body["results"]] == [h.id for h in direct]
        assert body["count"] == 10 and all(world.sample_of(h["paths"]).class_name == cls for h in body["results"][:5])
    # filters, pagination, min_score and collapse go through unchanged
    q = class_prompt(CLASSES[0])
    req = {"text": q, "k": 5, "offset": 3, "collapse": 0.97, "min_score": -0.5, "filters": {"path": "*/2023/*"}}
    got = client.post(f"{API}/search", json=req).json()
    direct = searcher.search_text(q, SearchOptions(k=5, offset=3, collapse=0.97, min_score=-0.5,
                                                   filters=parse_filters(["path=*/2023/*"])))
    assert [h["id"] for h in got["results"]] == [h.id for h in direct]
    assert all("/2023/" in h["paths"][0] for h in got["results"])
    pngs = client.post(f"{API}/search", json={"text": q, "k": 5, "filters": {"file_type": "png"}}).json()
    assert pngs["results"] and all(h["format"] == "PNG" for h in pngs["results"])


def test_search_by_upload_and_similar(client, world, searcher):
    path, sample = next((p, s) for p, s in world.truth.items() if not s.unsafe)
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "PNG")
    got = client.post(f"{API}/search/image", files={"file": ("q.png", buf.getvalue(), "image/png")},
                      data={"k": "3", "no_collapse": "true"})
    assert got.status_code == 200, got.text
    top = got.json()["results"][0]
    assert world.sample_of(top["paths"]).class_name == sample.class_name
    pid = top["id"]
    sim = client.get(f"{API}/photos/{pid}/similar", params={"k": 5, "no_collapse": True}).json()
    direct = searcher.search_similar(photo_id=pid, options=SearchOptions(k=5, collapse=None))
    assert [h["id"] for h in sim["results"]] == [h.id for h in direct] and pid not in [h["id"] for h in sim["results"]]


def test_photo_metadata_thumbnail_and_original(client, world):
    hit = client.post(f"{API}/search", json={"text": class_prompt(CLASSES[1]), "k": 1}).json()["results"][0]
    meta = client.get(f"{API}/photos/{hit['id']}")
    assert meta.status_code == 200 and meta.json()["paths"] == hit["paths"] and meta.json()["status"] == "indexed"
    thumb = client.get(f"{API}/photos/{hit['id']}/thumbnail", params={"size": 24})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 24
    orig = client.get(f"{API}/photos/{hit['id']}/original")
    assert orig.status_code == 200 and orig.content == Path(hit["paths"][0]).read_bytes()
    assert orig.headers["content-type"] in ("image/jpeg", "image/png")


def test_classify_upload_and_id_and_tags(client, world):
    path, sample = next((p, s) for p, s in world.truth.items() if not s.unsafe)
    labels = ",".join(CLASSES)
    up = client.post(f"{API}/classify", files={"file": ("x.png", Path(path).read_bytes(), "image/png")},
                     data={"labels": labels, "k": "3", "templates": "photos"})
    assert up.status_code == 200, up.text
    assert up.json()["source"] == "upload" and len(up.json()["labels"]) == 3
    pid = client.post(f"{API}/search/image", files={"file": ("q", Path(path).read_bytes(), "image/png")},
                      data={"k": "1"}).json()["results"][0]["id"]
    by_id = client.post(f"{API}/classify", data={"labels": labels, "photo_id": str(pid), "k": "1"})
    assert by_id.status_code == 200 and by_id.json()["source"] == f"photo:{pid}"
    assert by_id.json()["labels"][0]["label"] == up.json()["labels"][0]["label"]
    tags = client.get(f"{API}/tags")
    assert tags.status_code == 200 and isinstance(tags.json(), list)


BAD_REQUESTS = [
    ("k=0", "post", "/search", {"json": {"text": "a", "k": 0}}, 422, "validation_error"),
    ("k too big", "post", "/search", {"json": {"text": "a", "k": 10**6}}, 422, "validation_error"),
    ("wrong type", "post", "/search", {"json": {"text": "a", "k": "ten"}}, 422, "validation_error"),
    ("missing text", "post", "/search", {"json": {"k": 3}}, 422, "validation_error"),
    ("empty query", "post", "/search", {"json": {"text": "   "}}, 422, "invalid_input"),
    ("negative only", "post", "/search", {"json": {"text": "-red"}}, 422, "invalid_input"),
    ("unknown field", "post", "/search", {"json": {"text": "a", "colour": "red"}}, 422, "validation_error"),
    ("unknown filter", "post", "/search", {"json": {"text": "a", "filters": {"colour": "red"}}}, 422,
     "validation_error"),
    ("bad date", "post", "/search", {"json": {"text": "a", "filters": {"taken_after": "last tuesday"}}}, 422,
     "invalid_input"),
    ("bad JSON", "post", "/search", {"content": b"{not json", "headers": {"content-type": "application/json"}},
     400, "invalid_json"),
    ("not an object", "post", "/search", {"json": [1, 2]}, 422, "validation_error"),
    ("unknown query filter", "get", "/photos/1/similar?filter=colour%3Dred", {}, 422, "invalid_input"),
    ("missing file", "post", "/search/image", {"data": {"k": "3"}}, 422, "validation_error"),
    ("unknown photo", "get", "/photos/99999999", {}, 404, "not_found"),
    ("unknown photo similar", "get", "/photos/99999999/similar", {}, 404, "not_found"),
    ("unknown photo original", "get", "/photos/99999999/original", {}, 404, "not_found"),
    ("photo id zero", "get", "/photos/0", {}, 422, "validation_error"),
    ("thumbnail size", "get", "/photos/1/thumbnail?size=100000", {}, 422, "validation_error"),
    ("no route", "get", "/nothing-here", {}, 404, "not_found"),
    ("wrong method", "put", "/search", {"json": {"text": "a"}}, 405, "method_not_allowed"),
    ("classify neither", "post", "/classify", {"data": {"labels": "a,b"}}, 422, "invalid_input"),
    ("classify template file", "post", "/classify", {"data": {"labels": "a,b", "photo_id": "1",
                                                               "templates": "/etc/passwd"}}, 422, "invalid_input"),
    ("classify duplicate labels", "post", "/classify", {"data": {"labels": "a,A", "photo_id": "1"}}, 422,
     "invalid_input"),
    ("unknown job", "get", "/index/jobs/" + "0" * 32, {}, 404, "not_found"),
    ("bad job id", "get", "/index/jobs/..etc", {}, 422, "validation_error"),
]


@pytest.mark.parametrize("name,method,url,kwargs,status,code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_their_4xx_in_the_error_shape(client, name, method, url, kwargs, status, code):
    assert_error(getattr(client, method)(API + url, **kwargs), status, code)


@pytest.mark.parametrize("path", [
    "/photos/../../etc/passwd", "/photos/..%2F..%2Fetc%2Fpasswd", "/photos/%2Fetc%2Fpasswd/original",
    "/photos/1%2F..%2F..%2Fetc%2Fpasswd/original", "/photos/-1/original", "/photos/1.5/original",
    "/photos//etc/passwd/original", "/photos/%00/thumbnail",
])
def test_path_traversal_in_ids_never_reaches_a_file(client, path):
    resp = client.get(API + path)
    assert resp.status_code in (404, 422), resp.status_code
    assert_error(resp, resp.status_code)
    assert "root:" not in resp.text


def test_uploads_limited_while_reading_and_checked(client, world):
    files = lambda data, name="x.png", ct="image/png": {"file": (name, data, ct)}  # noqa: E731
    assert_error(client.post(f"{API}/search/image", files=files(b"\0" * (MAX_BYTES + 200_000))), 413)
    assert_error(client.post(f"{API}/search/image", files=files(b"x" * (MAX_BYTES + 10))), 413, "payload_too_large")
    assert_error(client.post(f"{API}/search/image", files=files(b"%PDF-1.4 hello", "a.pdf", "application/pdf")),
                 415, "unsupported_media_type")
    assert_error(client.post(f"{API}/search/image", files=files(b"")), 422)
    big = png_bytes((700, 700))  # 490k pixels > MAX_PIXELS, small file
    assert len(big) < MAX_BYTES
    assert_error(client.post(f"{API}/search/image", files=files(big)), 422, "too_many_pixels")
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(jpeg, "JPEG")
    truncated = jpeg.getvalue()[: len(jpeg.getvalue()) // 3]
    err = client.post(f"{API}/search/image", files=files(truncated, "t.jpg", "image/jpeg"))
    assert err.status_code == 422 and assert_error(err, 422)["code"] in ("invalid_input", "undecodable_image")
    assert_error(client.post(f"{API}/classify", files=files(b"not an image"), data={"labels": "a,b"}), 415)
    assert client.post(f"{API}/search/image", files=files(png_bytes())).status_code == 200


def test_decompression_bomb_upload_is_too_many_pixels(client):
    """A 30000x30000 1-bit PNG (109 KB) is past Pillow's own guard too: still the documented 422, not 415."""
    bomb = bomb_png(30000)
    for url, extra in ((f"{API}/search/image", {}), (f"{API}/classify", {"data": {"labels": "a,b"}})):
        err = assert_error(client.post(url, files={"file": ("bomb.png", bomb, "image/png")}, **extra), 422,
                           "too_many_pixels")
        assert "900000000" in err["message"] and err["detail"]["max_pixels"] == MAX_PIXELS, err


def test_unexpected_errors_are_500_in_the_error_shape_without_traceback(client, monkeypatch):
    runtime = client.app.state.runtime

    def boom(*_a, **_k):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(runtime.searcher, "search_vector", boom)
    resp = client.post(f"{API}/search", json={"text": "a red circle"})
    err = assert_error(resp, 500, "internal_error")
    assert "secret internal detail" not in resp.text and err["detail"] is None


def test_health_ready_and_metrics_count_routes(client):
    assert client.get(f"{API}/healthz").json() == {"status": "ok"}
    ready = client.get(f"{API}/readyz").json()
    assert ready["status"] == "ready" and ready["vectors"] > 0
    for _ in range(3):
        client.post(f"{API}/search", json={"text": "a blue square", "k": 2})
    client.get(f"{API}/photos/99999999")
    text = client.get(f"{API}/metrics").text
    line = next(ln for ln in text.splitlines()
                if ln.startswith('photodex_http_requests_total{method="POST",route="/api/v1/search",status="200"}'))
    assert float(line.split()[-1]) >= 3
    assert 'route="/api/v1/photos/{photo_id}",status="404"' in text
    assert 'photodex_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/api/v1/search"}' in text
    assert 'photodex_encoder_seconds_count{kind="text"}' in text and "photodex_search_seconds_count" in text
    assert "/api/v1/photos/99999999" not in text  # labelled by route template, never the raw path


def test_openapi_document_is_complete(client):
    doc = client.get("/openapi.json").json()
    routes = {(API + r.path, m) for module in ROUTER_MODULES for r in module.router.routes
              for m in r.methods if m not in ("HEAD", "OPTIONS")}
    documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops}
    assert routes and routes == documented
    expected = {("/api/v1/search", "POST"), ("/api/v1/search/image", "POST"),
                ("/api/v1/photos/{photo_id}/similar", "GET"),
                ("/api/v1/photos/{photo_id}", "GET"), ("/api/v1/photos/{photo_id}/thumbnail", "GET"),
                ("/api/v1/photos/{photo_id}/original", "GET"), ("/api/v1/classify", "POST"), ("/api/v1/tags", "GET"),
                ("/api/v1/index/jobs", "POST"), ("/api/v1/index/jobs/{job_id}", "GET"),
                ("/api/v1/index/jobs/{job_id}", "DELETE"), ("/api/v1/healthz", "GET"), ("/api/v1/readyz", "GET"),
                ("/api/v1/metrics", "GET")}
    assert expected <= documented
    schemas = doc["components"]["schemas"]
    assert not [n for n in schemas if n.startswith("Body_") or "ValidationError" in n]
    for name in ("SearchRequest", "SearchResponse", "SearchImageForm", "ClassifyForm", "PhotoOut", "IndexJobOut",
                 "ErrorResponse"):
        assert name in schemas
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op.get("summary") and op.get("responses")
            for status, resp in op["responses"].items():
                if status[0] in "45":
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorResponse"
    assert doc["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
