"""Stored library decisions: the append-only history, each photo's current decision, and listing them.

A decision is identified by its outcome and the concepts it hit or put in review; writing one
adds a history row (never updated) and points the photo's ``moderation_state`` row at it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from indexer.catalog_models import ModerationDecision, ModerationPolicy, ModerationState
from indexer.collection import Collection
from indexer.errors import InputError

from .decide import LEVEL_HIT, LEVEL_REVIEW, DecisionArrays
from .policy import OUTCOMES

CHUNK = 500  # rows per statement (bound parameters stay small on every database)


def join_names(names: Sequence[str], mask: np.ndarray) -> str:
    """Comma-joined names where ``mask`` is set (concept names never contain commas)."""
    return ",".join(n for n, m in zip(names, mask) if m)


def split_names(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def concept_masks(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hit bitmask, review bitmask) per row of (n, C) levels, one bit per concept (C <= 63)."""
    bits = np.left_shift(np.int64(1), np.arange(levels.shape[1], dtype=np.int64))
    return (levels == LEVEL_HIT).astype(np.int64) @ bits, (levels == LEVEL_REVIEW).astype(np.int64) @ bits


def write_decisions(s: Session, *, policy_id: int, run_id: int | None, names: Sequence[str], photo_ids: np.ndarray,
                    arrays: DecisionArrays, now: datetime) -> int:
    """Append one history row per photo and make it the photo's current decision; returns the count."""
    n = len(photo_ids)
    hit = arrays.levels == LEVEL_HIT
    rev = arrays.levels == LEVEL_REVIEW
    rows = [{"photo_id": int(photo_ids[i]), "policy_id": policy_id, "run_id": run_id,
             "action": OUTCOMES[int(arrays.outcome[i])], "hits": join_names(names, hit[i]),
             "review": join_names(names, rev[i]), "adjusted": bool(arrays.adjusted[i]),
             "scores": json.dumps({c: round(float(v), 6) for c, v in zip(names, arrays.scores[i])}),
             "created_at": now} for i in range(n)]
    for start in range(0, n, CHUNK):
        part = rows[start:start + CHUNK]
        ids = s.scalars(insert(ModerationDecision).returning(ModerationDecision.id, sort_by_parameter_order=True),
                        part).all()
        s.execute(delete(ModerationState).where(ModerationState.photo_id.in_([r["photo_id"] for r in part])))
        s.execute(insert(ModerationState), [{"photo_id": r["photo_id"], "decision_id": did, "action": r["action"],
                                             "hits": r["hits"], "review": r["review"]} for r, did in zip(part, ids)])
    return n


@dataclass
class DecisionRecord:
    """One stored decision (a history row), with the policy version that made it."""

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
    created_at: datetime
    current: bool = False
    history: list["DecisionRecord"] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat(timespec="seconds")
        out["history"] = [h.to_dict() for h in self.history]
        return out


def _records(s: Session, stmt: Any, current_ids: set[int]) -> list[DecisionRecord]:
    out = []
    for d, name, version in s.execute(stmt):
        out.append(DecisionRecord(id=d.id, photo_id=d.photo_id, action=d.action, hits=split_names(d.hits),
                                  review=split_names(d.review), adjusted=d.adjusted, scores=json.loads(d.scores),
                                  policy=name, version=version, run_id=d.run_id, created_at=d.created_at,
                                  current=d.id in current_ids))
    return out


def list_decisions(coll: Collection, *, photo_id: int | None = None, action: str | None = None,
                   history: bool = False, limit: int | None = None) -> list[DecisionRecord]:
    """Current decisions (by photo id), filtered by photo and outcome; ``history`` adds each one's earlier rows."""
    if action is not None and action not in OUTCOMES:
        raise InputError(f"unknown action {action!r}; use one of {', '.join(OUTCOMES)}")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be >= 1, got {limit}")
    base = (select(ModerationDecision, ModerationPolicy.name, ModerationPolicy.version)
            .join(ModerationPolicy, ModerationPolicy.id == ModerationDecision.policy_id))
    with coll.catalog.session() as s:
        cur = (base.join(ModerationState, ModerationState.decision_id == ModerationDecision.id)
               .order_by(ModerationDecision.photo_id))
        if photo_id is not None:
            cur = cur.where(ModerationDecision.photo_id == photo_id)
        if action is not None:
            cur = cur.where(ModerationState.action == action)
        if limit is not None:
            cur = cur.limit(limit)
        current = _records(s, cur, set())
        for r in current:
            r.current = True
        if history and current:
            by_photo = {r.photo_id: r for r in current}
            ids = list(by_photo)
            for start in range(0, len(ids), CHUNK):
                stmt = (base.where(ModerationDecision.photo_id.in_(ids[start:start + CHUNK]))
                        .order_by(ModerationDecision.photo_id, ModerationDecision.id))
                for rec in _records(s, stmt, {r.id for r in current}):
                    by_photo[rec.photo_id].history.append(rec)
    return current


def decision_history(coll: Collection, photo_id: int) -> list[DecisionRecord]:
    """Every decision ever stored for one photo, oldest first (the last one is current)."""
    with coll.catalog.session() as s:
        current = set(s.scalars(select(ModerationState.decision_id).where(ModerationState.photo_id == photo_id)))
        stmt = (select(ModerationDecision, ModerationPolicy.name, ModerationPolicy.version)
                .join(ModerationPolicy, ModerationPolicy.id == ModerationDecision.policy_id)
                .where(ModerationDecision.photo_id == photo_id).order_by(ModerationDecision.id))
        return _records(s, stmt, current)
