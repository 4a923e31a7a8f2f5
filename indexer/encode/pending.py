"""What an index run has left to encode, and its report: no torch, so a run with nothing to do stays light."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..collection import Collection
from ..catalog.status import PENDING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass
class EncodeReport:
    encoded: int = 0
    errors: int = 0
    seconds: float = 0.0
    # Ray runs: photos encoded per precision (a PrecisionChoice as JSON; each actor settles its own); not in to_dict
    precisions: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def photos_per_second(self) -> float:
        return (self.encoded + self.errors) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("precisions")
        d["photos_per_second"] = round(self.photos_per_second, 2)
        d["seconds"] = round(self.seconds, 3)
        return d


BatchHook = Callable[["Session", np.ndarray, np.ndarray], Any]
"""Called inside a batch's transaction with (session, photo ids, their vectors): its writes commit or
roll back with the vectors (photodex uses it for moderation decisions at ingest)."""


def pending_items(coll: Collection, after: int | None = None, limit: int | None = None) -> list[tuple[int, bytes]]:
    """(photo id, one readable path) for every photo still waiting for a vector, by id.

    ``after``/``limit``: only photos with a larger id, at most ``limit`` of them (one page of a
    keyset walk, so a caller can hold a bounded window of a huge pending list)."""
    from sqlalchemy import func, select

    from ..catalog.models import Photo, PhotoFile

    with coll.catalog.session() as s:
        files = select(PhotoFile.photo_id, func.min(PhotoFile.id).label("fid")).where(PhotoFile.photo_id.is_not(None))
        if after is not None:
            files = files.where(PhotoFile.photo_id > after)
        first_file = files.group_by(PhotoFile.photo_id).subquery()
        stmt = (
            select(Photo.id, PhotoFile.path_bytes)
            .join(first_file, first_file.c.photo_id == Photo.id)
            .join(PhotoFile, PhotoFile.id == first_file.c.fid)
            .where(Photo.status == PENDING)
            .order_by(Photo.id)
        )
        rows = s.execute(stmt.limit(limit) if limit is not None else stmt).all()
    return [(int(pid), bytes(path)) for pid, path in rows]


def pending_count(coll: Collection) -> int:
    """How many photos wait for a vector (one cheap query; no model needed)."""
    got = coll.reader.rows("SELECT COUNT(*) FROM photos WHERE status = :pending", {"pending": PENDING})
    return int(got[0][0] or 0)


