"""``Annotated`` dependencies: settings, runtime, collection, searcher, and API-key access levels.

Access: mutating routes need a key of scope ``write`` (``admin`` where stated); read routes need a
``read`` key only when ``PHOTODEX_API_REQUIRE_KEY_FOR_READS`` is set. A missing or unknown key is
401, a key with too small a scope is 403.

The dependencies are ``async``: FastAPI runs a plain ``def`` dependency in the shared thread pool,
so under load every request would queue there several times before its route even starts.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader

from indexer.collection import Collection
from indexer.settings import Settings
from retrieval.search.searcher import Searcher

from .errors import ApiError
from .runtime import Runtime
from .security import Principal, verify_api_key

API_KEY_HEADER = "X-API-Key"
api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description="an API key from `photodex apikey create NAME --scope read|write|admin`")


async def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "not_ready", "the API is starting or stopping")
    return runtime


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


def _principal(runtime: Runtime, key: str | None) -> Principal:
    challenge = {"WWW-Authenticate": "APIKey"}
    if not key:
        raise ApiError(401, "unauthorized", f"this route needs an API key in the {API_KEY_HEADER} header",
                       headers=challenge)
    principal = verify_api_key(runtime.collection.catalog, key)
    if principal is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", headers=challenge)
    return principal


def _require(scope: str, only_if_reads_protected: bool = False):  # noqa: ANN202 - a check
    def check(runtime: Runtime, settings: Settings, key: str | None) -> Principal | None:
        if only_if_reads_protected and not settings.api_require_key_for_reads:
            return None
        principal = _principal(runtime, key)
        if not principal.allows(scope):
            raise ApiError(403, "forbidden", f"this route needs an API key of scope {scope!r}; "
                           f"key {principal.name!r} has scope {principal.scope!r}")
        return principal

    check.__name__ = f"require_{scope}"
    check.reads_only = only_if_reads_protected  # type: ignore[attr-defined]
    return check


def _dependency(check):  # noqa: ANN001, ANN202 - an async dependency around a check
    async def dependency(runtime: RuntimeDep, settings: SettingsDep, key: ApiKeyDep) -> Principal | None:
        if check.reads_only and not settings.api_require_key_for_reads:
            return None  # no thread hop when reads are open
        return await run_in_threadpool(check, runtime, settings, key)  # a catalog read

    dependency.__name__ = check.__name__
    return dependency


require_read = _require("read", only_if_reads_protected=True)
require_write = _require("write")
require_admin = _require("admin")

ReadAccess = Depends(_dependency(require_read))
WriteAccess = Depends(_dependency(require_write))
AdminAccess = Depends(_dependency(require_admin))
