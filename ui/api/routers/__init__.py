"""One router per domain, each mounted under ``/api/v1`` by :func:`ui.api.app.create_app`.

Modules:
    system      healthz, readyz, metrics (Prometheus text)
    search      text search, search by uploaded image, similar photos
    photos      photo metadata, thumbnail and original (by catalog id only)
    classify    zero-shot classification of an upload or a photo; tag counts
    index_jobs  start, follow and cancel index jobs (one writer at a time)
    keys        list API keys (admin)
    moderation  moderate an upload or photo, policies, decisions, rescan (dry run first), calibration
    ask         questions answered by the VLM over retrieved photos, JSON or text/event-stream
"""
