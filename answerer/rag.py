"""Retrieval-augmented answering: question → retrieval → VLM answer → checked citations.

Two strategies (``AskOptions.strategy``; ``"auto"`` picks per model, see :func:`choose_strategy`):

* **joint** — the selected photos go into one multi-image prompt, each introduced with its id and
  metadata (date, folder); the model is asked to cite ``[#ID]``; cited ids are checked against
  the photos actually shown (an invented id is dropped and reported). Photos over the image budget
  or the context are dropped (and reported) before ``generate``.
* **per-photo** — the question is asked of every retrieved photo (batched); photos whose answers
  support the question are kept and the answer is composed from them with their ids. Works with
  single-image models.

Retrieval goes through :class:`retrieval.search.searcher.Searcher` (filters, moderation
exclusions, near-duplicate collapse). When no photo scores at least ``min_relevance`` the answer
says so instead of guessing, and the VLM is not called.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from indexer.core.errors import InputError
from retrieval.visibility import hidden_ids
from retrieval.search.defaults import DEFAULT_COLLAPSE
from retrieval.search.filters import SearchFilters
from retrieval.search.searcher import (
    Searcher,
    SearchHit,
    SearchOptions,
)

from .budget import Dropped, ImageBudget, drop_to_fit, select
from .citations import check_citations, cite
from .streaming import stream_generate
from .vlm import VLM, Request

log = logging.getLogger(__name__)

__all__ = [
    "Answerer",
    "AskOptions",
    "AskResult",
    "AskStream",
    "Citation",
    "HiddenPhotoError",
    "PhotoAnswer",
    "Retrieved",
    "choose_strategy",
    "compose_per_photo",
    "is_yes_no",
    "load_photo",
    "photo_question",
    "retrieval_query",
    "supports",
]

Strategy = Literal["joint", "per-photo"]
STRATEGIES = ("auto", "joint", "per-photo")

JOINT_INSTRUCTION = ("Answer using only these photos. Cite every photo you use as [#ID]. "
                     "If none of them shows what is asked, say that none does.")


# --------------------------------------------------------------------------- results


@dataclass
class Retrieved:
    id: int
    score: float
    path: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Citation:
    id: int
    paths: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PhotoAnswer:
    """The per-photo strategy's answer for one photo, and whether it supports the question."""

    id: int
    answer: str
    supports: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AskResult:
    """Everything ``photodex ask`` reports (``to_dict`` is the JSON / API shape)."""

    question: str
    answer: str
    strategy: str  # "joint", "per-photo", "single" (one given photo) or "none" (nothing relevant)
    model: str
    citations: list[Citation] = field(default_factory=list)
    retrieved: list[Retrieved] = field(default_factory=list)
    shown: list[int] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    invented: list[int] = field(default_factory=list)  # ids the model cited but was never shown
    per_photo: list[PhotoAnswer] = field(default_factory=list)
    nothing_relevant: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AskOptions:
    """How to retrieve and answer; validated before any model loads."""

    k: int = 5
    filters: SearchFilters | None = None
    strategy: str = "auto"
    min_relevance: float | None = 0.2  # CLIP cosine; None: always answer
    max_new_tokens: int = 256
    budget: ImageBudget = field(default_factory=ImageBudget)
    collapse: float | None = DEFAULT_COLLAPSE
    batch_size: int = 8  # per-photo prompts per generate
    query: str | None = None  # retrieval text (default: derived from the question)

    def validate(self) -> AskOptions:
        if self.k < 1:
            raise InputError(f"-k must be at least 1, got {self.k}")
        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise InputError("max_new_tokens and batch_size must be >= 1")
        self.budget.validate()
        return self


# --------------------------------------------------------------------------- pure helpers

_YES_NO_START = re.compile(r"^(is|are|was|were|do|does|did|can|could|has|have|had|will|would|should)\b", re.IGNORECASE)
_IN_PHOTOS = re.compile(
    r"\s+(in|among|on)\s+(any\s+of\s+)?(the|these|those|my|our|all)?\s*(\w+\s+){0,4}?"
    r"(photos|pictures|images|shots)\b", re.IGNORECASE)
_EXISTS = re.compile(r"^(is|are)\s+there\s+(any\s+)?", re.IGNORECASE)
_SHOWS = re.compile(r"^(do|does|did)\s+(any\s+|the\s+|my\s+|this\s+)?(photos?|pictures?|images?)\s+"
                    r"(show|have|contain)\s+", re.IGNORECASE)
_NEGATIVE = re.compile(r"^(no|none|nothing|not|never|unknown|unclear|i\s+(do\s+not|don't|cannot|can't))\b", re.IGNORECASE)


