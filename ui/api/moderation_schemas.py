"""Response models of the moderation routes (``ui/api/routers/moderation.py``).

Plain pydantic, so the web client reads the same shapes without importing the moderation code;
the request models stay with the routes (they validate with the policy model itself). Each model has exactly
the keys of the domain object's ``to_dict()`` it is validated from (``tests/test_api_shapes.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# retrieval.outcomes.OUTCOMES, spelled out for type checkers (a test keeps them equal)
Outcome = Literal["allow", "review", "flag", "quarantine", "block"]


# ---- policies -----------------------------------------------------------------------------------
class ConceptOut(BaseModel):
    name: str
    prompts: list[str]
    templates: str | list[str] | None
    contrast: list[str]
    threshold: float
    review_threshold: float | None
    action: str
    special_care: bool


class PolicyOut(BaseModel):
    name: str
    description: str
    concepts: list[ConceptOut]
    special_care_adjustment: float
    encoder: str | None


class OperatingPointOut(BaseModel):
    threshold: float
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    tn: int
    target: Literal["precision", "recall"]
    target_value: float


class PRCurveOut(BaseModel):
    """The precision-recall curve (at most 200 points, thresholds descending)."""

    thresholds: list[float]
    precision: list[float]
    recall: list[float]
    positives: int
    negatives: int
    average_precision: float


class CalibrationSummaryOut(BaseModel):
    point: OperatingPointOut
    calibrated_on_version: int
    created_at: str


class CalibrationEntryOut(CalibrationSummaryOut):
    curve: PRCurveOut


class PolicyVersionOut(BaseModel):
    """One stored policy version; ``calibration`` has each calibrated concept's point (and curve if asked)."""

    id: int
    name: str
    version: int
    active: bool
    encoder: str
    created_at: str
    note: str | None
    policy: PolicyOut
    calibration: dict[str, CalibrationEntryOut | CalibrationSummaryOut]


# ---- decisions ----------------------------------------------------------------------------------
class ConceptScoreOut(BaseModel):
    name: str
    score: float
    threshold: float = Field(description="effective threshold (after the special-care adjustment)")
    review_threshold: float | None
    margin: float = Field(description="score - threshold: >= 0 is a hit")
    level: Literal["hit", "review", "none"]
    action: str


class ModerationDecisionOut(BaseModel):
    """The decision for one image: the outcome, every concept's result and the policy version."""

    source: str = Field(description="'upload' or 'id:<photo id>'")
    action: Outcome
    concepts: list[ConceptScoreOut]
    policy: str
    version: int | None
    adjusted: bool = Field(description="the special-care adjustment applied")
    photo_id: int | None
    error: str | None = None
    hits: list[str]


class ModerationItemError(BaseModel):
    code: str = Field(description="as in the error shape: unsupported_media_type, undecodable_image, ...")
    message: str
    detail: Any = None


class ModerationItemOut(BaseModel):
    """One image of a multi-image ``POST /moderate``: its decision, or why it has none."""

    index: int = Field(description="position of the image among the `files` parts")
    filename: str | None
    status: int = Field(description="what a single-image request would have answered: 200, 413, 415 or 422")
    decision: ModerationDecisionOut | None
    error: ModerationItemError | None = None


class ModerationBatchOut(BaseModel):
    """One entry per uploaded image, in the order given; one bad image fails only its own entry."""

    count: int
    decided: int = Field(description="images with a decision (status 200)")
    results: list[ModerationItemOut]


class StoredDecisionOut(BaseModel):
    """A stored decision (history row) and the policy version that made it."""

    id: int
    photo_id: int
    photo_sha256: str = Field(description="identifies the photo even after it is deleted (its id may be reused)")
    action: Outcome
    hits: list[str]
    review: list[str]
    adjusted: bool
    scores: dict[str, float]
    policy: str
    version: int
    run_id: int | None
    created_at: str
    current: bool
    photo_deleted: bool = Field(False, description="the photo left the catalog; its history is kept")
    history: list[StoredDecisionOut] = Field(default_factory=list, description="with history=true, oldest first")


class DecisionPage(BaseModel):
    offset: int
    limit: int
    count: int
    results: list[StoredDecisionOut]


# ---- rescan / calibrate -------------------------------------------------------------------------
class ConceptCountsOut(BaseModel):
    hit: int
    review: int


class RescanReportOut(BaseModel):
    """What a re-evaluation found (dry run) or did (real run)."""

    policy: str
    version: int
    dry_run: bool
    photos: int
    changed: int
    by_action: dict[str, int] = Field(description="every photo's new outcome")
    by_concept: dict[str, ConceptCountsOut]
    changes: dict[str, int] = Field(description="'allow -> quarantine': count, for changing photos")
    changed_by_concept: dict[str, int]
    examples: dict[str, list[int]] = Field(description="a few photo ids per change and concept")
    rescored: int = Field(0, description="photos scored from their stored vectors; the others were re-decided "
                                         "from their stored scores (prompts unchanged)")
    run_id: int | None
    seconds: float


class CalibrationOut(BaseModel):
    """The concept's curve on the labelled photos, the chosen point and the new version (if written)."""

    concept: str
    policy: str
    version: int = Field(description="the policy version the scores were computed with")
    point: OperatingPointOut
    curve: PRCurveOut
    written_version: int | None
