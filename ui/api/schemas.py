"""Request and response models of the API (separate, named, documented in the OpenAPI document).

Moderation and answering responses are in :mod:`.moderation_schemas` and :mod:`.ask_schemas`. These
modules import only pydantic (and the import-free search defaults), so the web client reads the API with them without loading the server.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from retrieval.search.defaults import DEFAULT_COLLAPSE

MAX_K = 1000


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- errors -------------------------------------------------------------------------------------
class ErrorInfo(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. not_found, validation_error")
    message: str = Field(description="one line for people")
    detail: Any = Field(default=None, description="structured detail (e.g. the validation errors)")


class ErrorResponse(BaseModel):
    """Every failure, whatever its status."""

    error: ErrorInfo


# ---- search -------------------------------------------------------------------------------------
class SearchFiltersIn(_Request):
    """Metadata filters (all optional, all must match). Unknown keys are refused."""

    taken_after: str | None = Field(default=None, max_length=32, examples=["2024-06-01"])
    taken_before: str | None = Field(default=None, max_length=32, examples=["2024-08-31"])
    path: str | None = Field(default=None, max_length=1024, description="glob on any of the photo's paths")
    camera_make: str | None = Field(default=None, max_length=128)
    camera_model: str | None = Field(default=None, max_length=128)
    has_gps: bool | None = None
    file_type: str | None = Field(default=None, max_length=16, examples=["jpeg", "png", "heif"])
    tags: list[str] = Field(default_factory=list, max_length=32, description="every tag must be present")
    moderation: str | None = Field(default=None, max_length=64)


class SearchParamsIn(_Request):
    """Per-request index parameters (never changed globally)."""

    nprobe: int | None = Field(default=None, ge=1, le=65536)
    ef_search: int | None = Field(default=None, ge=1, le=65536)


class SearchRequest(_Request):
    """A text search: ``beach +sunset -people`` style query arithmetic is understood."""

    text: str = Field(min_length=1, max_length=1000)
    k: int = Field(default=20, ge=1, le=MAX_K)
    offset: int = Field(default=0, ge=0, le=100_000)
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0)
    collapse: float | None = Field(default=DEFAULT_COLLAPSE, gt=0.0, le=1.0,
                                   description="near-duplicate cosine threshold; null turns collapse off")
    filters: SearchFiltersIn | None = None
    params: SearchParamsIn | None = None
    caption_weight: float | None = Field(default=None, ge=0.0, le=10.0, description=(
        "hybrid search: score = CLIP cosine + caption_weight x caption match (BM25 over stored VLM captions, "
        "in [0, 1]); omitted or null: CLIP only"))


# the fields of retrieval.search.searcher.HybridHit (kept equal by tests/test_api_shapes.py)
class SearchHitOut(BaseModel):
    id: int
    score: float
    paths: list[str]
    taken_at: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    gps: tuple[float, float] | None = None
    tags: list[str] = Field(default_factory=list)
    duplicates: list[int] = Field(default_factory=list, description="ids of collapsed near-duplicates")
    clip_score: float | None = Field(default=None, description="hybrid search only: the CLIP cosine")
    caption_score: float | None = Field(default=None, description="hybrid search only: the caption match in [0, 1]")
    caption: str | None = Field(default=None, description="hybrid search only: the stored caption, if any")


class SearchResponse(BaseModel):
    k: int
    offset: int
    count: int
    results: list[SearchHitOut]


# ---- photos -------------------------------------------------------------------------------------
class TagOut(BaseModel):
    taxonomy: str
    label: str
    score: float
    manual: bool


class ModerationOut(BaseModel):
    action: str
    hits: list[str]
    review: list[str]


def _as_utc(value: datetime) -> datetime:
    """The catalog stores UTC without an offset; say so, so the value is an RFC 3339 ``date-time``."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]
# EXIF records the camera's wall-clock time with no offset: not an RFC 3339 date-time, so not documented as one.
LocalDateTime = Annotated[datetime, WithJsonSchema({"type": "string", "title": "Local Date Time",
                                                    "description": "camera wall-clock time, ISO 8601 without offset"})]


class PhotoOut(BaseModel):
    id: int
    sha256: str
    size: int
    format: str | None
    width: int | None
    height: int | None
    taken_at: LocalDateTime | None
    camera_make: str | None
    camera_model: str | None
    gps_lat: float | None
    gps_lon: float | None
    status: str
    error: str | None
    indexed_at: UtcDateTime | None
    paths: list[str]
    tags: list[TagOut]
    moderation: ModerationOut | None = Field(default=None, description="the current moderation decision, if any")


# ---- classify / tags ----------------------------------------------------------------------------
class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    source: str = Field(description="'upload' or 'photo:<id>'")
    templates: str
    labels: list[LabelScore]


class TagCount(BaseModel):
    taxonomy: str
    label: str
    photos: int


# ---- index jobs ---------------------------------------------------------------------------------
JobStatus = Literal["running", "succeeded", "failed", "cancelled"]


class IndexJobRequest(_Request):
    """Folders or files to index; each must lie under one of the configured library roots."""

    paths: list[str] = Field(min_length=1, max_length=64)
    retry_errors: bool = False


class IndexJobOut(BaseModel):
    id: str
    status: JobStatus
    paths: list[str]
    phase: str | None = Field(default=None, description="hash, encode, index, ...")
    done: int = 0
    total: int = 0
    created_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None


# ---- system -------------------------------------------------------------------------------------
class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready"]
    collection: str
    encoder: str
    vectors: int
    reads_need_key: bool = Field(default=False, description="read routes need an X-API-Key (scope read) "
                                 "for this request: the server listens beyond loopback or was told to")


class ApiKeyOut(BaseModel):
    name: str
    scope: str
    prefix: str
    created_at: str
    revoked_at: str | None
