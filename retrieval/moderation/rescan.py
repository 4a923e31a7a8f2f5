"""Re-evaluate the whole collection under a policy version from stored vectors (no photo is re-read).

Vectors are streamed in chunks and scored with the version's stored prompt vectors; each new
decision is compared with the photo's current one (outcome + hit concepts + review concepts).
A dry run reports the differences and writes nothing. A real run holds the collection's writer
lock and, in one transaction, appends a history row only for photos whose decision changes and
records the run. :func:`decide_in_session` does the same for a batch of freshly encoded photos
inside an index run's own transaction.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.catalog_models import Embedding, ModerationPolicy, ModerationRun, ModerationState
from indexer.collection import Collection
from indexer.errors import EncoderMismatchError, InputError
from indexer.vectors import decode_vectors
from indexer.writer_lock import WriterLock

from .decide import LEVEL_HIT, LEVEL_REVIEW, DecisionArrays
from .history import CHUNK, concept_masks, split_names, write_decisions
from .policy import OUTCOMES
from .store import PolicyRecord, record_of, utcnow

log = logging.getLogger(__name__)

NONE = "none"  # the "before" of a photo that has no decision yet


@dataclass
class RescanReport:
    """What a re-evaluation found (dry run) or did (real run)."""

    policy: str
    version: int
    dry_run: bool
    photos: int = 0
    changed: int = 0
    by_action: dict[str, int] = field(default_factory=dict)  # every photo's new outcome
    by_concept: dict[str, dict[str, int]] = field(default_factory=dict)  # hits / review per concept, all photos
    changes: dict[str, int] = field(default_factory=dict)  # "allow -> quarantine": count, changed photos
    changed_by_concept: dict[str, int] = field(default_factory=dict)  # photos whose level for a concept changes
    examples: dict[str, list[int]] = field(default_factory=dict)  # a few photo ids per change and concept
    run_id: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Current:
    """Every photo's current decision as sorted ids and comparable codes."""

    ids: np.ndarray
    rank: np.ndarray
    hit: np.ndarray
    review: np.ndarray
    foreign: np.ndarray  # names a concept this policy lacks: always counts as changed


def _current(s: Session, names: list[str], photo_ids: np.ndarray | None = None) -> _Current:
    pos = {n: j for j, n in enumerate(names)}
    codes: dict[tuple[str, str, str], tuple[int, int, int, bool]] = {}

    def code(action: str, hits: str, review: str) -> tuple[int, int, int, bool]:
        key = (action, hits, review)
        if key not in codes:
            h, r = split_names(hits), split_names(review)
            foreign = any(n not in pos for n in h + r) or action not in OUTCOMES
            codes[key] = (OUTCOMES.index(action) if action in OUTCOMES else -1,
                          sum(1 << pos[n] for n in h if n in pos), sum(1 << pos[n] for n in r if n in pos), foreign)
        return codes[key]

    stmt = select(ModerationState.photo_id, ModerationState.action, ModerationState.hits,
                  ModerationState.review).order_by(ModerationState.photo_id)
    if photo_ids is None:
        rows = s.execute(stmt).all()
    else:
        wanted = [int(i) for i in photo_ids]
        rows = sorted(r for start in range(0, len(wanted), CHUNK)
                      for r in s.execute(stmt.where(ModerationState.photo_id.in_(wanted[start:start + CHUNK]))))
    table = [code(a, h, r) for _, a, h, r in rows]
    return _Current(np.asarray([r[0] for r in rows], np.int64),
                    np.asarray([t[0] for t in table], np.int64), np.asarray([t[1] for t in table], np.int64),
                    np.asarray([t[2] for t in table], np.int64), np.asarray([t[3] for t in table], bool))


def _lookup(cur: _Current, ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """For sorted ``ids``: (known, old rank or -1, old hit mask, old review mask, foreign)."""
    if not len(cur.ids):
        none = np.zeros(len(ids), bool)
        return none, np.full(len(ids), -1, np.int64), np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64), none
    at = np.minimum(np.searchsorted(cur.ids, ids), len(cur.ids) - 1)
    known = cur.ids[at] == ids
    return (known, np.where(known, cur.rank[at], -1), np.where(known, cur.hit[at], 0),
            np.where(known, cur.review[at], 0), known & cur.foreign[at])


