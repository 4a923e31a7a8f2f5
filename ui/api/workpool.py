"""Encoder routes run in their own thread pool, so cheap routes never queue behind them.

FastAPI runs every ``def`` route in anyio's default thread pool, 40 threads shared by all routes.
Routes that wait on the model (search by text or image, ``/moderate``, ``/classify``) would hold
those threads while their requests queue for the encoder: with 200 searching clients, a
``GET /photos/{id}`` waited seconds for a free thread. These routes are ``async`` and hand
their blocking work to :func:`run_encoder_work`, which uses a separate limiter
(``PHOTODEX_API_ENCODER_THREADS``), so the default pool stays free for metadata, thumbnails,
originals, health and decisions.

:func:`run_encoder_work` also watches for the client going away: its encoder calls are then
dropped before they run (:func:`ui.api.batcher.abandon_on`) and cost the other requests nothing.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Request

from .batcher import RequestAbandoned, abandon_on
from .errors import ApiError

T = TypeVar("T")
DISCONNECT_POLL_S = 0.1


def encoder_limiter(request: Request) -> anyio.CapacityLimiter:
    """The app's limiter for encoder work (made in the lifespan, inside the event loop)."""
    return request.app.state.encoder_limiter


def _call(abandoned: threading.Event, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    with abandon_on(abandoned):
        return fn(*args, **kwargs)


async def run_encoder_work(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on a thread of the encoder pool; abandoned if the client disconnects."""
    abandoned = threading.Event()

    async def watch() -> None:
        while not await request.is_disconnected():
            await anyio.sleep(DISCONNECT_POLL_S)
        abandoned.set()

    watcher = asyncio.ensure_future(watch())  # not a task group: the route's own errors stay ungrouped
    try:
        return await anyio.to_thread.run_sync(functools.partial(_call, abandoned, fn, args, kwargs),
                                              limiter=encoder_limiter(request))
    except RequestAbandoned:
        raise ApiError(499, "client_closed_request", "the client closed the request") from None
    finally:
        watcher.cancel()