def is_yes_no(question: str) -> bool:
    """Whether ``question`` asks for yes/no ("is there ...?", "does ... show ...?")."""
    return bool(_YES_NO_START.match(question.strip()))


def photo_question(question: str) -> str:
    """The question as asked of one photo: "is there a skull in any of the garden photos?" → "is there a skull?"."""
    q = _IN_PHOTOS.sub("", question.strip())
    return q if q.endswith("?") or not question.strip().endswith("?") else q.rstrip() + "?"


def retrieval_query(question: str) -> str:
    """Text for the CLIP search: existence questions become captions ("is there a skull?" → "a photo of a skull")."""
    q = photo_question(question).strip().rstrip("?").strip()
    for pattern in (_EXISTS, _SHOWS):
        if pattern.match(q):
            return "a photo of " + pattern.sub("", q)
    return q


def supports(answer: str, yes_no: bool) -> bool:
    """Whether one photo's answer supports the question (yes for yes/no; any non-negative answer otherwise)."""
    a = answer.strip().lower()
    if not a:
        return False
    if yes_no:
        return a.startswith("yes")
    return not _NEGATIVE.match(a)


def compose_per_photo(answers: list[PhotoAnswer], yes_no: bool, n_looked: int) -> str:
    """The per-photo strategy's answer text, citing the supporting photos as ``[#ID]``."""
    kept = [a for a in answers if a.supports]
    if not kept:
        return f"No: none of the {n_looked} photos looked at shows it." if yes_no else \
            f"None of the {n_looked} photos looked at answers this."
    if yes_no:
        return f"Yes: {len(kept)} of the {n_looked} photos looked at show it: " + " ".join(cite(a.id) for a in kept) + "."
    groups: dict[str, list[int]] = {}
    for a in kept:
        groups.setdefault(a.answer.strip(), []).append(a.id)
    return "; ".join(f"{text} " + " ".join(cite(i) for i in ids) for text, ids in groups.items()) + "."


def choose_strategy(requested: str, vlm: VLM) -> Strategy:
    """``requested`` unless ``"auto"``: joint for multi-image model families, else per-photo."""
    if requested in ("joint", "per-photo"):
        return requested  # type: ignore[return-value]
    return "joint" if vlm.multi_image else "per-photo"


def _folder(path: str | None) -> str:
    if not path:
        return "?"
    parts = Path(path).parent.parts
    return "/".join(parts[-2:]) if parts else "?"


def joint_request(question: str, photos: list[tuple[SearchHit, Image.Image]]) -> Request:
    """One multi-image prompt: each photo introduced with its id, date and folder, then the question."""
    content: list[dict[str, str]] = []
    for hit, _ in photos:
        date = (hit.taken_at or "date unknown")[:10]
        path = hit.paths[0] if hit.paths else None
        content.append({"type": "text", "text": f"Photo #{hit.id} ({date}, folder {_folder(path)}): "})
        content.append({"type": "image"})
    content.append({"type": "text", "text": f"\nQuestion: {question}\n{JOINT_INSTRUCTION}"})
    return Request([img for _, img in photos], content)


def load_photo(hit: SearchHit, max_side: int) -> Image.Image:
    """Decode the first readable file of ``hit`` (JPEG DCT-scaled towards ``max_side``)."""
    from indexer.encode.decode import DecodeError, decode_photo

    reasons = []
    for path in hit.paths:
        try:
            img, _ = decode_photo(path, max_side)
            return img
        except DecodeError as exc:
            reasons.append(str(exc))
    raise InputError(f"photo #{hit.id} cannot be read: {'; '.join(reasons) or 'no file on disk'}")


# --------------------------------------------------------------------------- the pipeline


class AskStream:
    """Iterate for answer text chunks; ``result`` holds the :class:`AskResult` once exhausted."""

    def __init__(self, gen: Generator[str, None, AskResult]) -> None:
        self._gen = gen
        self.result: AskResult | None = None

    def __iter__(self) -> Iterator[str]:
        self.result = yield from self._gen