def _vector_chunks(coll: Collection, chunk: int) -> Any:
    """(ids, unit vectors) of every stored vector, ``chunk`` rows at a time, by photo id."""
    with coll.catalog.session() as s:
        result = s.execute(select(Embedding.photo_id, Embedding.vector).order_by(Embedding.photo_id)
                           .execution_options(yield_per=chunk))
        for part in result.partitions(chunk):
            yield np.asarray([r[0] for r in part], np.int64), decode_vectors([r[1] for r in part], coll.dim)


def _take(arrays: DecisionArrays, rows: np.ndarray) -> DecisionArrays:
    return DecisionArrays(arrays.scores[rows], arrays.levels[rows], arrays.outcome[rows], arrays.adjusted[rows])


def _concat(parts: list[DecisionArrays], n_concepts: int) -> DecisionArrays:
    if not parts:
        return DecisionArrays(np.zeros((0, n_concepts), np.float32), np.zeros((0, n_concepts), np.int8),
                              np.zeros(0, np.int8), np.zeros(0, bool))
    return DecisionArrays(*(np.concatenate([getattr(p, f) for p in parts])
                            for f in ("scores", "levels", "outcome", "adjusted")))


def with_thresholds(record: PolicyRecord, thresholds: dict[str, float]) -> PolicyRecord:
    """``record`` with some concepts' thresholds moved (each review band keeps its width): what a
    threshold slider previews. Unknown concepts or out-of-range values are an InputError."""
    unknown = sorted(set(thresholds) - set(record.policy.concept_names))
    if unknown:
        raise InputError(f"policy {record.name} has no concept {', '.join(map(repr, unknown))}")
    concepts = []
    for c in record.policy.concepts:
        if c.name not in thresholds:
            concepts.append(c)
            continue
        new = float(thresholds[c.name])
        if not -1.0 <= new <= 1.0:
            raise InputError(f"threshold for {c.name!r} must be between -1 and 1, got {new}")
        review = None if c.review_threshold is None else max(-1.0, new - (c.threshold - c.review_threshold))
        concepts.append(c.model_copy(update={"threshold": new, "review_threshold": review}))
    return replace(record, policy=record.policy.model_copy(update={"concepts": concepts}))


def rescan(coll: Collection, record: PolicyRecord, *, dry_run: bool = False, chunk: int = 65536,
           examples: int = 5, lock: WriterLock | None = None, wait: bool = False,
           thresholds: dict[str, float] | None = None) -> RescanReport:
    """Apply ``record`` to every stored vector; see the module docstring.

    ``thresholds`` (dry runs only) previews the version with those concepts' thresholds moved,
    without storing anything: store a new version to apply them.

    ``lock``: a writer lock the caller already holds; otherwise a real run takes one (refusing
    with :class:`~indexer.errors.WriterBusyError`, or waiting with ``wait``). A dry run takes none.
    """
    start = time.perf_counter()
    if thresholds:
        if not dry_run:
            raise InputError("threshold overrides only preview (dry run); store a new policy version to apply them")
        record = with_thresholds(record, thresholds)
    compiled = record.compiled()
    if compiled.dim != coll.dim or record.encoder != coll.spec.id:
        raise EncoderMismatchError(f"policy {record.name} version {record.version} was stored for encoder "
                                   f"{record.encoder!r}; the collection uses {coll.spec.id!r}")
    names = compiled.names
    report = RescanReport(record.name, record.version, dry_run)
    held = (nullcontext(lock) if dry_run or (lock is not None and lock.held)
            else coll.writer_lock().acquire(wait=wait))
    with held:
        with coll.catalog.session() as s:
            cur = _current(s, names)
        by_action: Counter[str] = Counter()
        hits_total = np.zeros(len(names), np.int64)
        review_total = np.zeros(len(names), np.int64)
        changes: Counter[str] = Counter()
        changed_concepts = np.zeros(len(names), np.int64)
        samples: dict[str, list[int]] = defaultdict(list)
        changed_ids: list[np.ndarray] = []
        changed_arrays: list[DecisionArrays] = []
        for ids, vecs in _vector_chunks(coll, chunk):
            arrays = compiled.decide_scores(compiled.scores(vecs))
            hit, rev = concept_masks(arrays.levels)
            report.photos += len(ids)
            for rank, count in enumerate(np.bincount(arrays.outcome, minlength=len(OUTCOMES))):
                by_action[OUTCOMES[rank]] += int(count)
            hits_total += (arrays.levels == LEVEL_HIT).sum(axis=0)
            review_total += (arrays.levels == LEVEL_REVIEW).sum(axis=0)
            known, old_rank, old_hit, old_rev, foreign = _lookup(cur, ids)
            changed = ~known | foreign | (old_rank != arrays.outcome) | (old_hit != hit) | (old_rev != rev)
            rows = np.flatnonzero(changed)
            if not len(rows):
                continue
            diff = (old_hit[rows] ^ hit[rows]) | (old_rev[rows] ^ rev[rows])
            for j, name in enumerate(names):
                touched = rows[(diff >> j) & 1 == 1]
                changed_concepts[j] += len(touched)
                room = examples - len(samples[name])
                if room > 0:
                    samples[name].extend(int(i) for i in ids[touched[:room]])
            trans = (old_rank[rows] + 1) * 8 + arrays.outcome[rows]  # one code per (before, after)
            for code in np.unique(trans):
                sel = rows[trans == code]
                key = f"{OUTCOMES[code // 8 - 1] if code // 8 else NONE} -> {OUTCOMES[code % 8]}"
                changes[key] += len(sel)
                room = examples - len(samples[key])
                if room > 0:
                    samples[key].extend(int(i) for i in ids[sel[:room]])
            changed_ids.append(ids[rows])
            changed_arrays.append(_take(arrays, rows))
        report.changed = int(sum(changes.values()))
        report.by_action = {a: by_action[a] for a in OUTCOMES if by_action[a]}
        report.by_concept = {n: {"hit": int(hits_total[j]), "review": int(review_total[j])}
                             for j, n in enumerate(names)}
        report.changes = dict(changes.most_common())
        report.changed_by_concept = {n: int(changed_concepts[j]) for j, n in enumerate(names) if changed_concepts[j]}
        report.examples = {k: v for k, v in samples.items() if v}
        if not dry_run:
            report.run_id = _write(coll, record, names, changed_ids, _concat(changed_arrays, len(names)), report)
    report.seconds = round(time.perf_counter() - start, 3)
    log.info("moderation %s of %s v%d: %d photos, %d changed", "dry run" if dry_run else "run", record.name,
             record.version, report.photos, report.changed)
    return report


