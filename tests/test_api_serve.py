"""A real `photodex serve` process on loopback, spoken to with httpx; two workers on a PostgreSQL catalog."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from indexer.collection import Collection
from indexer.run import RunOptions, index_paths
from retrieval.index.store import refresh_index
from tests.helpers import env_offline, make_library
from ui.api.security import create_api_key

API = "/api/v1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(*args: str, timeout: float = 90, env: dict[str, str] | None = None,
          output: list[str] | None = None) -> Iterator[str]:
    """`photodex serve` on a free port, reached through 127.0.0.1 (``output``: its log, once it stopped)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ui.cli", "serve", "--port", str(port), *args],
                            env={**env_offline(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read()}")
            try:
                if httpx.get(f"{base}{API}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not become ready")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if output is not None:
            output.append(proc.stdout.read())


def _collection(root: Path, encoder, database_url: str | None = None) -> Path:
    make_library(root / "lib", 8)
    with Collection.open_for_encoder(root / "coll", encoder.spec, database_url) as coll:
        index_paths(coll, encoder, [root / "lib"], RunOptions(batch_size=8, workers=0))
        refresh_index(coll)
    return root / "coll"


def test_real_server_on_loopback(tmp_path, tiny_encoder):
    coll_dir = _collection(tmp_path, tiny_encoder)
    with serve("--collection", str(coll_dir)) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert c.get(f"{API}/healthz").json() == {"status": "ok"}
        hits = c.post(f"{API}/search", json={"text": "a photo", "k": 3, "collapse": None})
        assert hits.status_code == 200 and len(hits.json()["results"]) == 3
        pid = hits.json()["results"][0]["id"]
        orig = c.get(f"{API}/photos/{pid}/original")
        assert orig.content == Path(hits.json()["results"][0]["paths"][0]).read_bytes()
        for raw in (f"{API}/photos/..%2F..%2F..%2Fetc%2Fpasswd",
                    f"{API}/photos/{pid}%2F..%2F..%2Fetc%2Fpasswd/original"):
            resp = c.get(httpx.URL(base + raw))  # sent as is: no client-side normalisation
            assert resp.status_code in (404, 422) and set(resp.json()) == {"error"} and "root:" not in resp.text
        assert c.post(f"{API}/index/jobs", json={"paths": ["/tmp"]}).status_code == 401
        big = c.post(f"{API}/search/image", files={"file": ("x.png", b"\0" * (40 * 1024 * 1024), "image/png")})
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
        assert 'route="/api/v1/search",status="200"' in c.get(f"{API}/metrics").text
        assert c.get(f"{API}/decisions").status_code == 200  # loopback: reads stay open without a key


PRIVATE_READS = [("get", "/photos/{pid}/original", {}), ("post", "/search", {"json": {"text": "a photo"}}),
                 ("get", "/decisions", {}), ("get", "/metrics", {})]


def test_a_server_bound_to_all_interfaces_needs_a_read_key(tmp_path, tiny_encoder):
    coll_dir = _collection(tmp_path, tiny_encoder)
    with Collection.open(coll_dir) as coll:
        key = create_api_key(coll.catalog, "reader", "read")
        pid = min(coll.vector_ids())
    with serve("--host", "0.0.0.0", "--collection", str(coll_dir)) as base, \
            httpx.Client(base_url=base, timeout=30) as c:  # reached through 127.0.0.1 only
        assert c.get(f"{API}/healthz").status_code == 200 and c.get(f"{API}/readyz").status_code == 200
        for method, url, kw in PRIVATE_READS:
            url = API + url.format(pid=pid)
            resp = c.request(method, url, **kw)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized", (url, resp.text)
            assert c.request(method, url, headers={"X-API-Key": key}, **kw).status_code == 200, url


def test_explicit_false_opens_reads_on_all_interfaces_and_warns_once(tmp_path, tiny_encoder):
    coll_dir = _collection(tmp_path, tiny_encoder)
    log: list[str] = []
    with serve("--host", "0.0.0.0", "--collection", str(coll_dir), output=log,
               env={"PHOTODEX_API_REQUIRE_KEY_FOR_READS": "false"}) as base, \
            httpx.Client(base_url=base, timeout=30) as c:
        pid = c.post(f"{API}/search", json={"text": "a photo", "k": 1}).json()["results"][0]["id"]
        for method, url, kw in PRIVATE_READS:
            assert c.request(method, API + url.format(pid=pid), **kw).status_code == 200, url
    warnings = [line for line in log[0].splitlines() if "PHOTODEX_API_REQUIRE_KEY_FOR_READS=false" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING") and "0.0.0.0" in warnings[0], log[0]


def test_two_workers_on_postgresql(tmp_path, tiny_encoder, pg_database_url):
    coll_dir = _collection(tmp_path, tiny_encoder, pg_database_url)
    with Collection.open(coll_dir, pg_database_url) as coll:
        key = create_api_key(coll.catalog, "w", "write")
    args = ("--collection", str(coll_dir), "--database-url", pg_database_url, "--workers", "2")
    with serve(*args) as base, httpx.Client(base_url=base, timeout=30) as c:
        ids = set()
        for _ in range(30):
            resp = c.post(f"{API}/search", json={"text": "a photo", "k": 8, "collapse": None})
            assert resp.status_code == 200, resp.text
            ids.add(tuple(h["id"] for h in resp.json()["results"]))
        assert len(ids) == 1  # every worker answers the same
        # a key created in the shared catalog is known to every worker; keys are checked there
        for _ in range(6):
            assert c.post(f"{API}/index/jobs", json={"paths": ["/tmp"]}, headers={"X-API-Key": key}).status_code == 403
            bad = c.post(f"{API}/index/jobs", json={"paths": ["/tmp"]}, headers={"X-API-Key": "pdx_bad"})
            assert bad.status_code == 401


def _wait_ready(proc: subprocess.Popen, base: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"{base}{API}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not become ready"
        time.sleep(0.2)


def test_a_sigkilled_server_leaves_no_worker_holding_its_port(tmp_path, tiny_encoder):
    """An index job's decode workers are forks of the server: they must not keep its listening socket, and
    they die with it, so a restart right after ``kill -9`` binds the port at once."""
    import json
    import os
    import signal

    from tests.helpers import alive, children_of, slow_photos

    coll_dir = _collection(tmp_path, tiny_encoder)
    slow_photos(tmp_path / "lib" / "slow", 16)
    with Collection.open(coll_dir) as coll:
        key = create_api_key(coll.catalog, "w", "write")
    env = {**env_offline(), "PHOTODEX_API_LIBRARY_ROOTS": json.dumps([str(tmp_path / "lib")]),
           "PHOTODEX_WORKERS": "2", "PHOTODEX_BATCH_SIZE": "2"}
    port = _free_port()
    cmd = [sys.executable, "-m", "ui.cli", "serve", "--port", str(port), "--collection", str(coll_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    restarted = None
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(proc, base)
        job = httpx.post(f"{base}{API}/index/jobs", json={"paths": [str(tmp_path / "lib" / "slow")]},
                         headers={"X-API-Key": key}, timeout=30)
        assert job.status_code == 202, job.text
        deadline = time.monotonic() + 120
        while not (workers := children_of(proc.pid)):
            assert time.monotonic() < deadline and proc.poll() is None, "the job's decode workers never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        with socket.socket() as again:  # as uvicorn binds: refused while any process still listens there
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))
        deadline = time.monotonic() + 2
        while any(alive(w) for w in workers):
            assert time.monotonic() < deadline, f"decode workers {workers} outlived their killed server"
            time.sleep(0.05)
        restarted = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _wait_ready(restarted, base)
    finally:
        for p in (proc, restarted):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=30)
