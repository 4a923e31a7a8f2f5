"""Re-evaluate the whole collection under a policy version from stored data (no photo is re-read).

Each photo's current decision keeps its exact float32 concept scores and the policy version they
were computed under. A concept whose score key (its prompt and contrast vectors, see
:func:`~retrieval.moderation.decide.score_keys`) is unchanged is re-decided from those stored
scores; stored vectors are read and scored only for photos with no usable stored scores (no
decision yet, or a concept whose prompts changed). So a new version that only moves thresholds,
review thresholds, actions or the special-care adjustment costs a pass over the stored scores plus
the writes of the decisions that change. Each new decision is compared with the photo's current one
(outcome + hit concepts + review concepts). A dry run reports the differences and writes nothing.
A real run holds the collection's writer lock and, in one transaction, appends a history row only
for photos whose decision changes, stores fresh scores for photos that had to be scored from their
vectors, and records the run. :func:`decide_in_session` does the same for a batch of freshly encoded
photos inside an index run's own transaction.
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

from indexer.catalog.models import Embedding, ModerationPolicy, ModerationRun, ModerationState
from indexer.collection import Collection
from indexer.core.errors import EncoderMismatchError, InputError
from indexer.core.vectors import VECTOR_DTYPE, decode_vectors, l2_normalize
from indexer.writer_lock import WriterLock

from .decide import LEVEL_HIT, LEVEL_REVIEW, CompiledPolicy, DecisionArrays
from .history import CHUNK, concept_masks, refresh_scores, split_names, write_decisions
from ..outcomes import OUTCOMES
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
    rescored: int = 0  # photos scored from their stored vectors (the rest were re-decided from stored scores)
    run_id: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Current:
    """Every photo's current decision as sorted ids and comparable codes, plus its stored scores."""

    ids: np.ndarray
    rank: np.ndarray
    hit: np.ndarray
    review: np.ndarray
    foreign: np.ndarray  # names a concept this policy lacks: always counts as changed
    score_policy: np.ndarray  # policy id the stored scores follow; -1 where none are stored
    blobs: list[bytes | None] = field(default_factory=list)  # stored float32 scores, aligned with ids


def _current(s: Session, names: list[str], photo_ids: np.ndarray | None = None) -> _Current:
    pos = {n: j for j, n in enumerate(names)}

    def code(action: str, hits: str, review: str) -> tuple[int, int, int, bool]:
        h, r = split_names(hits), split_names(review)
        foreign = any(n not in pos for n in h + r) or action not in OUTCOMES
        return (OUTCOMES.index(action) if action in OUTCOMES else -1,
                sum(1 << pos[n] for n in h if n in pos), sum(1 << pos[n] for n in r if n in pos), foreign)

    t = ModerationState.__table__.c
    stmt = select(t.photo_id, t.action, t.hits, t.review, t.scores_policy_id, t.scores).order_by(t.photo_id)
    conn = s.connection()
    if photo_ids is None:
        rows = _raw_rows(s, stmt)
    else:
        wanted = [int(i) for i in photo_ids]
        rows = sorted((r for start in range(0, len(wanted), CHUNK)
                       for r in conn.execute(stmt.where(t.photo_id.in_(wanted[start:start + CHUNK])))),
                      key=lambda r: r[0])
    n = len(rows)
    if not n:
        empty = np.zeros(0, np.int64)
        return _Current(empty, empty, empty, empty, np.zeros(0, bool), empty, [])
    pid, action, hits, review, spid, blobs = zip(*rows)
    kinds: dict[tuple[str, str, str], int] = {}
    kind = np.fromiter((kinds.setdefault(k, len(kinds)) for k in zip(action, hits, review)), np.int64, n)
    table = [code(*k) for k in kinds]  # one parse per distinct (action, hits, review)
    rank, hit, rev, foreign = (np.asarray([c[f] for c in table])[kind] for f in range(4))
    return _Current(np.asarray(pid, np.int64), rank.astype(np.int64), hit.astype(np.int64), rev.astype(np.int64),
                    foreign.astype(bool), np.fromiter((-1 if p is None else p for p in spid), np.int64, n),
                    list(blobs))


def _raw_rows(s: Session, stmt: Any) -> list[tuple[Any, ...]]:
    """All rows of a parameterless SELECT as plain DBAPI tuples: for a million rows, building SQLAlchemy
    Row objects costs about as much as the fetch itself."""
    conn = s.connection()
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
        return cursor.fetchall()
    finally:
        cursor.close()


def _lookup(cur: _Current, ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """For sorted ``ids``: (known, old rank or -1, old hit mask, old review mask, foreign)."""
    if not len(cur.ids):
        none = np.zeros(len(ids), bool)
        return none, np.full(len(ids), -1, np.int64), np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64), none
    at = np.minimum(np.searchsorted(cur.ids, ids), len(cur.ids) - 1)
    known = cur.ids[at] == ids
    return (known, np.where(known, cur.rank[at], -1), np.where(known, cur.hit[at], 0),
            np.where(known, cur.review[at], 0), known & cur.foreign[at])


