"""The photodex HTTP API (FastAPI), served by ``photodex serve``; everything under ``/api/v1``.

Modules:
    app         create_app(settings): lifespan, routers, error handlers, CORS, metrics, OpenAPI
    settings    the API's settings part (PHOTODEX_API_*)
    deps        Annotated dependencies: settings, runtime, collection, searcher, API-key access
    access      whether read routes need a key (explicit setting, else the bind address)
    throttle    refused API keys counted per client address (429 + Retry-After beyond the limit)
    errors      the one error shape {"error": {"code", "message", "detail"}} and its handlers
    schemas     pydantic request and response models (search, photos, tags, jobs, keys, errors)
    moderation_schemas  response models of the moderation routes (pydantic only: the web UI reads them)
    ask_schemas         response models of the ask route (likewise)
    security    API keys: create, list, revoke, verify (sha256 in the catalog, constant-time compare)
    runtime     what a running API holds: collection, warm encoder (calls batched), index view, searcher, jobs
    batcher     encoder calls of concurrent requests gathered into shared model calls
    workpool    the encoder routes' own thread pool (cheap routes never queue behind them)
    jobs        index jobs in background threads holding the writer lock; library-root allow-list
    uploads     upload checks: bytes (413), not an image (415), pixels (422)
    metrics     Prometheus registry and the per-route request/latency middleware
    routers     one router per domain (see routers/__init__.py)
"""
