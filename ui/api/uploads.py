"""Uploaded images: size limits while reading, pixel limits from the header, no non-images.

:class:`BodySizeLimit` stops reading any request body past the limit (413); :func:`read_upload`
checks the file part against the upload limit, then parses only the image header to refuse
non-images (415) and images with too many pixels (422) before anything is decoded.
"""

from __future__ import annotations

import io
import warnings

from fastapi import UploadFile
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.encode.decode import RAWPY_MISSING, DecodeError, bomb_pixels, camera_raw_format, camera_raw_size

from .errors import ApiError, error_response

CHUNK = 1 << 20


def read_upload(upload: UploadFile, max_bytes: int, max_pixels: int) -> bytes:
    """The upload's bytes after the checks (call from a worker thread: it reads a spooled file)."""
    buf = bytearray()
    upload.file.seek(0)
    while chunk := upload.file.read(CHUNK):
        buf += chunk
        if len(buf) > max_bytes:
            raise ApiError(413, "payload_too_large", f"upload larger than {max_bytes} bytes")
    if not buf:
        raise ApiError(422, "empty_upload", "the uploaded file is empty")
    data = bytes(buf)
    width, height = _camera_raw_size(data, upload) or _image_size(data, upload, max_pixels)
    if width * height > max_pixels:
        raise ApiError(422, "too_many_pixels", f"image has {width}x{height} pixels; the limit is {max_pixels}",
                       {"width": width, "height": height, "max_pixels": max_pixels})
    return data


def _image_size(data: bytes, upload: UploadFile, max_pixels: int) -> tuple[int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                return img.size
    except UnidentifiedImageError:
        raise ApiError(415, "unsupported_media_type", "the upload is not an image in a supported format",
                       {"content_type": upload.content_type}) from None
    except Image.DecompressionBombError as exc:  # past twice the bomb limit, Pillow will not even say its size
        pixels = bomb_pixels(exc)
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        raise ApiError(422, "too_many_pixels",
                       f"image has {pixels or 'too many'} pixels; the limit is {limit}",
                       {"width": None, "height": None, "pixels": pixels, "max_pixels": limit}) from None
    except Exception as exc:  # noqa: BLE001 - any header parse failure is a bad upload
        raise ApiError(422, "undecodable_image", f"cannot read the image header: {type(exc).__name__}") from None


def _camera_raw_size(data: bytes, upload: UploadFile) -> tuple[int, int] | None:
    """A camera RAW's own size (a TIFF-based RAW's header names only its small preview); None: not a RAW.
    Recognised by its header, as the decoder does for an upload (the file name is the client's to choose)."""
    stream = io.BytesIO(data)
    if camera_raw_format(stream) is None:
        return None
    try:
        return camera_raw_size(stream)
    except DecodeError as exc:
        status, code = (415, "unsupported_media_type") if str(exc) == RAWPY_MISSING else (422, "undecodable_image")
        raise ApiError(status, code, exc.for_http(), {"content_type": upload.content_type}) from None


class BodyTooLarge(HTTPException):
    """The request body grew past the limit while being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes", {"Connection": "close"})


class BodySizeLimit:
    """Limit every request body to ``max_body_size`` bytes while it is read (413 in the error shape).

    A declared Content-Length over the limit is refused before anything is read; otherwise the
    bytes are counted as they arrive and reading stops (:class:`BodyTooLarge`) at the limit."""

    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_size
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = error_response(413, "payload_too_large", f"request body larger than {limit} bytes",
                                      {"max_bytes": limit}, {"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)