def _vector_chunks(coll: Collection, chunk: int, wanted: np.ndarray | None = None, total: int = 0) -> Any:
    """(ids, unit vectors) by photo id, ``chunk`` rows at a time: every stored vector, or the sorted
    ``wanted`` ids (looked up by id when they are few, else streamed and filtered)."""
    t = Embedding.__table__.c
    stmt = select(t.photo_id, t.vector).order_by(t.photo_id)
    with coll.catalog.session() as s:
        conn = s.connection()
        if wanted is not None and len(wanted) * 4 < total:
            for start in range(0, len(wanted), chunk):
                part = wanted[start:start + chunk].tolist()
                rows = sorted((r for k in range(0, len(part), CHUNK)
                               for r in conn.execute(stmt.where(t.photo_id.in_(part[k:k + CHUNK])))),
                              key=lambda r: r[0])
                if rows:
                    ids, blobs = zip(*rows)
                    yield np.asarray(ids, np.int64), decode_vectors(list(blobs), coll.dim)
            return
        result = conn.execution_options(yield_per=chunk).execute(stmt)
        for part in result.partitions(chunk):
            ids, blobs = zip(*part)
            idx = np.asarray(ids, np.int64)
            if wanted is not None:
                keep = np.flatnonzero(np.isin(idx, wanted, assume_unique=True))
                if not len(keep):
                    continue
                idx, blobs = idx[keep], [blobs[k] for k in keep]
            yield idx, decode_vectors(list(blobs), coll.dim)


def _vector_ids(coll: Collection) -> np.ndarray:
    t = Embedding.__table__.c
    with coll.catalog.session() as s:
        rows = _raw_rows(s, select(t.photo_id).order_by(t.photo_id))
    return np.fromiter((r[0] for r in rows), np.int64, len(rows))


def _stored_scores(s: Session, compiled: CompiledPolicy, cur: _Current, ids: np.ndarray,
                   out: np.ndarray) -> np.ndarray:
    """Fill rows of ``out`` (aligned with sorted ``ids``) from the stored scores where every concept's
    score key matches; returns the mask of rows filled (the rest need their vectors)."""
    filled = np.zeros(len(ids), bool)
    if not len(cur.ids) or not len(ids):
        return filled
    at = np.minimum(np.searchsorted(cur.ids, ids), len(cur.ids) - 1)
    known = cur.ids[at] == ids
    keys = compiled.score_keys()
    for policy_id in np.unique(cur.score_policy[at[known]]):
        if policy_id < 0:
            continue
        row = s.get(ModerationPolicy, int(policy_id))
        if row is None:
            continue
        old = record_of(row).compiled()
        old_keys = {k: c for c, k in enumerate(old.score_keys())}
        cols = [old_keys.get(k, -1) for k in keys]
        if min(cols) < 0:
            continue  # a concept's prompts changed: these photos are scored from their vectors
        rows = np.flatnonzero(known & (cur.score_policy[at] == policy_id))
        blobs = [cur.blobs[k] for k in at[rows]]
        width = 4 * len(old.names)
        good = np.fromiter((b is not None and len(b) == width for b in blobs), bool, len(blobs))
        rows = rows[good]
        if not len(rows):
            continue
        stored = np.frombuffer(b"".join(b for b, g in zip(blobs, good) if g), dtype="<f4").reshape(len(rows), -1)
        out[rows] = stored[:, cols]
        filled[rows] = True
    return filled


