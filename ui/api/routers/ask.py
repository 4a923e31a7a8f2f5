"""``POST /ask``: a question answered by the VLM from retrieved photos (or one given photo), with checked citations.

JSON (:class:`~ui.api.ask_schemas.AskResponse`, the CLI's ``AskResult.to_dict()``) by default. With ``Accept:
text/event-stream`` the answer streams as Server-Sent Events (FastAPI's ``EventSourceResponse``)::

    event: token    data: "<text chunk>"          one per chunk, JSON strings
    event: answer   data: {<AskResponse>}         last: citations, dropped, ... (answer = the chunks joined)
    event: error    data: {"error": {...}}        instead of ``answer`` if answering fails mid-stream

Failures before the first chunk (bad input, unknown photo, empty collection) are ordinary error
responses, not events. The chunks are trimmed so that joined they equal the final answer exactly.

The model is the process-wide :func:`answerer.vlm.shared_vlm` for ``PHOTODEX_VLM`` (loaded on
the first request; one that cannot load is 503 ``vlm_unavailable`` with how to supply it). VLM
work runs in worker threads, never on the event loop, and one request at a time per model: a
lock covers the whole answer (processor, generate, streaming), and ``generate`` itself holds the
model's own lock.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any, Literal
from weakref import WeakKeyDictionary

from fastapi import APIRouter, Depends, Request, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict, Field, model_validator

from answerer.budget import ImageBudget
from answerer.rag import Answerer, AskOptions, AskResult, AskStream, photo_hit
from answerer.vlm import VLM, VLMLoadError, shared_vlm
from indexer.core.errors import InputError
from retrieval.search.defaults import DEFAULT_COLLAPSE
from ui.settings import Settings

from ..ask_schemas import AskResponse
from ..deps import ReadAccess, RuntimeDep, SettingsDep
from ..errors import ApiError, responses
from ..schemas import SearchFiltersIn
from .photos import load_catalogued, open_catalogued
from .search import _require_photo, filters_from

log = logging.getLogger(__name__)

router = APIRouter(tags=["answer"], dependencies=[ReadAccess])

EVENT_STREAM = "text/event-stream"
MAX_ASK_K = 100
_RETRIEVAL_FIELDS = ("k", "filters", "query", "collapse", "strategy", "min_relevance")


# ---- request ------------------------------------------------------------------------------------
class AskRequest(BaseModel):
    """A question over the collection (retrieval, then the VLM), or about one photo (``photo_id``)."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=2000, examples=["is there a skull in any of the garden photos?"])
    k: int = Field(default=5, ge=1, le=MAX_ASK_K, description="photos retrieved")
    filters: SearchFiltersIn | None = None
    strategy: Literal["auto", "joint", "per-photo"] | None = Field(
        default=None, description="default: PHOTODEX_VLM_STRATEGY (auto: joint for multi-image models)")
    photo_id: int | None = Field(default=None, ge=1, le=2**62,
                                 description="ask about this catalogued photo only (no retrieval)")
    query: str | None = Field(default=None, min_length=1, max_length=1000,
                              description="retrieval text (default: derived from the question)")
    collapse: float | None = Field(default=DEFAULT_COLLAPSE, gt=0.0, le=1.0,
                                   description="near-duplicate cosine threshold; null turns collapse off")
    min_relevance: float | None = Field(default=None, ge=-1.0, le=1.0, description=(
        "CLIP score a photo needs to be looked at; omitted: PHOTODEX_VLM_MIN_RELEVANCE, null: always answer"))
    max_new_tokens: int | None = Field(default=None, ge=1, le=8192, description="default: PHOTODEX_VLM_MAX_NEW_TOKENS")
    moderation: str | None = Field(default=None, min_length=1, max_length=64, description=(
        "with photo_id: a quarantined or blocked photo is refused (400) unless this names a moderation value "
        "(\"any\", or its action), as the search filter does; for retrieval use filters.moderation"))

    @model_validator(mode="after")
    def _photo_or_retrieval(self) -> AskRequest:
        if self.photo_id is not None:
            given = sorted(set(_RETRIEVAL_FIELDS) & self.model_fields_set)
            if given:
                raise ValueError(f"{', '.join(given)} apply to retrieval; a question about photo_id takes none")
        elif self.moderation is not None:
            raise ValueError("moderation goes with photo_id; for retrieval use filters.moderation")
        return self


# ---- the model ----------------------------------------------------------------------------------
def get_vlm(settings: SettingsDep) -> VLM:
    """The process-wide VLM of ``PHOTODEX_VLM`` (not loaded yet; override in tests)."""
    return shared_vlm(settings.vlm, settings.device, settings.precision)


VLMDep = Annotated[VLM, Depends(get_vlm)]

_work_locks: WeakKeyDictionary[VLM, threading.Lock] = WeakKeyDictionary()
_work_locks_guard = threading.Lock()


def vlm_work_lock(vlm: VLM) -> threading.Lock:
    """The lock that lets one request at a time use ``vlm`` (shared by every app in the process)."""
    with _work_locks_guard:
        lock = _work_locks.get(vlm)
        if lock is None:
            lock = _work_locks[vlm] = threading.Lock()
        return lock


def _load(vlm: VLM) -> None:
    try:
        vlm.load()
    except VLMLoadError as exc:
        raise ApiError(503, "vlm_unavailable", exc.for_http()) from None


