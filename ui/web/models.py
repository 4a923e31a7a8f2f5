"""Response models of the moderation and answering routes, as the web client reads them.

The server declares these next to its routes (``ui/api/routers/moderation.py``, ``ask.py``), which
import the retrieval and answerer packages; the web app must not, so it reads the same JSON with
these lean mirrors (unknown fields ignored, policies kept whole so they can be sent back). The
client tests parse real responses with them, so a drift shows up there.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    """Keeps fields it does not name, so a policy read from the server can be stored again unchanged."""

    model_config = ConfigDict(extra="allow")


# ---- policies -----------------------------------------------------------------------------------
class ConceptBody(_Open):
    name: str
    prompts: list[str]
    threshold: float
    review_threshold: float | None = None
    action: str = "flag"
    special_care: bool = False


class PolicyBody(_Open):
    name: str
    description: str = ""
    concepts: list[ConceptBody]

    def concept(self, name: str) -> ConceptBody:
        return next(c for c in self.concepts if c.name == name)


class OperatingPoint(BaseModel):
    threshold: float
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    tn: int
    target: str
    target_value: float


class PRCurve(BaseModel):
    """Precision and recall per threshold (thresholds descending)."""

    thresholds: list[float]
    precision: list[float]
    recall: list[float]
    positives: int
    negatives: int
    average_precision: float


class CalibrationEntry(BaseModel):
    point: OperatingPoint
    calibrated_on_version: int
    created_at: str
    curve: PRCurve | None = None  # present when asked for (GET /policies?curves=true)


class PolicyVersion(BaseModel):
    id: int
    name: str
    version: int
    active: bool
    encoder: str
    created_at: str
    note: str | None = None
    policy: PolicyBody
    calibration: dict[str, CalibrationEntry] = Field(default_factory=dict)


# ---- decisions ----------------------------------------------------------------------------------
class ConceptScore(BaseModel):
    name: str
    score: float
    threshold: float
    review_threshold: float | None
    margin: float
    level: str
    action: str


class ModerationDecision(BaseModel):
    source: str
    action: str
    concepts: list[ConceptScore]
    policy: str
    version: int | None
    adjusted: bool
    photo_id: int | None
    error: str | None = None
    hits: list[str]


class StoredDecision(BaseModel):
    id: int
    photo_id: int
    action: str
    hits: list[str]
    review: list[str]
    adjusted: bool
    scores: dict[str, float]
    policy: str
    version: int
    run_id: int | None
    created_at: str
    current: bool


class DecisionPage(BaseModel):
    offset: int
    limit: int
    count: int
    results: list[StoredDecision]


class ConceptCounts(BaseModel):
    hit: int
    review: int


class RescanReport(BaseModel):
    policy: str
    version: int
    dry_run: bool
    photos: int
    changed: int
    by_action: dict[str, int]
    by_concept: dict[str, ConceptCounts]
    changes: dict[str, int]
    changed_by_concept: dict[str, int]
    examples: dict[str, list[int]]
    run_id: int | None
    seconds: float


class Calibration(BaseModel):
    concept: str
    policy: str
    version: int
    point: OperatingPoint
    curve: PRCurve
    written_version: int | None


# ---- answering ----------------------------------------------------------------------------------
class Citation(BaseModel):
    id: int
    paths: list[str]


class Retrieved(BaseModel):
    id: int
    score: float
    path: str | None


class Dropped(BaseModel):
    id: int
    reason: str


class PhotoAnswer(BaseModel):
    id: int
    answer: str
    supports: bool


class AskAnswer(BaseModel):
    question: str
    answer: str
    strategy: str
    model: str
    citations: list[Citation]
    retrieved: list[Retrieved]
    shown: list[int]
    dropped: list[Dropped]
    invented: list[int]
    per_photo: list[PhotoAnswer]
    nothing_relevant: bool
    timings: dict[str, float]

