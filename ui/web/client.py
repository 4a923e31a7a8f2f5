"""A typed client of the photodex HTTP API: one method per endpoint, the API's own pydantic schemas.

The web pages talk to the API only through :class:`PhotodexClient`, so they stay thin and the
client can be tested against the real app (``PhotodexClient(TestClient(app))``). Every failure
becomes :class:`ApiError` (status, the error shape's ``code`` and ``message``); a route the server
does not have becomes :class:`NotAvailable`; an unreachable server is ``ApiError`` with status 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from retrieval.search.defaults import DEFAULT_COLLAPSE

# the API's own models, plain pydantic: importing them loads no model, catalog or server code
from ui.api.ask_schemas import AskResponse
from ui.api.moderation_schemas import CalibrationOut, DecisionPage, ModerationDecisionOut, RescanReportOut
from ui.api.schemas import (
    ClassifyResponse,
    HealthOut,
    IndexJobOut,
    PhotoOut,
    ReadyOut,
    SearchFiltersIn,
    SearchResponse,
    TagCount,
)

from .models import PolicyBody, PolicyVersion

API = "/api/v1"
API_KEY_HEADER = "X-API-Key"
DEFAULT_TIMEOUT = 60.0

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """A failed call: HTTP ``status`` (0: the server could not be reached), ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail


class NotAvailable(ApiError):
    """The server has no such route (an older server, or a feature it was started without)."""


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: its ``event`` name (``message`` when none) and its ``data`` text."""

    event: str
    data: str

    def json(self) -> Any:
        """``data`` parsed as JSON (the text itself when it is not JSON)."""
        try:
            return json.loads(self.data)
        except ValueError:
            return self.data


def iter_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Parse ``text/event-stream`` lines into events (multi-line ``data`` joined by newlines)."""
    event, data = "", []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data or event:
                yield SseEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue  # a comment / keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data or event:
        yield SseEvent(event or "message", "\n".join(data))


def filter_items(filters: SearchFiltersIn | None) -> list[str]:
    """Typed filters as the ``KEY=VALUE`` items of the form/query routes (image search, similar)."""
    if filters is None:
        return []
    items = [f"{name}={value}" for name, value in filters.model_dump(exclude={"tags", "has_gps"}).items()
             if value is not None]
    if filters.has_gps is not None:
        items.append(f"has_gps={str(filters.has_gps).lower()}")
    items += [f"tag={t}" for t in filters.tags]
    return items


def _error_from(resp: httpx.Response) -> ApiError:
    try:
        err = resp.json()["error"]
        return ApiError(resp.status_code, str(err["code"]), str(err["message"]), err.get("detail"))
    except (ValueError, KeyError, TypeError):
        text = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else resp.reason_phrase
        return ApiError(resp.status_code, f"http_{resp.status_code}", text)