def _all_scores(coll: Collection, compiled: CompiledPolicy, cur: _Current, chunk: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted ids of every stored vector, their (n, C) scores, mask of the rows scored from vectors)."""
    ids = _vector_ids(coll)
    scores = np.empty((len(ids), len(compiled.names)), np.float32)
    with coll.catalog.session() as s:
        filled = _stored_scores(s, compiled, cur, ids, scores)
    need = ids[~filled]
    scored = np.zeros(len(ids), bool)
    if len(need):
        for part_ids, vecs in _vector_chunks(coll, chunk, None if len(need) == len(ids) else need, len(ids)):
            at = np.minimum(np.searchsorted(ids, part_ids), len(ids) - 1)
            mine = ids[at] == part_ids  # a vector committed since ids were read waits for the next run
            scores[at[mine]] = compiled.scores(vecs[mine])
            scored[at[mine]] = True
    keep = filled | scored  # a photo deleted meanwhile has neither
    return ids[keep], scores[keep], scored[keep]


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
    with :class:`~indexer.core.errors.WriterBusyError`, or waiting with ``wait``). A dry run takes none.
    """
    start_time = time.perf_counter()
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
        all_ids, all_scores, rescored = _all_scores(coll, compiled, cur, chunk)
        report.photos, report.rescored = len(all_ids), int(rescored.sum())
        by_action = np.zeros(len(OUTCOMES), np.int64)
        hits_total = np.zeros(len(names), np.int64)
        review_total = np.zeros(len(names), np.int64)
        changes: Counter[str] = Counter()
        changed_concepts = np.zeros(len(names), np.int64)
        samples: dict[str, list[int]] = defaultdict(list)
        changed_rows: list[np.ndarray] = []
        changed_arrays: list[DecisionArrays] = []
        for start in range(0, len(all_ids), chunk):
            ids = all_ids[start:start + chunk]
            arrays = compiled.decide_scores(all_scores[start:start + chunk])
            hit, rev = concept_masks(arrays.levels)
            by_action += np.bincount(arrays.outcome, minlength=len(OUTCOMES))
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
            changed_rows.append(start + rows)
            changed_arrays.append(_take(arrays, rows))
        report.changed = int(sum(changes.values()))
        report.by_action = {a: int(by_action[k]) for k, a in enumerate(OUTCOMES) if by_action[k]}
        report.by_concept = {n: {"hit": int(hits_total[j]), "review": int(review_total[j])}
                             for j, n in enumerate(names)}
        report.changes = dict(changes.most_common())
        report.changed_by_concept = {n: int(changed_concepts[j]) for j, n in enumerate(names) if changed_concepts[j]}
        report.examples = {k: v for k, v in samples.items() if v}
        if not dry_run:
            rows = np.concatenate(changed_rows) if changed_rows else np.zeros(0, np.int64)
            refresh = rescored.copy()  # scored from vectors, decision unchanged, state present: keep the scores
            refresh[rows] = False
            refresh &= _lookup(cur, all_ids)[0]
            report.run_id = _write(coll, record, names, all_ids[rows], _concat(changed_arrays, len(names)), report,
                                   all_ids[refresh], all_scores[refresh])
    report.seconds = round(time.perf_counter() - start_time, 3)
    log.info("moderation %s of %s v%d: %d photos, %d changed, %d scored from vectors", "dry run" if dry_run
             else "run", record.name, record.version, report.photos, report.changed, report.rescored)
    return report


def _write(coll: Collection, record: PolicyRecord, names: list[str], photo_ids: np.ndarray,
           arrays: DecisionArrays, report: RescanReport, refresh_ids: np.ndarray, refresh_scores_: np.ndarray) -> int:
    """Record the run, the changed decisions and refreshed scores in one transaction; the run's id."""
    started = utcnow()
    with coll.catalog.session() as s, s.begin():
        run = ModerationRun(policy_id=record.id, source="rescan", photos=report.photos, changed=report.changed,
                            started_at=started, finished_at=started)
        s.add(run)
        s.flush()
        write_decisions(s, policy_id=record.id, run_id=run.id, names=names, photo_ids=photo_ids, arrays=arrays,
                        now=started)
        refresh_scores(s, policy_id=record.id, photo_ids=refresh_ids, scores=refresh_scores_)
        run.finished_at = utcnow()
        return int(run.id)


def as_stored(vectors: np.ndarray) -> np.ndarray:
    """Vectors exactly as a later read of the catalog yields them (float16 storage, re-normalised), so
    decisions made at ingest equal those of a rescan from the stored vectors."""
    return l2_normalize(np.asarray(vectors, dtype=np.float32).astype(VECTOR_DTYPE).astype(np.float32))


def decide_in_session(s: Session, photo_ids: np.ndarray, vectors: np.ndarray) -> int:
    """Apply the active policy to freshly encoded photos inside the caller's open transaction.

    The hook for an index run (decisions commit or roll back with the vectors). Photos are scored
    from their vectors as stored. Only photos whose decision changes get a history row; the others
    get their stored scores refreshed. Returns how many changed (0 without an active policy).
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
    arrays = compiled.decide_scores(compiled.scores(as_stored(vecs)))
    hit, rev = concept_masks(arrays.levels)
    known, old_rank, old_hit, old_rev, foreign = _lookup(_current(s, compiled.names, ids), ids)
    changed = ~known | foreign | (old_rank != arrays.outcome) | (old_hit != hit) | (old_rev != rev)
    rows = np.flatnonzero(changed)
    if len(rows):
        write_decisions(s, policy_id=record.id, run_id=None, names=compiled.names, photo_ids=ids[rows],
                        arrays=_take(arrays, rows), now=utcnow())
    same = np.flatnonzero(known & ~changed)
    refresh_scores(s, policy_id=record.id, photo_ids=ids[same], scores=arrays.scores[same])
    return int(len(rows))
