"""Stored library decisions: the append-only history, each photo's current decision, and listing them.

A decision is identified by its outcome and the concepts it hit or put in review; writing one
adds a history row (never updated) and points the photo's ``moderation_state`` row at it. The state
row also keeps the photo's exact float32 scores (see :mod:`retrieval.moderation.rescan`). History rows
outlive their photo: each names the photo's sha256, which identifies it after deletion.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from indexer.catalog.models import ModerationDecision, ModerationPolicy, ModerationState, Photo
from indexer.collection import Collection
from indexer.core.errors import InputError

from .decide import LEVEL_HIT, LEVEL_REVIEW, DecisionArrays
from ..outcomes import OUTCOMES

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


def scores_blob(row: np.ndarray) -> bytes:
    """The stored form of one photo's concept scores (little-endian float32, policy concept order)."""
    return np.asarray(row, dtype="<f4").tobytes()


def write_decisions(s: Session, *, policy_id: int, run_id: int | None, names: Sequence[str], photo_ids: np.ndarray,
                    arrays: DecisionArrays, now: datetime) -> int:
    """Append one history row per photo and make it the photo's current decision; returns the count.

    Plain executemany statements (no RETURNING, which SQLite answers row by row): a photo's newest
    history row, the one just appended, is the one with its highest id (the history is append-only).
    """
    n = len(photo_ids)
    hit = arrays.levels == LEVEL_HIT
    rev = arrays.levels == LEVEL_REVIEW
    dec, state = ModerationDecision.__table__, ModerationState.__table__
    newest = select(func.max(dec.c.id)).where(dec.c.photo_id == bindparam("pid")).scalar_subquery()
    set_state = state.insert().values(photo_id=bindparam("pid"), decision_id=newest, action=bindparam("act"),
                                      hits=bindparam("hit"), review=bindparam("rev"), scores=bindparam("blob"),
                                      scores_policy_id=policy_id)
    conn = s.connection()
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        pids = [int(p) for p in photo_ids[start:stop]]
        sha = {int(i): h for i, h in conn.execute(select(Photo.id, Photo.sha256).where(Photo.id.in_(pids)))}
        missing = [p for p in pids if p not in sha]
        if missing:
            raise ValueError(f"cannot store decisions for photo id(s) {missing[:5]} that are not in the catalog")
        part = [{"pid": pid, "act": OUTCOMES[int(arrays.outcome[i])], "hit": join_names(names, hit[i]),
                 "rev": join_names(names, rev[i]), "blob": scores_blob(arrays.scores[i]), "i": i}
                for pid, i in zip(pids, range(start, stop))]
        conn.execute(dec.insert(), [
            {"photo_id": r["pid"], "photo_sha256": sha[r["pid"]], "policy_id": policy_id, "run_id": run_id,
             "action": r["act"], "hits": r["hit"], "review": r["rev"], "adjusted": bool(arrays.adjusted[r["i"]]),
             "scores": json.dumps({c: round(float(v), 6) for c, v in zip(names, arrays.scores[r["i"]])}),
             "created_at": now} for r in part])
        conn.execute(delete(state).where(state.c.photo_id.in_(pids)))
        conn.execute(set_state, [{k: r[k] for k in ("pid", "act", "hit", "rev", "blob")} for r in part])
    return n


def refresh_scores(s: Session, *, policy_id: int, photo_ids: np.ndarray, scores: np.ndarray) -> int:
    """Store fresh exact scores in the state of photos whose decision did not change (no history row)."""
    stmt = (update(ModerationState.__table__).where(ModerationState.__table__.c.photo_id == bindparam("pid"))
            .values(scores=bindparam("blob"), scores_policy_id=policy_id))
    n = len(photo_ids)
    for start in range(0, n, 20 * CHUNK):
        stop = min(n, start + 20 * CHUNK)
        s.connection().execute(stmt, [{"pid": int(photo_ids[i]), "blob": scores_blob(scores[i])}
                                      for i in range(start, stop)])
    return n


@dataclass
class DecisionRecord:
    """One stored decision (a history row), with the policy version that made it."""

    id: int
    photo_id: int
    photo_sha256: str
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
    photo_deleted: bool = False  # the photo is no longer in the catalog (its history is kept)
    history: list["DecisionRecord"] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat(timespec="seconds")
        out["history"] = [h.to_dict() for h in self.history]
        return out


def _records(s: Session, stmt: Any, current_ids: set[int]) -> list[DecisionRecord]:
    out = []
    for d, name, version in s.execute(stmt):
        out.append(DecisionRecord(id=d.id, photo_id=d.photo_id, photo_sha256=d.photo_sha256, action=d.action,
                                  hits=split_names(d.hits),
                                  review=split_names(d.review), adjusted=d.adjusted, scores=json.loads(d.scores),
                                  policy=name, version=version, run_id=d.run_id, created_at=d.created_at,
                                  current=d.id in current_ids))
    return out


def list_decisions(coll: Collection, *, photo_id: int | None = None, action: str | None = None,
                   history: bool = False, limit: int | None = None) -> list[DecisionRecord]:
    """Current decisions (by photo id), filtered by photo and outcome; ``history`` adds each one's earlier rows.

    A photo's history is found by its sha256, so it includes rows written while the same content had
    another id. For a deleted ``photo_id`` with ``history``, its last row is returned (``photo_deleted``,
    not current) with the rest of its history, one entry per photo content that had that id.
    """
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
            by_sha = {r.photo_sha256: r for r in current}
            shas = list(by_sha)
            for start in range(0, len(shas), CHUNK):
                stmt = (base.where(ModerationDecision.photo_sha256.in_(shas[start:start + CHUNK]))
                        .order_by(ModerationDecision.photo_sha256, ModerationDecision.id))
                for rec in _records(s, stmt, {r.id for r in current}):
                    by_sha[rec.photo_sha256].history.append(rec)
        elif history and photo_id is not None and action is None \
                and s.get(Photo, photo_id) is None:  # a deleted photo: its kept history
            return _deleted_history(_records(s, base.where(ModerationDecision.photo_id == photo_id)
                                             .order_by(ModerationDecision.id), set()))
    return current


def _deleted_history(rows: list[DecisionRecord]) -> list[DecisionRecord]:
    """Per photo content (sha256): its last row, carrying the whole trail as ``history``."""
    groups: dict[str, list[DecisionRecord]] = {}
    for rec in rows:
        rec.photo_deleted = True
        groups.setdefault(rec.photo_sha256, []).append(rec)
    return [replace(g[-1], history=list(g)) for g in groups.values()]


def decision_history(coll: Collection, photo_id: int) -> list[DecisionRecord]:
    """Every decision stored for one photo, oldest first (the last one is current).

    A catalogued photo's rows are found by its sha256; a deleted photo's by its former id.
    """
    with coll.catalog.session() as s:
        current = set(s.scalars(select(ModerationState.decision_id).where(ModerationState.photo_id == photo_id)))
        sha = s.scalar(select(Photo.sha256).where(Photo.id == photo_id))
        stmt = (select(ModerationDecision, ModerationPolicy.name, ModerationPolicy.version)
                .join(ModerationPolicy, ModerationPolicy.id == ModerationDecision.policy_id)
                .where(ModerationDecision.photo_id == photo_id if sha is None
                       else ModerationDecision.photo_sha256 == sha)
                .order_by(ModerationDecision.id))
        records = _records(s, stmt, current)
        for r in records:
            r.photo_deleted = sha is None
        return records
