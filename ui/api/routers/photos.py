"""``GET /photos/{id}`` (metadata, tags, decision), ``/thumbnail`` and ``/original``.

Files are reached by catalog id only, never by a path from the request. A file is served only
while it still is the file that was indexed (:func:`indexer.file_identity.open_indexed`: the same
resolved path, inside ``PHOTODEX_API_LIBRARY_ROOTS`` when roots are configured, whoever indexed it;
the same size, mtime and device + inode, or else the same content hash), so a catalogued file later
swapped for another file or a symlink to one is refused (404 ``file_unavailable``) until it is
indexed again. ``/ask`` reads its photos through :func:`load_catalogued`, under the same rule.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Annotated, BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from PIL import Image
from sqlalchemy import select

from indexer.catalog.models import ModerationState, Photo, PhotoFile, Tag
from indexer.encode.decode import decode_photo
from indexer.core.errors import InputError
from indexer.file_identity import open_indexed, real_roots

from ..deps import ReadAccess, RuntimeDep
from ..errors import ApiError, not_found, responses
from ..runtime import Runtime
from ..schemas import ModerationOut, PhotoOut, TagOut
from .search import PhotoId

router = APIRouter(tags=["photos"], dependencies=[ReadAccess])

MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
               "BMP": "image/bmp", "TIFF": "image/tiff", "HEIF": "image/heif"}
CACHE = "private, max-age=86400"
CHUNK = 1 << 16


def _split(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def open_catalogued(runtime: Runtime, photo_id: int) -> tuple[BinaryIO, Photo, PhotoFile]:
    """An open, verified catalogued file of the photo (404 if the photo or every file is gone/changed)."""
    with runtime.collection.catalog.session() as s:
        photo = s.get(Photo, photo_id)
        if photo is None:
            raise not_found(f"photo {photo_id}")
        files = s.scalars(select(PhotoFile).where(PhotoFile.photo_id == photo_id, PhotoFile.error.is_(None))
                          .order_by(PhotoFile.id)).all()
    roots = real_roots(runtime.settings.api_library_roots) if runtime.settings.api_library_roots else None
    for row in files:
        f = open_indexed(bytes(row.path_bytes), size=row.size, mtime_ns=row.mtime_ns, real_path=row.real_path_bytes,
                         device=row.device, inode=row.inode, sha256=photo.sha256, roots=roots)
        if f is not None:
            return f, photo, row
    raise ApiError(404, "file_unavailable",
                   f"no file of photo {photo_id} is readable unchanged; index its folder again")


def load_catalogued(runtime: Runtime, photo_id: int, max_side: int) -> Image.Image:
    """The photo decoded from a verified catalogued file (as ``/ask`` shows it to the VLM);
    :class:`InputError` if none is readable unchanged."""
    try:
        f, _, row = open_catalogued(runtime, photo_id)
    except ApiError as exc:
        raise InputError(f"photo #{photo_id} cannot be read: {exc.message}") from exc
    with f:
        return decode_photo(f, max_side, name=bytes(row.path_bytes))[0]


@router.get("/photos/{photo_id}", response_model=PhotoOut, responses=responses(401, 403, 404, 422))
def get_photo(runtime: RuntimeDep, photo_id: PhotoId) -> PhotoOut:
    """A photo's metadata, file paths, tags and current moderation decision."""
    with runtime.collection.catalog.session() as s:
        p = s.get(Photo, photo_id)
        if p is None:
            raise not_found(f"photo {photo_id}")
        paths = list(s.scalars(select(PhotoFile.path).where(PhotoFile.photo_id == photo_id).order_by(PhotoFile.path)))
        tags = [TagOut(taxonomy=t.taxonomy, label=t.label, score=t.score, manual=t.manual)
                for t in s.scalars(select(Tag).where(Tag.photo_id == photo_id).order_by(Tag.taxonomy, Tag.label))]
        state = s.get(ModerationState, photo_id)
        moderation = (ModerationOut(action=state.action, hits=_split(state.hits), review=_split(state.review))
                      if state is not None else None)
    return PhotoOut(id=p.id, sha256=p.sha256, size=p.size, format=p.format, width=p.width, height=p.height,
                    taken_at=p.taken_at, camera_make=p.camera_make, camera_model=p.camera_model, gps_lat=p.gps_lat,
                    gps_lon=p.gps_lon, status=p.status, error=p.error, indexed_at=p.indexed_at, paths=paths,
                    tags=tags, moderation=moderation)


@router.get("/photos/{photo_id}/thumbnail", response_class=Response, responses={
    **responses(401, 403, 404, 422), 200: {"content": {"image/jpeg": {}}, "description": "JPEG thumbnail"}})
def thumbnail(runtime: RuntimeDep, photo_id: PhotoId,
              size: Annotated[int, Query(ge=16, le=1024, description="longest side in pixels")] = 256) -> Response:
    """A JPEG thumbnail (EXIF orientation applied) whose longest side is ``size``."""
    f, photo, row = open_catalogued(runtime, photo_id)
    with f:
        img, _ = decode_photo(f, size, name=bytes(row.path_bytes))  # the name picks the decoder (camera RAW)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return Response(buf.getvalue(), media_type="image/jpeg",
                    headers={"Cache-Control": CACHE, "ETag": f'"{photo.sha256[:32]}-{size}"'})


@router.get("/photos/{photo_id}/original", response_class=StreamingResponse, responses={
    **responses(401, 403, 404, 422), 200: {"content": {"image/*": {}}, "description": "the file's bytes"}})
def original(runtime: RuntimeDep, photo_id: PhotoId) -> StreamingResponse:
    """The catalogued file's bytes, unchanged."""
    f, photo, row = open_catalogued(runtime, photo_id)

    def chunks() -> Iterator[bytes]:
        with f:
            while data := f.read(CHUNK):
                yield data

    name = os.path.basename(row.path)
    return StreamingResponse(chunks(), media_type=MEDIA_TYPES.get(photo.format or "", "application/octet-stream"),
                             headers={"Content-Length": str(row.size), "Cache-Control": CACHE,
                                      "ETag": f'"{photo.sha256[:32]}"',
                                      "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}"})