def _write(coll: Collection, record: PolicyRecord, names: list[str], ids: list[np.ndarray],
           arrays: DecisionArrays, report: RescanReport) -> int:
    """Record the run and the changed decisions in one transaction; the run's id."""
    started = utcnow()
    with coll.catalog.session() as s, s.begin():
        run = ModerationRun(policy_id=record.id, source="rescan", photos=report.photos, changed=report.changed,
                            started_at=started, finished_at=started)
        s.add(run)
        s.flush()
        photo_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        write_decisions(s, policy_id=record.id, run_id=run.id, names=names, photo_ids=photo_ids, arrays=arrays,
                        now=started)
        run.finished_at = utcnow()
        return int(run.id)


def decide_in_session(s: Session, photo_ids: np.ndarray, vectors: np.ndarray) -> int:
    """Apply the active policy to freshly encoded photos inside the caller's open transaction.

    The hook for an index run (decisions commit or roll back with the vectors). Only photos
    whose decision changes get a history row; returns how many did (0 without an active policy).
    """
    row = s.scalar(select(ModerationPolicy).where(ModerationPolicy.active.is_(True)))
    if row is None or not len(photo_ids):
        return 0
    record = record_of(row)
    compiled = record.compiled()
    vecs = np.asarray(vectors, dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[1] != compiled.dim:
        raise EncoderMismatchError(f"active policy {record.name} v{record.version} has {compiled.dim}-d prompt "
                                   f"vectors; got vectors of shape {vecs.shape}")
    order = np.argsort(np.asarray(photo_ids, np.int64), kind="stable")
    ids, vecs = np.asarray(photo_ids, np.int64)[order], vecs[order]
    arrays = compiled.decide(vecs)
    hit, rev = concept_masks(arrays.levels)
    known, old_rank, old_hit, old_rev, foreign = _lookup(_current(s, compiled.names, ids), ids)
    rows = np.flatnonzero(~known | foreign | (old_rank != arrays.outcome) | (old_hit != hit) | (old_rev != rev))
    if len(rows):
        write_decisions(s, policy_id=record.id, run_id=None, names=compiled.names, photo_ids=ids[rows],
                        arrays=_take(arrays, rows), now=utcnow())
    return int(len(rows))
