"""The one error shape ``{"error": {"code", "message", "detail"}}`` and the handlers that make it.

Mapping (once, here): :class:`ApiError` → its status; photodex's error family
(:mod:`indexer.core.errors`), worded for HTTP clients (``for_http``: no CLI flags): ``WriterBusyError`` → 409
``writer_busy`` with ``Retry-After`` (and the index job holding the writer, when one does),
``DecodeError`` → 422 ``undecodable_image``,
``InputError`` → 422 ``invalid_input``, ``StorageError`` → 507 ``storage_unavailable``,
``ConfigError`` → 500 ``config_error``; HTTP errors (404,
405, 413, ...) → their status; request validation → 422 ``validation_error`` (400 ``invalid_json``
for a body that is not JSON); anything else → 500 ``internal_error``, logged with its traceback
and never shown to the client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import NoMatchFound

from indexer.encode.decode import DecodeError
from indexer.core.errors import ConfigError, InputError, PhotodexError, StorageError, WriterBusyError

log = logging.getLogger(__name__)

WRITER_BUSY_RETRY_S = 10  # Retry-After of a 409 writer_busy: a guess, an index run's length is not known

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
         422: "validation_error", 429: "too_many_requests", 500: "internal_error", 503: "not_ready",
         507: "insufficient_storage"}


class ApiError(Exception):
    """An error the API reports as is: HTTP ``status``, a stable ``code``, a message and detail."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def error_response(status: int, code: str, message: str, detail: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "detail": detail}}, status_code=status,
                        headers=headers)


def _photodex_status(exc: PhotodexError) -> tuple[int, str]:
    if isinstance(exc, WriterBusyError):
        return 409, "writer_busy"
    if isinstance(exc, DecodeError):
        return 422, "undecodable_image"
    if isinstance(exc, InputError):
        return 422, "invalid_input"
    if isinstance(exc, StorageError):
        return 507, "storage_unavailable"  # the server's disk is full or read-only: not the client's fault, not a bug
    if isinstance(exc, ConfigError):
        return 500, "config_error"
    return 400, "bad_request"


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.detail, exc.headers)


def writer_busy(exc: WriterBusyError, job_route: str | None = None) -> ApiError:
    """409 ``writer_busy`` saying what an HTTP client can do: follow the index job holding the writer, if one
    does (``job_route``: where its progress is), and retry after ``Retry-After`` seconds."""
    job = exc.holder.get("job")
    then = (f"follow index job {job} at GET {job_route} and retry when it ends" if job and job_route
            else "retry when it ends")
    return ApiError(409, "writer_busy", f"{exc.message}; {then} (Retry-After: {WRITER_BUSY_RETRY_S} s)",
                    {"job_id": job, "retry_after_s": WRITER_BUSY_RETRY_S},
                    headers={"Retry-After": str(WRITER_BUSY_RETRY_S)})


def _job_route(request: Request, job: Any) -> str | None:
    if not isinstance(job, str):
        return None
    try:
        return str(request.app.url_path_for("get_job", job_id=job))
    except NoMatchFound:  # an app without the index-jobs router
        return None


async def _photodex_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PhotodexError)
    if isinstance(exc, WriterBusyError):
        return await _api_error(request, writer_busy(exc, _job_route(request, exc.holder.get("job"))))
    status, code = _photodex_status(exc)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return error_response(status, code, exc.for_http())


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    message = exc.detail if isinstance(exc.detail, str) else phrase
    detail = None if isinstance(exc.detail, str) else exc.detail
    return error_response(status, CODES.get(status, f"http_{status}"), message, detail, exc.headers)


def _clean_validation(errors: Any) -> list[dict[str, Any]]:
    """loc, msg and type of each validation error; the offending input is never echoed."""
    return [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors]


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _clean_validation(exc.errors())
    if any(e["type"] == "json_invalid" for e in errors):
        return error_response(400, "invalid_json", "the request body is not valid JSON", errors)
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"])
    return error_response(422, "validation_error", f"{where}: {first['msg']}" if where else first["msg"], errors)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error (logged on the server)")


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to the one error shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(PhotodexError, _photodex_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)


_DESCRIPTIONS = {400: "Bad request (e.g. a body that is not JSON)", 401: "Missing or unknown API key",
                 403: "API key scope too small, or a path outside the library roots", 404: "Not found",
                 409: "Conflict (the collection's writer lock is held: see Retry-After and detail.job_id; "
                      "or the job has finished)",
                 413: "Request body or upload too large", 415: "Upload is not an image",
                 422: "Invalid request (validation, bad filter, too many pixels, undecodable image)",
                 429: "Too many refused API keys from this address (see Retry-After)",
                 503: "Not ready"}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for these statuses, all in the one error shape."""
    from .schemas import ErrorResponse

    return {s: {"model": ErrorResponse, "description": _DESCRIPTIONS.get(s, HTTPStatus(s).phrase)} for s in statuses}