class Answerer:
    """Answers questions over one collection: a :class:`Searcher` for retrieval, a :class:`VLM` to answer."""

    def __init__(self, searcher: Searcher, vlm: VLM,
                 image_loader: Callable[[SearchHit, int], Image.Image] = load_photo) -> None:
        self.searcher = searcher
        self.vlm = vlm
        self.image_loader = image_loader

    # ---- public API ----------------------------------------------------------------------
    def ask(self, question: str, options: AskOptions | None = None) -> AskResult:
        """Answer ``question`` from the collection (non-streamed)."""
        return _drain(self._ask(question, (options or AskOptions()), stream=False))

    def ask_stream(self, question: str, options: AskOptions | None = None) -> AskStream:
        """Like :meth:`ask`, yielding the answer text as it is generated (joint: token by token)."""
        return AskStream(self._ask(question, (options or AskOptions()), stream=True))

    def ask_photo(self, photo_id: int, question: str, options: AskOptions | None = None,
                  stream: bool = False) -> AskResult | AskStream:
        """Answer ``question`` about one catalogued photo (no retrieval; it is the citation)."""
        gen = self._ask_photo(photo_id, question, options or AskOptions(), stream)
        return AskStream(gen) if stream else _drain(gen)

    # ---- steps ---------------------------------------------------------------------------
    def retrieve(self, question: str, options: AskOptions) -> list[SearchHit]:
        query = options.query or retrieval_query(question)
        hits = self.searcher.search_text(query, SearchOptions(k=options.k, filters=options.filters,
                                                              collapse=options.collapse))
        if not hits and not self._has_vectors():  # checked only then: it is not free on a large catalog
            raise InputError("the collection has no indexed photos", hint="run `photodex index PATH` first",
                             http_hint="start an index job first (POST /api/v1/index/jobs)")
        return hits

    def _has_vectors(self) -> bool:
        from sqlalchemy import select

        from indexer.catalog.models import Embedding

        with self.searcher.coll.catalog.session() as s:
            return s.scalar(select(Embedding.photo_id).limit(1)) is not None

    def decode_side(self, options: AskOptions) -> int:
        """Size to decode photos at (JPEG draft): the VLM's fixed input side when it has one, else the budget's."""
        side = self.vlm.input_side
        return min(options.budget.max_image_side, side) if side else options.budget.max_image_side

    def _load(self, hits: list[SearchHit], max_side: int) -> tuple[list[tuple[SearchHit, Image.Image]], list[Dropped]]:
        loaded, dropped = [], []
        for hit in hits:
            try:
                loaded.append((hit, self.image_loader(hit, max_side)))
            except InputError as exc:
                log.warning("%s", exc)
                dropped.append(Dropped(hit.id, f"unreadable: {exc}"))
        return loaded, dropped

    def _ask(self, question: str, options: AskOptions, stream: bool) -> Generator[str, None, AskResult]:
        question = _clean_question(question)
        options.validate()
        t0 = time.perf_counter()
        hits = self.retrieve(question, options)
        timings = {"retrieve_s": time.perf_counter() - t0}
        result = AskResult(question, "", "none", self.vlm.model_id_or_path,
                           retrieved=[Retrieved(h.id, h.score, h.paths[0] if h.paths else None) for h in hits])
        threshold = options.min_relevance
        relevant = [h for h in hits if threshold is None or h.score >= threshold]
        result.dropped += [Dropped(h.id, "below relevance threshold") for h in hits if h not in relevant]
        if not relevant:
            best = max((h.score for h in hits), default=None)
            result.nothing_relevant = True
            result.answer = ("Nothing in the collection looks relevant to this question"
                             + (f" (best match {best:.2f}, relevance threshold {threshold:.2f})" if best is not None else "")
                             + "; not guessing.")
            result.timings = {**timings, "total_s": time.perf_counter() - t0}
            yield result.answer
            return result
        result.strategy = choose_strategy(options.strategy, self.vlm)
        if result.strategy == "joint":
            relevant, over = select(relevant, options.budget.max_images)
            result.dropped += [Dropped(h.id, "max_images") for h in over]
        t1 = time.perf_counter()
        photos, unreadable = self._load(relevant, self.decode_side(options))
        result.dropped += unreadable
        timings["images_s"] = time.perf_counter() - t1
        if not photos:
            raise InputError("none of the retrieved photos could be read: " + "; ".join(d.reason for d in unreadable))
        t2 = time.perf_counter()
        if result.strategy == "joint":
            yield from self._joint(question, photos, options, stream, result, timings)
        else:
            yield from self._per_photo(question, photos, options, result)
        timings["generate_s"] = time.perf_counter() - t2
        result.timings = {**timings, "total_s": time.perf_counter() - t0}
        return result

    def _joint(self, question: str, photos: list[tuple[SearchHit, Image.Image]], options: AskOptions,
               stream: bool, result: AskResult, timings: dict[str, float]) -> Generator[str, None, None]:
        context = self.vlm.context_length
        while True:
            prepared = self.vlm.prepare([joint_request(question, photos)], options.budget)
            n = drop_to_fit(prepared.prompt_tokens[0], prepared.image_tokens[0], len(photos),
                            options.max_new_tokens, context)
            if n == 0:
                break
            if n >= len(photos):
                self.vlm.check_fits(prepared, options.max_new_tokens)  # raises PromptTooLongError
            result.dropped += [Dropped(h.id, "context") for h, _ in photos[-n:]]
            photos = photos[:-n]
        result.shown = [h.id for h, _ in photos]
        t = time.perf_counter()
        if stream:
            chunks = []
            for chunk in stream_generate(self.vlm, prepared, options.max_new_tokens):
                if not chunks:
                    timings["first_token_s"] = time.perf_counter() - t
                chunks.append(chunk)
                yield chunk
            text = "".join(chunks).strip()
        else:
            text = self.vlm.generate(prepared, options.max_new_tokens)[0]
            yield text
        check = check_citations(text, result.shown)
        if check.invented:
            log.warning("the model cited photo ids it was not shown: %s (dropped)", check.invented)
        by_id = {h.id: h for h, _ in photos}
        result.answer = text
        result.citations = [Citation(i, by_id[i].paths) for i in check.cited]
        result.invented = check.invented

    def _per_photo(self, question: str, photos: list[tuple[SearchHit, Image.Image]], options: AskOptions,
                   result: AskResult) -> Generator[str, None, None]:
        q = photo_question(question)
        yes_no = is_yes_no(q)
        answers: list[str] = []
        for start in range(0, len(photos), options.batch_size):
            chunk = photos[start:start + options.batch_size]
            prepared = self.vlm.prepare([Request.question([img], q) for _, img in chunk], options.budget)
            answers += self.vlm.generate(prepared, options.max_new_tokens)
        result.shown = [h.id for h, _ in photos]
        result.per_photo = [PhotoAnswer(h.id, a, supports(a, yes_no)) for (h, _), a in zip(photos, answers)]
        result.answer = compose_per_photo(result.per_photo, yes_no, len(photos))
        check = check_citations(result.answer, result.shown)  # composed from shown ids: never invented
        by_id = {h.id: h for h, _ in photos}
        result.citations = [Citation(i, by_id[i].paths) for i in check.cited]
        result.invented = check.invented
        yield result.answer

    def _ask_photo(self, photo_id: int, question: str, options: AskOptions,
                   stream: bool) -> Generator[str, None, AskResult]:
        question = _clean_question(question)
        options.validate()
        t0 = time.perf_counter()
        hit = photo_hit(self.searcher, photo_id, options.filters)
        img = self.image_loader(hit, self.decode_side(options))
        result = AskResult(question, "", "single", self.vlm.model_id_or_path,
                           retrieved=[Retrieved(hit.id, 1.0, hit.paths[0] if hit.paths else None)], shown=[hit.id])
        prepared = self.vlm.prepare([Request.question([img], question)], options.budget)
        if stream:
            chunks = list(stream_generate(self.vlm, prepared, options.max_new_tokens))
            yield from chunks
            result.answer = "".join(chunks).strip()
        else:
            result.answer = self.vlm.generate(prepared, options.max_new_tokens)[0]
            yield result.answer
        result.citations = [Citation(hit.id, hit.paths)]
        result.timings = {"total_s": time.perf_counter() - t0}
        return result


