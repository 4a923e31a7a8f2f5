"""Prometheus metrics (prometheus-client): per-route request counts and latencies, model and search timings.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (no process-global state, so
several apps can live in one process, e.g. in tests). Routes are labelled by their template
(``/api/v1/photos/{photo_id}``), never by the raw path, so the label set stays small.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The app's metrics in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("photodex_http_requests", "HTTP requests by method, route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("photodex_http_request_duration_seconds", "HTTP request latency by route template",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.encoder = Histogram("photodex_encoder_seconds", "Encoder calls (text or image batch), lock wait excluded",
                                 ["kind"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.search = Histogram("photodex_search_seconds", "Vector search incl. filters, collapse and hydration",
                                buckets=LATENCY_BUCKETS, registry=self.registry)
        self.key_refusals = Counter("photodex_api_key_refusals", "Requests refused for their API key: 401 (missing or "
                                    "unknown key) and 429 (too many refused keys from the address)",
                                    ["status", "reason"], registry=self.registry)
        self.jobs_running = Gauge("photodex_index_jobs_running", "Index jobs running in this process",
                                  registry=self.registry)

        self._templates: list[tuple[re.Pattern[str], str]] = []

    def set_route_templates(self, templates: Iterable[str]) -> None:
        """The app's path templates (``/api/v1/photos/{photo_id}``), used to label requests."""
        self._templates = [(compile_path(t)[0], t) for t in sorted(templates)]

    def route_of(self, path: str) -> str:
        """The template matching ``path``, or ``unmatched`` (raw paths never become labels)."""
        for regex, template in self._templates:
            if regex.match(path):
                return template
        return "unmatched"

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware counting every HTTP request by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = self.metrics.route_of(scope.get("path", ""))
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
