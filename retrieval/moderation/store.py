"""Policy versions in the catalog: setting a policy adds a version (never overwrites); one is active.

Each version stores its validated body, the encoder it was computed for and its prompt
vectors, so deciding from stored image vectors needs no model, and an old version decides
exactly as it did when it was stored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from indexer.catalog.models import ModerationPolicy
from indexer.collection import Collection
from indexer.core.errors import EncoderMismatchError, InputError

from .decide import CompiledPolicy, build_policy_weights
from .policy import Policy, PolicyError, parse_policy

log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    """What storing a policy needs: the encoder's spec (its ``id``) and ``encode_texts``."""

    spec: Any

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class PolicyRecord:
    """One stored policy version."""

    id: int
    name: str
    version: int
    active: bool
    policy: Policy
    encoder: str
    created_at: datetime
    weights: np.ndarray = field(repr=False)
    calibration: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def compiled(self) -> CompiledPolicy:
        return CompiledPolicy(self.policy, self.weights)

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """JSON form; calibration curves are summarised unless ``curves``."""
        calibration = self.calibration if curves else {
            name: {k: v for k, v in entry.items() if k != "curve"} for name, entry in self.calibration.items()}
        return {"id": self.id, "name": self.name, "version": self.version, "active": self.active,
                "encoder": self.encoder, "created_at": self.created_at.isoformat(timespec="seconds"),
                "note": self.note, "policy": self.policy.to_dict(), "calibration": calibration}


def record_of(row: ModerationPolicy) -> PolicyRecord:
    """The :class:`PolicyRecord` of a stored row."""
    policy = parse_policy(json.loads(row.body), f"{row.name} version {row.version}")
    rows = sum(len(c.prompts) + len(c.contrast) for c in policy.concepts)
    weights = np.frombuffer(row.weights, dtype=np.float32).reshape(rows, -1)
    return PolicyRecord(id=row.id, name=row.name, version=row.version, active=row.active, policy=policy,
                        encoder=row.encoder_spec_id, created_at=row.created_at, weights=weights,
                        calibration=json.loads(row.calibration) if row.calibration else {}, note=row.note)


def check_policy_encoder(coll: Collection, policy: Policy) -> None:
    """Refuse a policy written for another encoder than the collection's."""
    if policy.encoder is not None and policy.encoder != coll.spec.id:
        raise EncoderMismatchError(
            f"policy {policy.name!r} was written for encoder {policy.encoder!r} but collection {coll.path} uses "
            f"{coll.spec.id!r}; its thresholds do not transfer: calibrate it for this encoder "
            "(or remove its 'encoder' field to use it as a starting point)")


def save_policy(coll: Collection, policy: Policy, encoder: TextEncoder | None = None, *, activate: bool = False,
                weights: np.ndarray | None = None, calibration: dict[str, Any] | None = None,
                note: str | None = None) -> PolicyRecord:
    """Store ``policy`` as the next version of its name (version 1 for a new name).

    Prompt vectors come from ``weights`` (same prompts as a stored version) or are computed with
    ``encoder``, which must be the collection's. Nothing is stored if anything fails.
    """
    check_policy_encoder(coll, policy)
    if weights is None:
        if encoder is None:
            raise ValueError("save_policy needs an encoder or precomputed weights")
        coll.check_encoder(encoder.spec)
        weights = build_policy_weights(policy, encoder.encode_texts)
    compiled = CompiledPolicy(policy, np.ascontiguousarray(weights, dtype=np.float32))
    if compiled.dim != coll.dim:
        raise EncoderMismatchError(f"policy vectors have dimension {compiled.dim}, the collection {coll.dim}")
    body = json.dumps(policy.to_dict(), sort_keys=True)
    for attempt in range(3):
        try:
            with coll.catalog.session() as s, s.begin():
                latest = s.scalar(select(func.max(ModerationPolicy.version))
                                  .where(ModerationPolicy.name == policy.name))
                row = ModerationPolicy(name=policy.name, version=(latest or 0) + 1, active=False, body=body,
                                       encoder_spec_id=coll.spec.id, weights=compiled.weights.tobytes(),
                                       calibration=json.dumps(calibration) if calibration else None,
                                       note=note, created_at=utcnow())
                s.add(row)
                s.flush()
                if activate:
                    _activate(s, row)
                record = record_of(row)
            log.info("stored policy %s version %d%s", record.name, record.version, " (active)" if activate else "")
            return record
        except IntegrityError:  # another writer took the same version number: take the next
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _activate(s: Any, row: ModerationPolicy) -> None:
    s.execute(update(ModerationPolicy).where(ModerationPolicy.active.is_(True), ModerationPolicy.id != row.id)
              .values(active=False))
    s.flush()
    row.active = True
    s.flush()


def activate_policy(coll: Collection, name: str, version: int) -> PolicyRecord:
    """Make ``name`` version ``version`` the one active policy."""
    with coll.catalog.session() as s, s.begin():
        row = _find(s, name, version)
        check_policy_encoder(coll, parse_policy(json.loads(row.body), f"{name} version {version}"))
        if row.encoder_spec_id != coll.spec.id:
            raise EncoderMismatchError(f"policy {name} version {version} was stored for encoder "
                                       f"{row.encoder_spec_id!r}, the collection uses {coll.spec.id!r}")
        _activate(s, row)
        return record_of(row)


def _find(s: Any, name: str | None, version: int | None) -> ModerationPolicy:
    if name is None:
        if version is not None:
            raise InputError("a policy version needs the policy name")
        row = s.scalar(select(ModerationPolicy).where(ModerationPolicy.active.is_(True)))
        if row is None:
            raise PolicyError("no active moderation policy",
                              hint="store one with `photodex policy set FILE --activate` or name one with --policy",
                              http_hint="store one with POST /api/v1/policies?activate=true, or name one with "
                                        "`policy`")
        return row
    stmt = select(ModerationPolicy).where(ModerationPolicy.name == name)
    row = s.scalar(stmt.where(ModerationPolicy.version == version) if version is not None
                   else stmt.order_by(ModerationPolicy.version.desc()).limit(1))
    if row is None:
        known = s.scalars(select(ModerationPolicy.name).distinct().order_by(ModerationPolicy.name)).all()
        if name in known:
            raise PolicyError(f"policy {name!r} has no version {version}")
        raise PolicyError(f"unknown policy {name!r}; stored policies: {', '.join(known) or 'none'}")
    return row


def get_policy(coll: Collection, name: str | None = None, version: int | None = None) -> PolicyRecord:
    """The active policy (no name), the newest version of ``name``, or ``name`` at ``version``."""
    with coll.catalog.session() as s:
        return record_of(_find(s, name, version))


def list_policies(coll: Collection) -> list[PolicyRecord]:
    """Every stored version, by name then version."""
    with coll.catalog.session() as s:
        rows = s.scalars(select(ModerationPolicy).order_by(ModerationPolicy.name, ModerationPolicy.version)).all()
        return [record_of(r) for r in rows]
