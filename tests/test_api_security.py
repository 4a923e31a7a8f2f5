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
from ui.api.security import create_api_key
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


# ---- private by default beyond loopback (issue 25) ---------------------------------------------
PRIVATE_READS = [("get", "/photos/1/original", {}), ("post", "/search", {"json": {"text": "a photo"}}),
                 ("get", "/decisions", {}), ("get", "/metrics", {})]


@pytest.fixture(scope="module")
def read_key(keyed):
    root, _ = keyed
    with Collection.open(root / "coll") as coll:
        return create_api_key(coll.catalog, "private-read", "read")


def _app(keyed, tiny_encoder, **settings):
    root, _ = keyed
    return create_app(Settings(collection=root / "coll", **settings), encoder_loader=lambda s: tiny_encoder)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "fe80::1"])
def test_a_server_bound_beyond_loopback_needs_a_key_for_reads(keyed, tiny_encoder, read_key, host):
    with TestClient(_app(keyed, tiny_encoder, api_host=host)) as c:
        for method, url, kw in PRIVATE_READS:
            err = assert_error(getattr(c, method)(API + url, **kw), 401, "unauthorized")
            assert "X-API-Key" in err["message"] and "scope read" in err["message"]
            assert getattr(c, method)(API + url, headers={"X-API-Key": read_key}, **kw).status_code == 200, url
        assert c.get(f"{API}/healthz").status_code == 200
        ready = c.get(f"{API}/readyz")
        assert ready.status_code == 200 and ready.json()["reads_need_key"] is True


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_loopback_server_keeps_reads_open(keyed, tiny_encoder, host, caplog):
    with caplog.at_level("WARNING"), TestClient(_app(keyed, tiny_encoder, api_host=host)) as c:
        for method, url, kw in PRIVATE_READS:
            assert getattr(c, method)(API + url, **kw).status_code == 200, url
        assert c.get(f"{API}/readyz").json()["reads_need_key"] is False
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_explicit_false_opens_reads_beyond_loopback_and_warns_once(keyed, tiny_encoder, caplog):
    with caplog.at_level("WARNING"):
        app = _app(keyed, tiny_encoder, api_host="0.0.0.0", api_require_key_for_reads=False)
        with TestClient(app) as c:
            for method, url, kw in PRIVATE_READS:
                assert getattr(c, method)(API + url, **kw).status_code == 200, url
            assert_error(c.post(f"{API}/index/jobs", json={"paths": ["/x"]}), 401)  # writes still need a key
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "0.0.0.0" in warnings[0] and "PHOTODEX_API_REQUIRE_KEY_FOR_READS=false" in warnings[0]
    assert all(word in warnings[0] for word in ("original", "search", "decisions", "metrics"))


def test_explicit_true_needs_a_key_even_on_loopback(keyed, tiny_encoder, read_key):
    with TestClient(_app(keyed, tiny_encoder, api_host="127.0.0.1", api_require_key_for_reads=True)) as c:
        assert_error(c.get(f"{API}/metrics"), 401)
        assert c.get(f"{API}/metrics", headers={"X-API-Key": read_key}).status_code == 200


def test_setting_distinguishes_unset_from_false(monkeypatch):
    assert Settings().api_require_key_for_reads is None
    monkeypatch.setenv("PHOTODEX_API_REQUIRE_KEY_FOR_READS", "false")
    assert Settings().api_require_key_for_reads is False
    monkeypatch.setenv("PHOTODEX_API_HOST", "0.0.0.0")
    assert Settings().api_host == "0.0.0.0"


def test_unknown_bind_address_decides_by_the_address_a_request_arrived_at(keyed, tiny_encoder, read_key):
    """Started by something other than `photodex serve` (no PHOTODEX_API_HOST): a request that reached a
    non-loopback local address proves the server listens beyond loopback."""
    app = _app(keyed, tiny_encoder)
    with TestClient(app, base_url="http://10.1.2.3") as remote, TestClient(app, base_url="http://127.0.0.1") as local:
        assert_error(remote.get(f"{API}/decisions"), 401)
        assert remote.get(f"{API}/decisions", headers={"X-API-Key": read_key}).status_code == 200
        assert local.get(f"{API}/decisions").status_code == 200


def test_loopback_rule():
    from ui.api.access import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.255.0.9", "::1", "localhost", "::ffff:127.0.0.1"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "10.0.0.1", "fe80::1", "no-such-host.invalid"))


# ---- throttled key guessing --------------------------------------------------------------------
def test_the_21st_bad_key_in_a_minute_is_429_and_a_valid_key_is_still_served(keyed, tiny_encoder, read_key):
    app = _app(keyed, tiny_encoder, api_host="0.0.0.0")
    with TestClient(app) as c, TestClient(app, client=("10.9.9.9", 4000)) as other:
        bad = {"X-API-Key": read_key[:-4] + "AAAA"}
        for _ in range(20):
            assert_error(c.post(f"{API}/search", json={"text": "a"}, headers=bad), 401)
        err = c.post(f"{API}/search", json={"text": "a"}, headers=bad)
        assert_error(err, 429, "too_many_requests")
        assert 1 <= int(err.headers["retry-after"]) <= 60
        assert_error(c.get(f"{API}/decisions"), 429)  # no key from a throttled address: 429 too
        assert_error(c.post(f"{API}/index/jobs", json={"paths": ["/x"]}, headers=bad), 429)
        assert c.post(f"{API}/search", json={"text": "a"}, headers={"X-API-Key": read_key}).status_code == 200
        assert_error(other.get(f"{API}/decisions", headers=bad), 401)  # another address is not throttled
        metrics = c.get(f"{API}/metrics", headers={"X-API-Key": read_key}).text
    assert 'photodex_api_key_refusals_total{reason="unknown_key",status="401"} 21.0' in metrics
    assert 'photodex_api_key_refusals_total{reason="throttled",status="429"} 3.0' in metrics


def test_throttle_setting_and_window():
    from ui.api.throttle import KeyThrottle

    now = [1000.0]
    t = KeyThrottle(limit=3, window=60, clock=lambda: now[0])
    assert [t.refuse("a") for _ in range(4)] == [None, None, None, 60]
    now[0] += 59.2
    assert t.retry_after("a") == 1 and t.retry_after("b") is None
    now[0] += 1
    assert t.retry_after("a") is None and t.refuse("a") is None  # a new minute, a new count
    assert Settings(api_max_failed_keys_per_minute=5).api_max_failed_keys_per_minute == 5