class PhotodexClient:
    """The API behind ``http`` (an ``httpx.Client`` whose ``base_url`` is the server, or a TestClient),
    sending ``api_key`` as ``X-API-Key`` with every request when given."""

    def __init__(self, http: httpx.Client, api_key: str | None = None) -> None:
        self.http = http
        self.headers = {API_KEY_HEADER: api_key} if api_key else {}
        self._paths: dict[str, set[str]] | None = None

    @classmethod
    def connect(cls, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> PhotodexClient:
        return cls(httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout), api_key)

    def close(self) -> None:
        self.http.close()

    # ---- plumbing ----------------------------------------------------------------------------
    def _send(self, method: str, template: str, path_params: dict[str, Any] | None = None,
              **kwargs: Any) -> httpx.Response:
        url = API + template.format(**(path_params or {}))
        kwargs["headers"] = {**self.headers, **kwargs.get("headers", {})}
        try:
            resp = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, "unreachable", f"cannot reach the photodex API at {self.http.base_url}: {exc}") from exc
        if resp.is_success:
            return resp
        raise self._failure(resp, method, template)

    def _failure(self, resp: httpx.Response, method: str, template: str) -> ApiError:
        err = _error_from(resp)
        if resp.status_code in (404, 405) and not self.supports(template, method):
            return NotAvailable(resp.status_code, "not_available",
                                f"{method} {API}{template} is not available on this server", err.detail)
        return err

    def _json(self, model: type[M], method: str, template: str, path_params: dict[str, Any] | None = None,
              **kwargs: Any) -> M:
        return model.model_validate(self._send(method, template, path_params, **kwargs).json())

    def _json_list(self, model: type[M], method: str, template: str, **kwargs: Any) -> list[M]:
        adapter = TypeAdapter(list[model])  # type: ignore[valid-type]
        return adapter.validate_python(self._send(method, template, **kwargs).json())

    # ---- system -----------------------------------------------------------------------------
    def paths(self) -> dict[str, set[str]]:
        """The server's routes under ``/api/v1`` (template → methods), from its OpenAPI document."""
        if self._paths is None:
            try:
                resp = self.http.get("/openapi.json")
                doc = resp.json() if resp.is_success else {}
            except (httpx.HTTPError, ValueError):
                doc = {}
            self._paths = {p[len(API):]: {m.upper() for m in ops} for p, ops in doc.get("paths", {}).items()
                           if p.startswith(API)}
        return self._paths

    def supports(self, template: str, method: str = "GET") -> bool:
        """Whether the server has ``method template`` (e.g. ``supports("/ask", "POST")``)."""
        return method.upper() in self.paths().get(template, set())

    def health(self) -> HealthOut:
        return self._json(HealthOut, "GET", "/healthz")

    def ready(self) -> ReadyOut:
        return self._json(ReadyOut, "GET", "/readyz")

    # ---- search -----------------------------------------------------------------------------
    def search(self, text: str, *, k: int = 20, offset: int = 0, min_score: float | None = None,
               collapse: float | None = DEFAULT_COLLAPSE, filters: SearchFiltersIn | None = None) -> SearchResponse:
        """``POST /search``: photos best matching ``text`` (``collapse=None`` keeps near-duplicates)."""
        body: dict[str, Any] = {"text": text, "k": k, "offset": offset, "min_score": min_score, "collapse": collapse}
        if filters is not None:
            body["filters"] = filters.model_dump(exclude_defaults=True)
        return self._json(SearchResponse, "POST", "/search", json=body)

    def search_image(self, data: bytes, filename: str = "query.jpg", *, k: int = 20, offset: int = 0,
                     min_score: float | None = None, collapse: float | None = DEFAULT_COLLAPSE,
                     filters: SearchFiltersIn | None = None) -> SearchResponse:
        """``POST /search/image``: photos most similar to an uploaded image."""
        form: dict[str, Any] = {"k": str(k), "offset": str(offset), "filter": filter_items(filters)}
        if min_score is not None:
            form["min_score"] = str(min_score)
        if collapse is None:
            form["no_collapse"] = "true"
        else:
            form["collapse"] = str(collapse)
        return self._json(SearchResponse, "POST", "/search/image", data=form,
                          files={"file": (filename, data, "application/octet-stream")})

    def similar(self, photo_id: int, *, k: int = 20, offset: int = 0, min_score: float | None = None,
                collapse: float | None = DEFAULT_COLLAPSE, filters: SearchFiltersIn | None = None) -> SearchResponse:
        """``GET /photos/{id}/similar``: photos like a catalogued photo (itself excluded)."""
        params: dict[str, Any] = {"k": k, "offset": offset, "filter": filter_items(filters)}
        if min_score is not None:
            params["min_score"] = min_score
        if collapse is None:
            params["no_collapse"] = "true"
        else:
            params["collapse"] = collapse
        return self._json(SearchResponse, "GET", "/photos/{photo_id}/similar", {"photo_id": int(photo_id)},
                          params=params)

    # ---- photos -----------------------------------------------------------------------------
    def photo(self, photo_id: int) -> PhotoOut:
        """``GET /photos/{id}``: metadata, paths, tags and the current moderation decision."""
        return self._json(PhotoOut, "GET", "/photos/{photo_id}", {"photo_id": int(photo_id)})

    def thumbnail(self, photo_id: int, size: int = 256) -> bytes:
        """``GET /photos/{id}/thumbnail``: JPEG bytes, longest side ``size``."""
        return self._send("GET", "/photos/{photo_id}/thumbnail", {"photo_id": int(photo_id)},
                          params={"size": size}).content

    def original(self, photo_id: int) -> bytes:
        """``GET /photos/{id}/original``: the catalogued file's bytes."""
        return self._send("GET", "/photos/{photo_id}/original", {"photo_id": int(photo_id)}).content

    # ---- classify / tags --------------------------------------------------------------------
    def classify(self, labels: Sequence[str], *, data: bytes | None = None, filename: str = "photo.jpg",
                 photo_id: int | None = None, templates: str = "photos", k: int = 5) -> ClassifyResponse:
        """``POST /classify``: zero-shot labels of an upload (``data``) or a catalogued photo."""
        form: dict[str, Any] = {"labels": list(labels), "templates": templates, "k": str(k)}
        if photo_id is not None:
            form["photo_id"] = str(int(photo_id))
        files = {"file": (filename, data, "application/octet-stream")} if data is not None else None
        return self._json(ClassifyResponse, "POST", "/classify", data=form, files=files)

    def tags(self, taxonomy: str | None = None) -> list[TagCount]:
        """``GET /tags``: label counts of the stored tags."""
        return self._json_list(TagCount, "GET", "/tags", params={"taxonomy": taxonomy} if taxonomy else None)

    # ---- index jobs -------------------------------------------------------------------------
    def start_index_job(self, paths: Sequence[str], retry_errors: bool = False) -> IndexJobOut:
        """``POST /index/jobs`` (write key): index folders under the server's library roots."""
        return self._json(IndexJobOut, "POST", "/index/jobs", json={"paths": list(paths), "retry_errors": retry_errors})

    def index_jobs(self) -> list[IndexJobOut]:
        """``GET /index/jobs``: this server process's jobs, newest first."""
        return self._json_list(IndexJobOut, "GET", "/index/jobs")

    def index_job(self, job_id: str) -> IndexJobOut:
        """``GET /index/jobs/{id}``: status and progress."""
        return self._json(IndexJobOut, "GET", "/index/jobs/{job_id}", {"job_id": job_id})

    def cancel_index_job(self, job_id: str) -> IndexJobOut:
        """``DELETE /index/jobs/{id}`` (write key): ask a running job to stop."""
        return self._json(IndexJobOut, "DELETE", "/index/jobs/{job_id}", {"job_id": job_id})

    # ---- moderation -------------------------------------------------------------------------
    def moderate(self, *, data: bytes | None = None, filename: str = "photo.jpg", photo_id: int | None = None,
                 policy: str | None = None, version: int | None = None) -> ModerationDecisionOut:
        """``POST /moderate``: every concept's score and level and the action for an upload or a photo."""
        form: dict[str, Any] = {}
        if photo_id is not None:
            form["photo_id"] = str(int(photo_id))
        if policy is not None:
            form["policy"] = policy
        if version is not None:
            form["version"] = str(version)
        files = {"file": (filename, data, "application/octet-stream")} if data is not None else None
        return self._json(ModerationDecisionOut, "POST", "/moderate", data=form, files=files)

    def policies(self, name: str | None = None, curves: bool = False) -> list[PolicyVersion]:
        """``GET /policies``: every stored version (``curves``: with the stored calibration curves)."""
        params: dict[str, Any] = {"curves": str(curves).lower()}
        if name:
            params["name"] = name
        return self._json_list(PolicyVersion, "GET", "/policies", params=params)

    def create_policy(self, policy: PolicyBody | dict[str, Any], activate: bool = False) -> PolicyVersion:
        """``POST /policies`` (write key): store ``policy`` as the next version of its name."""
        body = policy.model_dump() if isinstance(policy, PolicyBody) else policy
        return self._json(PolicyVersion, "POST", "/policies", json=body,
                          params={"activate": str(activate).lower()})

    def activate_policy(self, name: str, version: int) -> PolicyVersion:
        """``POST /policies/{name}/activate`` (write key): make this version the one in force."""
        return self._json(PolicyVersion, "POST", "/policies/{name}/activate", {"name": name},
                          json={"version": version})

    def decisions(self, *, action: str | None = None, photo_id: int | None = None, history: bool = False,
                  limit: int = 100, offset: int = 0) -> DecisionPage:
        """``GET /decisions``: current stored decisions (by photo id)."""
        params: dict[str, Any] = {"history": str(history).lower(), "limit": limit, "offset": offset}
        if action:
            params["action"] = action
        if photo_id is not None:
            params["photo_id"] = int(photo_id)
        return self._json(DecisionPage, "GET", "/decisions", params=params)

    def rescan(self, policy: str | None = None, version: int | None = None, dry_run: bool = True,
               thresholds: dict[str, float] | None = None) -> RescanReportOut:
        """``POST /moderate/rescan``: what applying a policy version would change (``dry_run``, optionally with
        ``thresholds`` moved, nothing stored) or apply it (``dry_run=False``, write key)."""
        body: dict[str, Any] = {"dry_run": dry_run}
        if thresholds:
            body["thresholds"] = thresholds
        if policy is not None:
            body["policy"] = policy
        if version is not None:
            body["version"] = version
        return self._json(RescanReportOut, "POST", "/moderate/rescan", json=body)

    def calibrate(self, concept: str, positive_ids: Sequence[int], negative_ids: Sequence[int], *,
                  target_precision: float | None = None, target_recall: float | None = None,
                  policy: str | None = None, version: int | None = None, write: bool = False,
                  activate: bool = False) -> CalibrationOut:
        """``POST /moderate/calibrate``: the concept's precision-recall curve on labelled photos and the
        threshold reaching the target (``write``: stored as a new version, write key)."""
        body: dict[str, Any] = {"concept": concept, "positive_ids": [int(i) for i in positive_ids],
                                "negative_ids": [int(i) for i in negative_ids], "write": write, "activate": activate}
        for name, value in (("target_precision", target_precision), ("target_recall", target_recall),
                            ("policy", policy), ("version", version)):
            if value is not None:
                body[name] = value
        return self._json(CalibrationOut, "POST", "/moderate/calibrate", json=body)

    # ---- answering --------------------------------------------------------------------------
    @staticmethod
    def _ask_body(question: str, k: int | None, filters: SearchFiltersIn | None, photo_id: int | None,
                  strategy: str | None, max_new_tokens: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"question": question}
        if photo_id is not None:
            body["photo_id"] = int(photo_id)  # retrieval fields are refused with a photo
        else:
            if k is not None:
                body["k"] = k
            if filters is not None:
                body["filters"] = filters.model_dump(exclude_defaults=True)
            if strategy is not None:
                body["strategy"] = strategy
        if max_new_tokens is not None:
            body["max_new_tokens"] = max_new_tokens
        return body

    def ask(self, question: str, *, k: int | None = None, filters: SearchFiltersIn | None = None,
            photo_id: int | None = None, strategy: str | None = None,
            max_new_tokens: int | None = None) -> AskResponse:
        """``POST /ask`` (JSON): the answer, its checked citations, what was retrieved and dropped."""
        body = self._ask_body(question, k, filters, photo_id, strategy, max_new_tokens)
        return self._json(AskResponse, "POST", "/ask", json=body, headers={"Accept": "application/json"})

    def ask_stream(self, question: str, *, k: int | None = None, filters: SearchFiltersIn | None = None,
                   photo_id: int | None = None, strategy: str | None = None,
                   max_new_tokens: int | None = None) -> Iterator[str | AskResponse]:
        """``POST /ask`` as Server-Sent Events: the answer's text chunks (``str``) as they are generated,
        then the whole :class:`AskResponse`. An ``error`` event raises :class:`ApiError`."""
        body = self._ask_body(question, k, filters, photo_id, strategy, max_new_tokens)
        try:
            with self.http.stream("POST", f"{API}/ask", json=body,
                                  headers={**self.headers, "Accept": "text/event-stream"}) as resp:
                if not resp.is_success:
                    resp.read()
                    raise self._failure(resp, "POST", "/ask")
                if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    yield AskResponse.model_validate_json(resp.read())  # a server that does not stream
                    return
                for event in iter_sse(resp.iter_lines()):
                    if event.event == "token":
                        yield str(event.json())
                    elif event.event == "answer":
                        yield AskResponse.model_validate_json(event.data)
                        return
                    elif event.event == "error":
                        err = event.json().get("error", {}) if isinstance(event.json(), dict) else {}
                        raise ApiError(resp.status_code, str(err.get("code", "stream_error")),
                                       str(err.get("message", event.data)))
        except httpx.HTTPError as exc:
            raise ApiError(0, "unreachable", f"the answer stream from {self.http.base_url} broke off: {exc}") from exc
        raise ApiError(502, "stream_ended", "the answer stream ended without an answer")
