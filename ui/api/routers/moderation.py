"""Moderation over HTTP: ``POST /moderate``, policies (``GET/POST /policies``, ``POST /policies/{name}/activate``),
``GET /decisions``, ``POST /moderate/rescan`` (dry run by default) and ``POST /moderate/calibrate``.

Each route only wires a service function of :mod:`retrieval.moderation` (the CLI calls the same
ones). Reads need what every read route needs; storing a policy version, activating one, a real
rescan and a calibration with ``write`` need a key of scope ``write``. A real rescan takes the
collection's writer lock (409 ``writer_busy`` while an index job or ``photodex index`` holds it).

Policy bodies are validated by the policy model itself (:class:`PolicyIn` narrows it for the
API: ``templates`` is a built-in set name or a list of templates, never a file on the server).
The response models are in :mod:`ui.api.moderation_schemas` (plain pydantic, shared with the web client).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from sqlalchemy import select

from indexer.catalog.models import ModerationPolicy
from indexer.collection import Collection
from indexer.core.errors import EncoderMismatchError, InputError
from indexer.encode.decode import DecodeError, decode_photo
from retrieval.classify.templates import list_template_sets
from retrieval.moderation.calibrate import Examples, calibrate_concept
from retrieval.moderation.history import list_decisions
from retrieval.moderation.policy import MAX_CONCEPTS, Concept, Policy, parse_policy
from retrieval.moderation.rescan import rescan
from retrieval.moderation.service import check_encoder, decide_vectors, moderate_bytes, moderate_ids
from retrieval.moderation.store import PolicyRecord, activate_policy, get_policy, list_policies, save_policy

from ..deps import ApiKeyDep, ReadAccess, RuntimeDep, WriteAccess, require_write
from ..errors import ApiError, responses
from ..batcher import encode_each
from ..moderation_schemas import (
    CalibrationOut,
    DecisionPage,
    ModerationBatchOut,
    ModerationDecisionOut,
    ModerationItemError,
    ModerationItemOut,
    Outcome,
    PolicyVersionOut,
    RescanReportOut,
    StoredDecisionOut,
)
from ..runtime import Runtime
from ..uploads import read_upload
from ..workpool import run_encoder_work
from .search import _require_photo

log = logging.getLogger(__name__)

router = APIRouter(tags=["moderation"], dependencies=[ReadAccess])

MAX_EXAMPLES = 100_000
MAX_MODERATE_FILES = 32  # images in one multi-image POST /moderate (all within the request body limit)
MAX_PAGE = 1000
PhotoIdInt = Annotated[int, Field(ge=1, le=2**62)]
PolicyName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Prompt = Annotated[str, StringConstraints(max_length=500)]


# ---- request models -----------------------------------------------------------------------------
class ConceptIn(Concept):
    """A moderated concept (see the policy file schema); ``templates`` is a built-in set or a list."""

    prompts: list[Prompt] = Field(min_length=1, max_length=256)
    contrast: list[Prompt] = Field(default_factory=list, max_length=256)
    templates: str | list[Prompt] | None = Field(default=None, examples=["photos"])

    @field_validator("templates")
    @classmethod
    def _builtin_set(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 256:
            raise ValueError("at most 256 templates")
        if isinstance(value, str) and value not in list_template_sets():  # a name only: never a server file
            raise ValueError(f"unknown template set; built-in sets: {', '.join(list_template_sets())} "
                             "(or give a list of templates with one {} each)")
        return value


class PolicyIn(Policy):
    """A moderation policy to store as the next version of its name (the policy file's schema)."""

    concepts: list[ConceptIn] = Field(min_length=1, max_length=MAX_CONCEPTS)  # type: ignore[assignment]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActivateRequest(_Request):
    version: int = Field(ge=1, le=2**31)


class RescanRequest(_Request):
    """Which policy version to apply (default: the active one) and whether to write (``dry_run: false``)."""

    policy: PolicyName | None = None
    version: int | None = Field(default=None, ge=1, le=2**31)
    dry_run: bool = Field(default=True, description="report what would change and write nothing (the default)")
    thresholds: dict[str, float] | None = Field(
        default=None, max_length=64,
        description="dry runs only: preview with these concepts' thresholds moved (review bands keep their width)")


class CalibrateRequest(_Request):
    """Labelled catalogued photos for one concept, and the target the threshold must reach."""

    concept: str = Field(min_length=1, max_length=64)
    positive_ids: list[PhotoIdInt] = Field(min_length=1, max_length=MAX_EXAMPLES,
                                           description="photos that show the concept")
    negative_ids: list[PhotoIdInt] = Field(min_length=1, max_length=MAX_EXAMPLES,
                                           description="photos that do not show it")
    target_precision: float | None = Field(default=None, gt=0.0, le=1.0)
    target_recall: float | None = Field(default=None, gt=0.0, le=1.0)
    policy: PolicyName | None = Field(default=None, description="default: the active policy")
    version: int | None = Field(default=None, ge=1, le=2**31, description="default: the newest of `policy`")
    write: bool = Field(default=False, description="store the threshold and curve as a new policy version")
    activate: bool = Field(default=False, description="with write: make the new version active")

    @model_validator(mode="after")
    def _one_target(self) -> CalibrateRequest:
        if (self.target_precision is None) == (self.target_recall is None):
            raise ValueError("give target_precision or target_recall (one of them)")
        if self.activate and not self.write:
            raise ValueError("activate goes with write")
        return self


# ---- helpers ------------------------------------------------------------------------------------
@contextmanager
def _same_encoder() -> Iterator[None]:
    """A policy stored or written for another encoder is the client's mistake: 422, not 500."""
    try:
        yield
    except EncoderMismatchError as exc:
        raise ApiError(422, "encoder_mismatch", exc.for_http()) from None


def _record(coll: Collection, name: str | None, version: int | None) -> PolicyRecord:
    """The active policy (no name), the newest version of ``name``, or ``name`` at ``version``; 404 if none."""
    if name is None and version is not None:
        raise InputError("a policy version needs the policy name")
    stmt = select(ModerationPolicy.id)
    if name is None:
        stmt = stmt.where(ModerationPolicy.active.is_(True))
    else:
        stmt = stmt.where(ModerationPolicy.name == name)
        if version is not None:
            stmt = stmt.where(ModerationPolicy.version == version)
    with coll.catalog.session() as s:
        found = s.scalar(stmt.limit(1))
    if found is None:
        if name is None:
            raise ApiError(404, "no_active_policy", "no active moderation policy: store one with "
                           "POST /policies?activate=true, or name one with `policy`")
        raise ApiError(404, "not_found", f"policy {name!r}" + (f" version {version}" if version else "")
                       + " not found")
    return get_policy(coll, name, version)


def _version_out(record: PolicyRecord, curves: bool = False) -> PolicyVersionOut:
    return PolicyVersionOut.model_validate(record.to_dict(curves=curves))


# ---- routes -------------------------------------------------------------------------------------
@router.post("/moderate", response_model=ModerationDecisionOut | ModerationBatchOut, summary="Moderate",
             responses=responses(401, 403, 404, 413, 415, 422))
async def moderate(
    runtime: RuntimeDep,
    request: Request,
    file: Annotated[UploadFile | None, File(description="an image to check (or give files or photo_id)")] = None,
    files: Annotated[list[UploadFile] | None, File(
        description=f"several images to check at once (at most {MAX_MODERATE_FILES}); the answer has one entry "
                    "per image, and an image that cannot be read fails only its own entry")] = None,
    photo_id: Annotated[int | None, Form(ge=1, le=2**62, description="a catalogued photo (or upload a file)")] = None,
    policy: Annotated[str | None, Form(min_length=1, max_length=64, description="default: the active policy")] = None,
    version: Annotated[int | None, Form(ge=1, le=2**31, description="default: the newest of `policy`")] = None,
) -> ModerationDecisionOut | ModerationBatchOut:
    """Every concept's score, threshold, margin and level, and the resulting action; nothing is stored.

    One image (``file``) or photo (``photo_id``) gets one decision; several images (``files``, repeated)
    get a ``results`` list with one entry per image, in order."""
    return await run_encoder_work(request, _moderate, runtime, file, files, photo_id, policy, version)


def _moderate(runtime: Runtime, file: UploadFile | None, files: list[UploadFile] | None, photo_id: int | None,
              policy: str | None, version: int | None) -> ModerationDecisionOut | ModerationBatchOut:
    if sum(x is not None for x in (file, files, photo_id)) != 1:
        raise InputError("give one of file, files or photo_id")
    if files is not None and not 1 <= len(files) <= MAX_MODERATE_FILES:
        raise InputError(f"give between 1 and {MAX_MODERATE_FILES} files, got {len(files)}")
    coll = runtime.collection
    record = _record(coll, policy, version)
    with _same_encoder():
        if files is not None:
            return _moderate_many(runtime, record, files)
        if photo_id is not None:
            _require_photo(runtime, photo_id)
            decision = moderate_ids(coll, record, [photo_id])[0]
        else:
            assert file is not None
            s = runtime.settings
            data = read_upload(file, s.api_max_upload_bytes, s.api_max_upload_pixels)
            decision = moderate_bytes(record, runtime.encoder, data)  # type: ignore[arg-type]
    return ModerationDecisionOut.model_validate(decision.to_dict())


def _moderate_many(runtime: Runtime, record: PolicyRecord, files: list[UploadFile]) -> ModerationBatchOut:
    """Each image checked and decoded on its own; the decodable ones encoded together (one batch)."""
    check_encoder(record, runtime.encoder)  # type: ignore[arg-type]
    s = runtime.settings
    items: list[ModerationItemOut | None] = [None] * len(files)
    images, at = [], []

    def failed(i: int, status: int, code: str, message: str, detail: object = None) -> None:
        items[i] = ModerationItemOut(index=i, filename=files[i].filename, status=status, decision=None,
                                     error=ModerationItemError(code=code, message=message, detail=detail))

    for i, upload in enumerate(files):
        try:
            data = read_upload(upload, s.api_max_upload_bytes, s.api_max_upload_pixels)
            images.append(decode_photo(io.BytesIO(data), runtime.encoder.image_size)[0])  # type: ignore[arg-type]
            at.append(i)
        except ApiError as exc:
            failed(i, exc.status, exc.code, exc.message, exc.detail)
        except DecodeError as exc:
            failed(i, 422, "undecodable_image", f"cannot read the image: {exc}")
    good: list[tuple[int, np.ndarray]] = []
    for i, row in zip(at, encode_each(runtime.encoder, "image", images)):
        if isinstance(row, Exception):
            log.error("encoding image %d of a /moderate request failed", i, exc_info=row)
            failed(i, 500, "internal_error", "internal server error (logged on the server)")
        else:
            good.append((i, row))
    if good:
        decided = decide_vectors(record, np.stack([row for _, row in good]), ["upload"] * len(good))
        for (i, _), decision in zip(good, decided):
            items[i] = ModerationItemOut(index=i, filename=files[i].filename, status=200,
                                         decision=ModerationDecisionOut.model_validate(decision.to_dict()))
    results = [x for x in items if x is not None]
    return ModerationBatchOut(count=len(results), decided=len(good), results=results)


@router.get("/policies", response_model=list[PolicyVersionOut], summary="List policy versions",
            responses=responses(401, 403, 422))
def policies(
    runtime: RuntimeDep,
    name: Annotated[str | None, Query(min_length=1, max_length=64, description="only this policy's versions")] = None,
    curves: Annotated[bool, Query(description="include stored calibration curves")] = False,
) -> list[PolicyVersionOut]:
    """Every stored policy version, by name then version (``active`` marks the one in force)."""
    return [_version_out(r, curves) for r in list_policies(runtime.collection) if name is None or r.name == name]


@router.post("/policies", response_model=PolicyVersionOut, status_code=201, summary="Store a policy version",
             dependencies=[WriteAccess],
             responses=responses(400, 401, 403, 413, 422))
def create_policy(
    body: PolicyIn,
    runtime: RuntimeDep,
    activate: Annotated[bool, Query(description="make the new version the active policy")] = False,
) -> PolicyVersionOut:
    """Store a policy as the next version of its name (never overwrites); its prompt vectors are computed now."""
    coll = runtime.collection
    if body.encoder is not None and body.encoder != coll.spec.id:
        raise ApiError(422, "encoder_mismatch", f"the policy was written for encoder {body.encoder!r}; this "
                       f"collection uses {coll.spec.id!r}: calibrate it for this encoder (or drop its 'encoder' field)")
    policy = parse_policy(body.model_dump(), f"{body.name!r}")  # the plain policy model the store keeps
    with _same_encoder():
        record = save_policy(coll, policy, runtime.encoder, activate=activate)  # type: ignore[arg-type]
    return _version_out(record)


@router.post("/policies/{name}/activate", response_model=PolicyVersionOut, summary="Activate a policy version",
             dependencies=[WriteAccess],
             responses=responses(400, 401, 403, 404, 422))
def activate(
    runtime: RuntimeDep,
    name: Annotated[str, Path(min_length=1, max_length=64, description="policy name")],
    body: ActivateRequest | None = None,
    version: Annotated[int | None, Query(ge=1, le=2**31, description="or in the body")] = None,
) -> PolicyVersionOut:
    """Make ``name`` at ``version`` the one active policy (the version in the body or the query)."""
    if body is not None and version is not None and body.version != version:
        raise InputError(f"version {body.version} in the body and {version} in the query differ")
    chosen = body.version if body is not None else version
    if chosen is None:
        raise InputError("give the version to activate (body {\"version\": N} or ?version=N)")
    coll = runtime.collection
    _record(coll, name, chosen)  # 404 for an unknown name or version
    with _same_encoder():
        return _version_out(activate_policy(coll, name, chosen))


@router.get("/decisions", response_model=DecisionPage, summary="List decisions", responses=responses(401, 403, 422))
def decisions(
    runtime: RuntimeDep,
    action: Annotated[Outcome | None, Query(description="only photos whose current decision is this")] = None,
    photo_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    history: Annotated[bool, Query(description="add each photo's earlier decisions")] = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> DecisionPage:
    """Current stored decisions by photo id, with the policy version that made each."""
    rows = list_decisions(runtime.collection, photo_id=photo_id, action=action, history=history,
                          limit=offset + limit)[offset:]
    return DecisionPage(offset=offset, limit=limit, count=len(rows),
                        results=[StoredDecisionOut.model_validate(r.to_dict()) for r in rows])


@router.post("/moderate/rescan", response_model=RescanReportOut, summary="Rescan the collection",
             responses=responses(400, 401, 403, 404, 409, 422))
def rescan_collection(request: Request, runtime: RuntimeDep, key: ApiKeyDep,
                      body: RescanRequest | None = None) -> RescanReportOut:
    """Apply a policy version to every stored vector. A dry run (the default) reports what would change and
    writes nothing; a real run (``dry_run: false``, write scope) stores the decisions that change."""
    body = body or RescanRequest()
    if not body.dry_run:
        require_write(request, key)
    coll = runtime.collection
    record = _record(coll, body.policy, body.version)
    with _same_encoder():
        report = rescan(coll, record, dry_run=body.dry_run, thresholds=body.thresholds)  # real run: busy → 409
    return RescanReportOut.model_validate(report.to_dict())


@router.post("/moderate/calibrate", response_model=CalibrationOut, summary="Calibrate a concept",
             responses=responses(400, 401, 403, 404, 422))
def calibrate(body: CalibrateRequest, request: Request, runtime: RuntimeDep, key: ApiKeyDep) -> CalibrationOut:
    """A concept's precision-recall curve on labelled catalogued photos and the threshold reaching the target;
    with ``write`` (write scope), stored as a new policy version."""
    if body.write:
        require_write(request, key)
    coll = runtime.collection
    record = _record(coll, body.policy, body.version)
    with _same_encoder():
        result = calibrate_concept(coll, record, body.concept, Examples(ids=list(body.positive_ids)),
                                   Examples(ids=list(body.negative_ids)), target_precision=body.target_precision,
                                   target_recall=body.target_recall, write=body.write, activate=body.activate)
    return CalibrationOut.model_validate(result.to_dict())
