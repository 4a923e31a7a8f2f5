"""The FastAPI app: :func:`create_app` wires settings, lifespan, routers, errors, CORS and metrics.

The lifespan opens the collection, loads and warms the encoder and opens the search index (in a
worker thread), and closes everything at shutdown. Model and database work runs in worker threads,
never on the event loop: routes that need the encoder in their own pool (:mod:`.workpool`), the
others in FastAPI's; concurrent encoder calls are batched (:mod:`.batcher`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from ui.settings import Settings, get_settings

from .access import read_rule
from .errors import install_error_handlers
from .jobs import Runner
from .metrics import Metrics, MetricsMiddleware
from .routers import ask, classify, index_jobs, keys, moderation, photos, search, system
from .runtime import EncoderLoader, open_runtime
from .throttle import KeyThrottle
from .uploads import BodySizeLimit

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
VERSION = "1.0.0"
MULTIPART_OVERHEAD = 64 * 1024  # room for form fields and part headers around one upload

# One module per domain, each with a ``router``.
ROUTER_MODULES: tuple[ModuleType, ...] = (system, search, photos, classify, moderation, ask, index_jobs, keys)


def create_app(settings: Settings | None = None, *, encoder_loader: EncoderLoader | None = None,
               index_runner: Runner | None = None) -> FastAPI:
    """The photodex API for ``settings`` (default: from the environment).

    ``encoder_loader`` (settings → encoder) and ``index_runner`` (``index_paths``'s signature)
    replace the defaults, e.g. to share a loaded model or to drive a job step by step in tests."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.encoder_limiter = anyio.CapacityLimiter(settings.api_encoder_threads)  # ui.api.workpool
        runtime = await run_in_threadpool(open_runtime, settings, metrics, encoder_loader, index_runner)
        app.state.runtime = runtime
        try:
            yield
        finally:
            app.state.runtime = None
            await run_in_threadpool(runtime.close)

    max_body = settings.api_max_upload_bytes + MULTIPART_OVERHEAD
    app = FastAPI(title="photodex", version=VERSION, lifespan=lifespan,
                  description="Search, classify and index a photo collection embedded with a CLIP-family encoder.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = None
    app.state.read_rule = read_rule(settings)  # private beyond loopback unless explicitly opened
    app.state.key_throttle = KeyThrottle(settings.api_max_failed_keys_per_minute)
    install_error_handlers(app)
    for module in ROUTER_MODULES:
        app.include_router(module.router, prefix=API_PREFIX)
    if settings.api_cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=[str(o) for o in settings.api_cors_origins],
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Content-Type", "X-API-Key"])
    app.add_middleware(BodySizeLimit, max_body_size=max_body)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts every request
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    metrics.set_route_templates(app.openapi()["paths"])
    return app


def app_from_env() -> FastAPI:
    """App factory for uvicorn (``ui.api.app:app_from_env``, ``factory=True``): settings from ``PHOTODEX_*``."""
    return create_app(get_settings())


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with FastAPI's default validation-error schema replaced by the one error shape."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for operations in schema.get("paths", {}).values():
        for op in operations.values():
            for status, response in op.get("responses", {}).items():
                if status[0] in "45":
                    response["content"] = {"application/json": {"schema": ref}}
    schema = _rename_form_bodies(schema)
    app.openapi_schema = schema
    return schema


def _rename_form_bodies(schema: dict[str, Any]) -> dict[str, Any]:
    """Give FastAPI's generated ``Body_<operation id>`` form schemas readable names (``SearchImageForm``)."""
    renames: dict[str, str] = {}
    for operations in schema.get("paths", {}).values():
        for op in operations.values():
            generated = f"Body_{op.get('operationId', '')}"
            if generated in schema["components"]["schemas"]:
                renames[generated] = op.get("summary", generated).title().replace(" ", "") + "Form"
    text = json.dumps(schema)
    for old, new in renames.items():
        text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    schema = json.loads(text)
    components = schema["components"]["schemas"]
    for old, new in renames.items():
        components[new] = {**components.pop(old), "title": new}
    return schema
