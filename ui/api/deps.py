"""``Annotated`` dependencies: settings, runtime, collection, searcher, and API-key access levels.

Access: mutating routes need a key of scope ``write`` (``admin`` where stated); read routes need a
``read`` key when :mod:`ui.api.access` says so (beyond loopback, unless explicitly opened). A
missing or unknown key is 401 (429 once the client address has had too many keys refused, see
:mod:`ui.api.throttle`), a key with too small a scope is 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader

from indexer.collection import Collection
from ui.settings import Settings
from retrieval.search.searcher import Searcher

from .access import reads_need_key
from .errors import ApiError
from .runtime import Runtime
from .security import Principal, verify_api_key

API_KEY_HEADER = "X-API-Key"
api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description="an API key of scope read, write or admin (the server's operator "
                                          "makes one with `photodex apikey create`)")


def _runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "not_ready", "the API is starting or stopping")
    return runtime


async def get_runtime(request: Request) -> Runtime:
    return _runtime(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_collection(runtime: RuntimeDep) -> Collection:
    return runtime.collection


async def get_searcher(runtime: RuntimeDep) -> Searcher:
    return runtime.searcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
CollectionDep = Annotated[Collection, Depends(get_collection)]
SearcherDep = Annotated[Searcher, Depends(get_searcher)]
ApiKeyDep = Annotated[str | None, Security(api_key_header)]


def reads_protected(request: Request) -> bool:
    """Whether a read route needs a key for this request (the rule decided at start, see :mod:`ui.api.access`)."""
    server = request.scope.get("server")
    return reads_need_key(request.app.state.read_rule, str(server[0]) if server else None)


def _refused(request: Request, reason: str, message: str) -> ApiError:
    """401 ``message``, or 429 while the client's address is throttled; counted in the metrics either way."""
    throttle = request.app.state.key_throttle
    address = request.client.host if request.client else ""
    wait = throttle.refuse(address) if reason == "unknown_key" else throttle.retry_after(address)
    metrics = request.app.state.metrics
    if wait is not None:
        metrics.key_refusals.labels("429", "throttled").inc()
        return ApiError(429, "too_many_requests", f"too many refused API keys from this address; retry in {wait} s",
                        headers={"Retry-After": str(wait)})
    metrics.key_refusals.labels("401", reason).inc()
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "APIKey"})


def _principal(request: Request, key: str | None, scope: str) -> Principal:
    if not key:
        raise _refused(request, "missing_key", f"this route needs an API key of scope {scope} in the {API_KEY_HEADER} "
                       "header (the server's operator makes one with `photodex apikey create`)")
    principal = verify_api_key(_runtime(request).collection.catalog, key)
    if principal is None:
        raise _refused(request, "unknown_key", "unknown or revoked API key")
    return principal


def _require(scope: str, only_if_reads_protected: bool = False):  # noqa: ANN202 - a dependency
    def check(request: Request, key: ApiKeyDep) -> Principal | None:
        if only_if_reads_protected and not reads_protected(request):
            return None
        principal = _principal(request, key, scope)
        if not principal.allows(scope):
            raise ApiError(403, "forbidden", f"this route needs an API key of scope {scope!r}; "
                           f"key {principal.name!r} has scope {principal.scope!r}")
        return principal

    check.__name__ = f"require_{scope}"
    check.reads_only = only_if_reads_protected  # type: ignore[attr-defined]
    return check


def _dependency(check):  # noqa: ANN001, ANN202 - an async dependency around a check
    async def dependency(request: Request, key: ApiKeyDep) -> Principal | None:
        if check.reads_only and not reads_protected(request):
            return None  # no thread hop when reads are open
        return await run_in_threadpool(check, request, key)  # a catalog read

    dependency.__name__ = check.__name__
    return dependency


require_read = _require("read", only_if_reads_protected=True)
require_write = _require("write")
require_admin = _require("admin")

# async: FastAPI runs a plain ``def`` dependency in the shared thread pool, so under load every request
# would queue there several times before its route even starts (issue 20.4)
ReadAccess = Depends(_dependency(require_read))
WriteAccess = Depends(_dependency(require_write))
AdminAccess = Depends(_dependency(require_admin))