# ---- helpers ------------------------------------------------------------------------------------
def _options(body: AskRequest, settings: Settings) -> AskOptions:
    """The request's options over the settings' defaults (validated before any model loads)."""
    given = body.model_fields_set
    filters = filters_from(body.filters)
    if body.moderation is not None:
        filters = filters_from(SearchFiltersIn(moderation=body.moderation))
    return AskOptions(
        k=body.k, filters=filters, strategy=body.strategy or settings.vlm_strategy,
        min_relevance=body.min_relevance if "min_relevance" in given else settings.vlm_min_relevance,
        max_new_tokens=body.max_new_tokens or settings.vlm_max_new_tokens,
        budget=ImageBudget(settings.vlm_max_images, settings.vlm_max_image_side, settings.vlm_max_image_tokens),
        collapse=body.collapse, query=body.query).validate()


def wants_event_stream(accept: str | None) -> bool:
    """Whether the Accept header prefers ``text/event-stream`` (at least as much as JSON)."""
    weights: dict[str, float] = {}
    for part in (accept or "").split(","):
        media, *params = [p.strip() for p in part.split(";")]
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[media.lower()] = max(weights.get(media.lower(), 0.0), weight)
    sse = weights.get(EVENT_STREAM, 0.0)
    return sse > 0 and sse >= weights.get("application/json", 0.0)


def trimmed(chunks: Iterable[str]) -> Iterator[str]:
    """``chunks`` without leading and trailing whitespace overall: joined, they equal ``"".join(chunks).strip()``."""
    started, pending = False, ""
    for chunk in chunks:
        text = pending + chunk
        if not started:
            text = text.lstrip()
            if not text:
                pending = ""
                continue
            started = True
        body = text.rstrip()
        pending = text[len(body):]
        if body:
            yield body


def _response(result: AskResult) -> AskResponse:
    return AskResponse.model_validate(result.to_dict())


def _error_event(exc: BaseException) -> bytes:
    if isinstance(exc, ApiError):
        code, message = exc.code, exc.message
    elif isinstance(exc, InputError):
        code, message = "invalid_input", exc.for_http()
    else:
        log.error("answer stream failed", exc_info=exc)
        code, message = "internal_error", "internal server error (logged on the server)"
    return format_sse_event(data_str=json.dumps({"error": {"code": code, "message": message, "detail": None}}),
                            event="error")


def _event_stream(start: Callable[[], AskStream], lock: threading.Lock) -> EventSourceResponse:
    """Answer in a thread of its own (holding ``lock`` from start to end) and stream what it yields.

    The caller's worker thread waits for the first item, so a failure before any text is an
    ordinary error response. A client that goes away leaves the thread to finish and release the lock."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue()

    def produce() -> None:
        try:
            with lock:
                stream = start()
                for chunk in trimmed(stream):
                    items.put(("token", chunk))
                assert stream.result is not None
                items.put(("answer", stream.result))
        except BaseException as exc:  # noqa: BLE001 - reported to the client below
            items.put(("error", exc))

    threading.Thread(target=produce, name="photodex-ask-stream", daemon=True).start()
    first = items.get()
    if first[0] == "error":
        raise first[1]

    def frames() -> Iterator[bytes]:  # iterated in the thread pool by StreamingResponse
        kind, value = first
        while True:
            if kind == "token":
                yield format_sse_event(data_str=json.dumps(value), event="token")
            elif kind == "answer":
                yield format_sse_event(data_str=_response(value).model_dump_json(), event="answer")
                return
            else:
                yield _error_event(value)
                return
            kind, value = items.get()

    return EventSourceResponse(frames(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ---- route --------------------------------------------------------------------------------------
_STREAM_DOC = {"content": {EVENT_STREAM: {"schema": {"type": "string", "description": (
    "with Accept: text/event-stream: `token` events (JSON string chunks), then one `answer` event "
    "(AskResponse) or an `error` event (ErrorResponse)")}}}}


@router.post("/ask", response_model=AskResponse, summary="Ask",
             responses={**responses(400, 401, 403, 404, 413, 422, 503), 200: _STREAM_DOC})
def ask(body: AskRequest, request: Request, runtime: RuntimeDep, vlm: VLMDep) -> AskResponse | Response:
    """Answer a question from the collection's photos (or one photo) with the VLM, citing the photos used;
    streamed as Server-Sent Events when the client accepts ``text/event-stream``."""
    options = _options(body, runtime.settings)
    if body.photo_id is not None:
        _require_photo(runtime, body.photo_id)
        photo_hit(runtime.searcher, body.photo_id, options.filters)  # hidden by moderation: 400 before the VLM loads
        open_catalogued(runtime, body.photo_id)[0].close()  # 404 file_unavailable before the VLM loads
    _load(vlm)
    # photos reach the VLM only from verified catalogued files, as /photos/{id}/original serves them
    answerer = Answerer(runtime.searcher, vlm,
                        image_loader=lambda hit, side: load_catalogued(runtime, hit.id, side))
    lock = vlm_work_lock(vlm)
    photo_id = body.photo_id
    if wants_event_stream(request.headers.get("accept")):
        def start() -> AskStream:
            if photo_id is not None:
                return answerer.ask_photo(photo_id, body.question, options, stream=True)  # type: ignore[return-value]
            return answerer.ask_stream(body.question, options)

        return _event_stream(start, lock)
    with lock:
        result = (answerer.ask_photo(photo_id, body.question, options) if photo_id is not None
                  else answerer.ask(body.question, options))
    assert isinstance(result, AskResult)
    return _response(result)