class HiddenPhotoError(InputError):
    """A quarantined or blocked photo was asked about without asking for moderated photos."""


def photo_hit(searcher: Searcher, photo_id: int, filters: SearchFilters | None = None) -> SearchHit:
    """A :class:`SearchHit` (paths and metadata) for one catalogued photo id.

    A photo that moderation hides from search (quarantined or blocked) is refused with
    :class:`HiddenPhotoError` unless ``filters`` name a moderation value, as search's do."""
    hits = searcher._hydrate([(int(photo_id), 1.0, [])])
    if not hits or not hits[0].paths:
        raise InputError(f"photo id {photo_id} is not in the collection")
    if int(photo_id) in set(hidden_ids(searcher.coll, filters).tolist()):
        raise HiddenPhotoError(f"photo #{photo_id} is quarantined or blocked by moderation",
                               hint="to use it anyway pass --filter moderation=any",
                               http_hint='to use it anyway send "moderation": "any"')
    return hits[0]


def _clean_question(question: str) -> str:
    q = " ".join((question or "").split())
    if not q:
        raise InputError("the question is empty")
    return q


def _drain(gen: Generator[str, None, AskResult]) -> AskResult:
    stream = AskStream(gen)
    for _ in stream:
        pass
    assert stream.result is not None
    return stream.result
