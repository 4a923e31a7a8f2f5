"""Response models of ``POST /ask`` (``ui/api/routers/ask.py``).

Plain pydantic, so the web client reads the same shapes without importing the answerer; the
request model stays with the route.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RetrievedOut(BaseModel):
    id: int
    score: float
    path: str | None


class CitationOut(BaseModel):
    id: int
    paths: list[str]


class DroppedOut(BaseModel):
    id: int
    reason: str = Field(description="max_images, context, unreadable: ..., below relevance threshold")


class PhotoAnswerOut(BaseModel):
    id: int
    answer: str
    supports: bool


class AskResponse(BaseModel):
    """The answer, the photos it cites (checked against those shown), and what was retrieved and dropped."""

    question: str
    answer: str
    strategy: Literal["joint", "per-photo", "single", "none"]
    model: str
    citations: list[CitationOut]
    retrieved: list[RetrievedOut]
    shown: list[int]
    dropped: list[DroppedOut]
    invented: list[int] = Field(description="ids the model cited without being shown them (not in citations)")
    per_photo: list[PhotoAnswerOut]
    nothing_relevant: bool
    timings: dict[str, float]
