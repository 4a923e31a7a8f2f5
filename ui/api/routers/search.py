"""``POST /search`` (text), ``POST /search/image`` (upload), ``GET /photos/{id}/similar``."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from sqlalchemy import select

from indexer.catalog.models import Photo
from retrieval.index.choice import SearchParams
from retrieval.search.defaults import DEFAULT_COLLAPSE
from retrieval.search.filters import SearchFilters, parse_filters
from retrieval.search.searcher import SearchHit, SearchOptions

from ..deps import ReadAccess, RuntimeDep
from ..errors import not_found, responses
from ..runtime import Runtime
from ..schemas import MAX_K, SearchFiltersIn, SearchHitOut, SearchRequest, SearchResponse
from ..uploads import read_upload
from ..workpool import run_encoder_work

router = APIRouter(tags=["search"], dependencies=[ReadAccess])

PhotoId = Annotated[int, Path(ge=1, le=2**62, description="catalog id of a photo")]
FilterItems = Annotated[list[str], Query(max_length=32,
                                         description="KEY=VALUE filters, one per parameter: "
                                                     "`?filter=after=2023-06-01&filter=tag=dog`")]

_SCALAR_FILTERS = ("taken_after", "taken_before", "path", "camera_make", "camera_model", "file_type", "moderation")


def filters_from(model: SearchFiltersIn | None) -> SearchFilters | None:
    """Typed filters → :class:`SearchFilters`, with the CLI's parsing of dates and file types."""
    if model is None:
        return None
    items = [f"{name}={getattr(model, name)}" for name in _SCALAR_FILTERS if getattr(model, name) is not None]
    if model.has_gps is not None:
        items.append(f"has_gps={str(model.has_gps).lower()}")
    filters = parse_filters(items)
    filters.tags = list(model.tags)
    return filters


def _respond(runtime: Runtime, query: np.ndarray, options: SearchOptions) -> SearchResponse:
    start = time.perf_counter()
    hits = runtime.searcher.search_vector(query, options.validate())
    runtime.metrics.search.observe(time.perf_counter() - start)
    return _response(hits, options)


def _response(hits: list[SearchHit], options: SearchOptions) -> SearchResponse:
    return SearchResponse(k=options.k, offset=options.offset, count=len(hits),
                          results=[SearchHitOut(**h.to_dict()) for h in hits])


def _require_photo(runtime: Runtime, photo_id: int) -> None:
    with runtime.collection.catalog.session() as s:
        if s.scalar(select(Photo.id).where(Photo.id == photo_id)) is None:
            raise not_found(f"photo {photo_id}")


@router.post("/search", response_model=SearchResponse, responses=responses(400, 401, 403, 413, 422))
async def search(body: SearchRequest, runtime: RuntimeDep, request: Request) -> SearchResponse:
    """Photos best matching a text query, with filters, minimum score, pagination and near-duplicate collapse."""
    return await run_encoder_work(request, _search_text, body, runtime)


def _search_text(body: SearchRequest, runtime: Runtime) -> SearchResponse:
    params = SearchParams(nprobe=body.params.nprobe, ef_search=body.params.ef_search) if body.params else None
    options = SearchOptions(k=body.k, offset=body.offset, min_score=body.min_score, filters=filters_from(body.filters),
                            collapse=body.collapse, params=params).validate()
    if body.caption_weight is not None:
        start = time.perf_counter()
        hits = runtime.searcher.search_hybrid(body.text, options, caption_weight=body.caption_weight)
        runtime.metrics.search.observe(time.perf_counter() - start)
        return _response(hits, options)
    return _respond(runtime, runtime.searcher.text_vector(body.text), options)


@router.post("/search/image", response_model=SearchResponse, responses=responses(401, 403, 413, 415, 422))
async def search_image(
    runtime: RuntimeDep,
    request: Request,
    file: Annotated[UploadFile, File(description="the query image")],
    k: Annotated[int, Form(ge=1, le=MAX_K)] = 20,
    offset: Annotated[int, Form(ge=0, le=100_000)] = 0,
    min_score: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
    collapse: Annotated[float, Form(gt=0.0, le=1.0)] = DEFAULT_COLLAPSE,
    no_collapse: Annotated[bool, Form()] = False,
    filter: Annotated[list[str], Form(max_length=32, description="KEY=VALUE filters")] = [],  # noqa: A002,B006
) -> SearchResponse:
    """Photos most similar to an uploaded image."""
    def work() -> SearchResponse:
        s = runtime.settings
        data = read_upload(file, s.api_max_upload_bytes, s.api_max_upload_pixels)
        options = SearchOptions(k=k, offset=offset, min_score=min_score, filters=parse_filters(filter),
                                collapse=None if no_collapse else collapse).validate()
        return _respond(runtime, runtime.searcher.image_vector(data=data), options)

    return await run_encoder_work(request, work)


@router.get("/photos/{photo_id}/similar", response_model=SearchResponse, responses=responses(401, 403, 404, 422))
def similar(
    runtime: RuntimeDep,
    photo_id: PhotoId,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    min_score: Annotated[float | None, Query(ge=-1.0, le=1.0)] = None,
    collapse: Annotated[float, Query(gt=0.0, le=1.0)] = DEFAULT_COLLAPSE,
    no_collapse: bool = False,
    filter: FilterItems = [],  # noqa: A002,B006
) -> SearchResponse:
    """Photos most similar to a catalogued photo (itself excluded), from its stored vector."""
    _require_photo(runtime, photo_id)
    options = SearchOptions(k=k, offset=offset, min_score=min_score, filters=parse_filters(filter),
                            collapse=None if no_collapse else collapse).validate()
    start = time.perf_counter()
    hits = runtime.searcher.search_similar(photo_id=photo_id, options=options)
    runtime.metrics.search.observe(time.perf_counter() - start)
    return _response(hits, options)
