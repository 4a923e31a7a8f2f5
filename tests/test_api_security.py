"""API keys: CLI creation (shown once, stored as sha256), 401/403 on every mutating route, scopes, reads opt-in."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from indexer.catalog.models import ApiKey
from indexer.collection import Collection
from indexer.run import RunOptions, index_paths
from ui.settings import Settings
from tests.helpers import make_library
from tests.api_support import assert_error
from ui.api.app import create_app
from ui.cli.app import main as cli

API = "/api/v1"
JOB = "/index/jobs/" + "a" * 32
MUTATING = [("post", "/index/jobs", {"json": {"paths": ["/nowhere"]}}), ("delete", JOB, {})]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tiny_encoder):
    """A small collection and one key per scope, created through `photodex apikey create`."""
    root = tmp_path_factory.mktemp("api_keys")
    make_library(root / "lib", 3)
    with Collection.open_for_encoder(root / "coll", tiny_encoder.spec) as coll:
        index_paths(coll, tiny_encoder, [root / "lib"], RunOptions(batch_size=8, workers=0))
    return root, {}


def _create(capsys, coll_dir, name: str, scope: str) -> str:
    assert cli(["apikey", "create", name, "--scope", scope, "--collection", str(coll_dir)]) == 0
    out = capsys.readouterr()
    assert "shown only this once" in out.err
    return out.out.strip()


def test_cli_key_is_shown_once_and_stored_as_sha256(keyed, capsys):
    root, keys = keyed
    for scope in ("read", "write", "admin"):
        keys[scope] = _create(capsys, root / "coll", f"k-{scope}", scope)
    assert len(set(keys.values())) == 3 and all(k.startswith("pdx_") for k in keys.values())
    with Collection.open(root / "coll") as coll, coll.catalog.session() as s:
        rows = {r.name: r for r in s.scalars(select(ApiKey))}
    assert rows["k-write"].key_hash == hashlib.sha256(keys["write"].encode()).hexdigest()
    assert rows["k-write"].scope == "write"
    assert all(keys[sc] not in (r.key_hash, r.prefix, r.name) for r in rows.values() for sc in keys)
    assert cli(["apikey", "create", "k-read", "--collection", str(root / "coll")]) == 2  # names are unique
    assert cli(["apikey", "list", "--collection", str(root / "coll"), "--json"]) == 0
    listed = capsys.readouterr().out
    assert "k-admin" in listed and keys["admin"] not in listed and rows["k-admin"].key_hash not in listed


@pytest.fixture()
def client(keyed, tiny_encoder):
    root, _ = keyed
    app = create_app(Settings(collection=root / "coll", api_library_roots=[root / "lib"]),
                     encoder_loader=lambda s: tiny_encoder)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("method,url,kwargs", MUTATING, ids=["start-job", "cancel-job"])
def test_mutating_routes_refuse_missing_wrong_and_read_keys(client, keyed, method, url, kwargs):
    _, keys = keyed
    call = getattr(client, method)
    err = assert_error(call(API + url, **kwargs), 401, "unauthorized")
    assert "X-API-Key" in err["message"]
    assert call(API + url, **kwargs).headers["www-authenticate"] == "APIKey"
    wrong = keys["write"][:-4] + "AAAA"  # right prefix, wrong secret
    for bad in (wrong, "pdx_nope", "x" * 1000, "ключ".encode()):
        assert_error(call(API + url, headers={"X-API-Key": bad}, **kwargs), 401, "unauthorized")
    assert_error(call(API + url, headers={"X-API-Key": keys["read"]}, **kwargs), 403, "forbidden")
    for scope in ("write", "admin"):  # past the key check: the route's own answer
        resp = call(API + url, headers={"X-API-Key": keys[scope]}, **kwargs)
        assert resp.status_code in (403, 404) and resp.json()["error"]["code"] in ("path_not_allowed", "not_found")


def test_admin_scope_and_reads_open_by_default(client, keyed):
    _, keys = keyed
    assert client.post(f"{API}/search", json={"text": "a photo"}).status_code == 200
    assert client.get(f"{API}/index/jobs").status_code == 200
    assert_error(client.get(f"{API}/apikeys"), 401)
    assert_error(client.get(f"{API}/apikeys", headers={"X-API-Key": keys["write"]}), 403, "forbidden")
    listed = client.get(f"{API}/apikeys", headers={"X-API-Key": keys["admin"]})
    assert listed.status_code == 200 and {r["name"] for r in listed.json()} >= {"k-read", "k-write", "k-admin"}
    assert "key_hash" not in listed.text and keys["admin"] not in listed.text


def test_reads_need_a_key_when_the_setting_says_so(keyed, tiny_encoder, capsys):
    root, keys = keyed
    app = create_app(Settings(collection=root / "coll", api_require_key_for_reads=True),
                     encoder_loader=lambda s: tiny_encoder)
    with TestClient(app) as c:
        for method, url, kw in [("post", "/search", {"json": {"text": "a"}}), ("get", "/photos/1", {}),
                                ("get", "/tags", {}), ("get", "/index/jobs", {})]:
            assert_error(getattr(c, method)(API + url, **kw), 401)
            assert getattr(c, method)(API + url, headers={"X-API-Key": keys["read"]}, **kw).status_code == 200
        assert c.get(f"{API}/healthz").status_code == 200 and c.get(f"{API}/readyz").status_code == 200
        assert cli(["apikey", "revoke", "k-read", "--collection", str(root / "coll")]) == 0
        assert_error(c.get(f"{API}/tags", headers={"X-API-Key": keys["read"]}), 401)


def test_cors_off_by_default_and_on_when_configured(keyed, tiny_encoder):
    root, _ = keyed
    pre = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(Settings(collection=root / "coll"), encoder_loader=lambda s: tiny_encoder)) as c:
        assert "access-control-allow-origin" not in c.options(f"{API}/search", headers=pre).headers
    app = create_app(Settings(collection=root / "coll", api_cors_origins=["https://ui.example"]),
                     encoder_loader=lambda s: tiny_encoder)
    with TestClient(app) as c:
        assert c.options(f"{API}/search", headers=pre).headers["access-control-allow-origin"] == "https://ui.example"
