"""``/healthz`` (liveness), ``/readyz`` (collection open, encoder warm), ``/metrics`` (Prometheus).

``/healthz`` and ``/readyz`` are always open (health checks, and the web UI learns from ``/readyz``
whether reads need a key); ``/metrics`` follows the read rule.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import ReadAccess, RuntimeDep, reads_protected
from ..errors import responses
from ..schemas import HealthOut, ReadyOut

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """The process is up (no dependencies checked)."""
    return HealthOut(status="ok")


@router.get("/readyz", response_model=ReadyOut, responses=responses(503))
def readyz(request: Request, runtime: RuntimeDep) -> ReadyOut:
    """The collection is open and its catalog answers; the encoder is loaded and warm."""
    coll = runtime.collection
    vectors = len(coll.vector_ids())
    return ReadyOut(status="ready", collection=str(coll.path), encoder=runtime.encoder.spec.id, vectors=vectors,
                    reads_need_key=reads_protected(request))


@router.get("/metrics", response_class=Response, dependencies=[ReadAccess],
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
                       **responses(401, 403, 429)})
async def metrics(request: Request) -> Response:
    """Request counts and latency histograms per route, encoder and search timings."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
