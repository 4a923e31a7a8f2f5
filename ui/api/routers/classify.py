"""``POST /classify`` (an upload or a photo id against labels × templates) and ``GET /tags``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from indexer.core.errors import InputError
from retrieval.classify.tagging import list_tags
from retrieval.classify.templates import list_template_sets

from ..deps import ReadAccess, RuntimeDep
from ..errors import responses
from ..schemas import ClassifyResponse, LabelScore, TagCount
from ..runtime import Runtime
from ..uploads import read_upload
from ..workpool import run_encoder_work
from .search import _require_photo

router = APIRouter(tags=["classify"], dependencies=[ReadAccess])

MAX_LABELS = 1000


def _labels(raw: list[str]) -> list[str]:
    """Labels given repeated or comma-separated."""
    labels = [x.strip() for item in raw for x in item.split(",") if x.strip()]
    if not labels:
        raise InputError("give at least one label")
    if len(labels) > MAX_LABELS or any(len(x) > 200 for x in labels):
        raise InputError(f"at most {MAX_LABELS} labels of at most 200 characters each")
    return labels


@router.post("/classify", response_model=ClassifyResponse, responses=responses(401, 403, 404, 413, 415, 422))
async def classify(
    runtime: RuntimeDep,
    request: Request,
    labels: Annotated[list[str], Form(description="class names, repeated or comma-separated")],
    file: Annotated[UploadFile | None, File(description="an image to classify (or give photo_id)")] = None,
    photo_id: Annotated[int | None, Form(ge=1, le=2**62, description="a catalogued photo (or upload a file)")] = None,
    templates: Annotated[str, Form(max_length=64, description="a built-in template set name")] = "photos",
    k: Annotated[int, Form(ge=1, le=100)] = 5,
) -> ClassifyResponse:
    """Zero-shot labels of an uploaded image or a catalogued photo (its stored vector; no file is read)."""
    return await run_encoder_work(request, _classify, runtime, labels, file, photo_id, templates, k)


def _classify(runtime: Runtime, labels: list[str], file: UploadFile | None, photo_id: int | None, templates: str,
              k: int) -> ClassifyResponse:
    if (file is None) == (photo_id is None):
        raise InputError("give either a file or a photo_id")
    if templates not in list_template_sets():  # a set name only: never a server-side file path
        raise InputError(f"unknown template set {templates!r}; sets: {', '.join(list_template_sets())}")
    names = _labels(labels)
    clf = runtime.classifier(names, templates)
    if photo_id is not None:
        _require_photo(runtime, photo_id)
        vector, source = runtime.searcher.id_vector(photo_id), f"photo:{photo_id}"
    else:
        s = runtime.settings
        assert file is not None
        data = read_upload(file, s.api_max_upload_bytes, s.api_max_upload_pixels)
        vector, source = runtime.searcher.image_vector(data=data), "upload"
    top = clf.top_k(vector[None, :], k)[0]
    return ClassifyResponse(source=source, templates=templates,
                            labels=[LabelScore(label=lab, score=sc) for lab, sc in top])


@router.get("/tags", response_model=list[TagCount], responses=responses(401, 403, 422))
def tags(runtime: RuntimeDep, taxonomy: Annotated[str | None, Query(max_length=128)] = None) -> list[TagCount]:
    """Label counts of the stored tags, per taxonomy."""
    return [TagCount(**row) for row in list_tags(runtime.collection, taxonomy)]
