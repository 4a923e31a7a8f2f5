"""Metadata filters for search, turned into the set of photo ids the vector search may return."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime

import numpy as np

from indexer.catalog.read import sql_datetime
from indexer.collection import Collection
from indexer.core.errors import InputError
from indexer.catalog.status import INDEXED


class FilterError(InputError):
    """A filter that cannot be understood; the message says which and why."""


@dataclass
class SearchFilters:
    """All optional; an empty filter allows every indexed photo."""

    taken_after: datetime | None = None
    taken_before: datetime | None = None
    path: str | None = None  # glob on any of the photo's paths, e.g. "*/2024/trip/*"
    camera_make: str | None = None
    camera_model: str | None = None
    has_gps: bool | None = None
    file_type: str | None = None  # jpeg, png, heif, ...
    tags: list[str] = field(default_factory=list)  # all must be present
    moderation: str | None = None  # allow, review, flag, quarantine, block or "any" (retrieval.visibility)

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) in (None, []) for f in fields(self))


KEYS = {
    "taken_after": "taken_after", "after": "taken_after", "from": "taken_after",
    "taken_before": "taken_before", "before": "taken_before", "to": "taken_before",
    "path": "path", "folder": "path",
    "camera_make": "camera_make", "make": "camera_make",
    "camera_model": "camera_model", "camera": "camera_model", "model": "camera_model",
    "has_gps": "has_gps", "gps": "has_gps",
    "type": "file_type", "file_type": "file_type", "format": "file_type",
    "tag": "tags", "tags": "tags",
    "moderation": "moderation",
}
_TYPE_ALIASES = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP",
                 "tif": "TIFF", "tiff": "TIFF", "heic": "HEIF", "heif": "HEIF"}


def _date(value: str, key: str) -> datetime:
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m", "%Y"):
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            continue
    raise FilterError(f"filter {key}={value!r}: expected a date like 2024-07-31")


def _bool(value: str, key: str) -> bool:
    low = value.strip().lower()
    if low in {"1", "true", "yes", "y"}:
        return True
    if low in {"0", "false", "no", "n"}:
        return False
    raise FilterError(f"filter {key}={value!r}: expected true or false")


def parse_filters(items: Sequence[str]) -> SearchFilters:
    """Parse ``KEY=VALUE`` strings (the CLI's ``--filter``) into :class:`SearchFilters`."""
    out = SearchFilters()
    for item in items:
        if "=" not in item:
            raise FilterError(f"filter {item!r} is not KEY=VALUE; keys: {', '.join(sorted(set(KEYS)))}")
        key, value = (part.strip() for part in item.split("=", 1))
        name = KEYS.get(key.lower())
        if name is None:
            raise FilterError(f"unknown filter key {key!r}; keys: {', '.join(sorted(set(KEYS)))}")
        if not value:
            raise FilterError(f"filter {key} has an empty value")
        if name in ("taken_after", "taken_before"):
            setattr(out, name, _date(value, key))
        elif name == "has_gps":
            out.has_gps = _bool(value, key)
        elif name == "tags":
            out.tags.extend(t.strip() for t in value.split(",") if t.strip())
        elif name == "file_type":
            out.file_type = _TYPE_ALIASES.get(value.lower().lstrip("."), value.upper())
        else:
            setattr(out, name, value)
    return out


def allowed_ids(coll: Collection, filters: SearchFilters | None) -> np.ndarray | None:
    """Ids of indexed photos matching ``filters``; ``None`` when nothing is filtered."""
    if filters is None or filters.is_empty():
        return None
    from retrieval.visibility import moderation_condition

    read = coll.reader
    cond, params = ["photos.status = :status"], {"status": INDEXED}
    if filters.taken_after:
        cond.append("photos.taken_at >= :after")
        params["after"] = sql_datetime(read, filters.taken_after)
    if filters.taken_before:
        cond.append("photos.taken_at <= :before")
        params["before"] = sql_datetime(read, filters.taken_before)
    if filters.camera_make:  # case-insensitive, as SQLAlchemy's ilike
        cond.append("lower(photos.camera_make) LIKE lower(:make)")
        params["make"] = filters.camera_make
    if filters.camera_model:
        cond.append("lower(photos.camera_model) LIKE lower(:model)")
        params["model"] = f"%{filters.camera_model}%"
    if filters.has_gps is not None:
        cond.append("(photos.gps_lat IS NOT NULL AND photos.gps_lon IS NOT NULL)" if filters.has_gps
                    else "(photos.gps_lat IS NULL OR photos.gps_lon IS NULL)")
    if filters.file_type:
        cond.append("photos.format = :format")
        params["format"] = filters.file_type
    for n, label in enumerate(filters.tags):
        cond.append(f"EXISTS (SELECT 1 FROM tags t{n} WHERE t{n}.photo_id = photos.id AND t{n}.label = :tag{n})")
        params[f"tag{n}"] = label
    if filters.moderation and (moderated := moderation_condition(filters.moderation)) is not None:
        cond.append(moderated[0])
        params.update(moderated[1])
    where = " AND ".join(cond)
    if filters.path:
        rows = read.rows(f"SELECT photos.id, f.path FROM photos JOIN photo_files f ON f.photo_id = photos.id "
                         f"WHERE {where}", params)
        ids = {pid for pid, path in rows if fnmatch.fnmatch(path, filters.path)}
    else:
        ids = {r[0] for r in read.rows(f"SELECT photos.id FROM photos WHERE {where}", params)}
    return np.fromiter(sorted(ids), dtype=np.int64, count=len(ids))
