"""Property-based fuzzing of the OpenAPI document with schemathesis 4 on the synthetic world.

The schema is loaded with ``schemathesis.openapi.from_asgi``; every generated case is sent through
``TestClient(app)`` with the lifespan running (collection open, encoder warm, tiny VLM configured so
``/ask`` answers instead of documenting its 503). Checks: no 5xx, the status code is documented, the
content type and the body match the schema. Bounded: a few examples per operation, a per-example
deadline, no shrinking, and an overall time budget (the file runs in well under a minute here).

Two passes: anonymous (mutating and admin routes answer 401, which must be documented) and with an
admin key (the write/admin routes are reached; index jobs may only name paths under the library roots,
which the fuzzer does not guess, so they answer 403 and no indexing work is started).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as st_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from indexer.collection import Collection
from tests.helpers import SMALL_WORLD
from ui.settings import Settings
from ui.api.app import create_app
from ui.api.security import create_api_key

MAX_EXAMPLES = 8       # per operation and pass
DEADLINE_MS = 5_000    # per example (the tiny VLM on 2 CPU cores answers in well under a second)
BUDGET_S = 45.0        # per pass; operations left when it runs out are reported, not silently passed


@pytest.fixture(scope="module")
def world(world_of, tmp_path_factory):
    """A copy of the small shared world: the fuzzer calls every route with an admin key."""
    return world_of(*SMALL_WORLD).copy(tmp_path_factory.mktemp("api_fuzz") / "collection")


@pytest.fixture(scope="module")
def admin_key(world) -> str:
    with Collection.open(world.path) as coll:
        return create_api_key(coll.catalog, "fuzz", "admin")


@pytest.fixture(scope="module")
def app(world, world_tiny_vlm_dir, admin_key):
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    settings = Settings(collection=world.path, vlm=str(world_tiny_vlm_dir), device="cpu", vlm_max_new_tokens=4,
                        api_max_upload_bytes=200_000, api_max_upload_pixels=400 * 400)
    return create_app(settings, encoder_loader=lambda s: world.encoder)


@pytest.fixture(scope="module")
def api_schema(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # from_asgi starts the app's lifespan in schemathesis' own client; stop it so the only running
    # lifespan (and runtime) is the TestClient's below.
    st_asgi.shutdown_lifespans()
    return schema


@pytest.fixture(scope="module")
def client(app, api_schema):
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/api/v1/readyz").status_code == 200
        yield c


def _send(client: TestClient, case: Any, headers: dict[str, str]) -> httpx.Response:
    """The case, serialised by schemathesis (requests-style kwargs), sent through the TestClient (httpx)."""
    kw = case.as_transport_kwargs(base_url=str(client.base_url), headers=headers)
    kw.pop("cookies", None)  # the API reads none; httpx deprecates per-request cookies
    out: dict[str, Any] = {k: kw[k] for k in ("method", "url", "headers", "params") if kw.get(k) is not None}
    if "json" in kw:
        out["json"] = kw["json"]
    data = kw.get("data")
    if isinstance(data, (bytes, str)):
        out["content"] = data
    elif data is not None:
        out["data"] = data
    if kw.get("files") is not None:  # requests turns (None, 3) into a form field "3"; httpx wants str or bytes
        out["files"] = [(name, tuple(v if isinstance(v, (str, bytes)) or v is None else str(v) for v in part))
                        for name, part in kw["files"]]
    request = client.build_request(**out)
    request.read()  # multipart bodies are streams; schemathesis reads the request back for its report
    return client.send(request)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _fuzzer(op: Any, client: TestClient, headers: dict[str, str], seen: Counter) -> Any:
    """A bounded hypothesis test of one operation: send each case, count its status, run the checks."""

    @settings(max_examples=MAX_EXAMPLES, deadline=DEADLINE_MS, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy())
    def run(case: Any) -> None:
        resp = _send(client, case, headers)
        seen[(op.label, resp.status_code)] += 1
        case.validate_response(resp, checks=CHECKS)

    return run


def _fuzz(api_schema, client: TestClient, headers: dict[str, str]) -> tuple[Counter, list[str], list[str]]:
    """Run every operation; returns ((operation, status) counts, failures, operations not reached in the budget)."""
    failures: list[str] = []
    skipped: list[str] = []
    seen: Counter = Counter()
    start = time.monotonic()
    for result in api_schema.get_all_operations():
        op = result.ok()
        if time.monotonic() - start > BUDGET_S:
            skipped.append(op.label)
            continue

        run = _fuzzer(op, client, headers, seen)
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - collected and reported together
            failures.append(f"{op.label}: {type(exc).__name__}: {str(exc)[:1500]}")
    return seen, failures, skipped


@pytest.mark.parametrize("who", ["anonymous", "admin"])
def test_openapi_fuzz(api_schema, client, admin_key, who):
    headers = {"X-API-Key": admin_key} if who == "admin" else {}
    seen, failures, skipped = _fuzz(api_schema, client, headers)
    print(f"\n{who}: {sum(seen.values())} cases;", ", ".join(f"{op} {st}x{n}" for (op, st), n in sorted(seen.items())))
    assert not failures, "\n\n".join(failures)
    assert len({op for op, _ in seen}) == len(list(api_schema.get_all_operations())), "an operation got no case"
    assert any(op == "POST /api/v1/search" and st == 200 for op, st in seen)
    assert any(op == "POST /api/v1/ask" and st == 200 for op, st in seen)
    assert not skipped, f"budget ran out before: {skipped}"
