"""``photodex ask``, ``photodex caption``, ``photodex rerank`` and ``photodex eval pope``: the VLM answers about photos."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from indexer.core.errors import InputError
from ui.output import emit, printable

from .common import EXIT_OK, Subparsers, settings_from, shared_options

if TYPE_CHECKING:
    from ui.settings import Settings

STRATEGIES = ("auto", "joint", "per-photo")


def _settings(args: argparse.Namespace) -> Settings:
    settings = settings_from(args)
    if getattr(args, "vlm", None):
        settings = settings.model_copy(update={"vlm": args.vlm})
    return settings


def _vlm(settings: Settings) -> Any:
    from answerer.vlm import shared_vlm

    return shared_vlm(settings.vlm, settings.device, settings.precision)


def _budget(settings: Settings) -> Any:
    from answerer.budget import ImageBudget

    return ImageBudget(settings.vlm_max_images, settings.vlm_max_image_side, settings.vlm_max_image_tokens)


def _searcher(settings: Settings) -> tuple[Any, Any]:
    from retrieval.search.searcher import Searcher
    from ui.context import open_for_search

    coll, encoder = open_for_search(settings, text_only=True)
    return coll, Searcher(coll, encoder)


def _ask_text(result: dict[str, Any], with_answer: bool = True) -> str:
    lines = [result["answer"]] if with_answer else []
    for c in result["citations"]:
        lines.append(f"  [#{c['id']}] {printable(c['paths'][0]) if c['paths'] else '?'}")
    if result["invented"]:
        lines.append("note: ignored citations of photos the model was not shown: "
                     + ", ".join(f"#{i}" for i in result["invented"]))
    if result["dropped"]:
        lines.append("not shown: " + ", ".join(f"#{d['id']} ({d['reason']})" for d in result["dropped"]))
    return "\n".join(lines)


def cmd_ask(args: argparse.Namespace) -> int:
    from answerer.rag import Answerer, AskOptions
    from retrieval.search.filters import parse_filters

    if not args.question.strip():
        raise InputError("the question is empty")
    settings = _settings(args)
    options = AskOptions(
        k=args.k, filters=parse_filters(args.filter or []),
        strategy=args.strategy or settings.vlm_strategy,
        min_relevance=settings.vlm_min_relevance if args.min_relevance is None else args.min_relevance,
        max_new_tokens=args.max_new_tokens or settings.vlm_max_new_tokens,
        budget=_budget(settings), query=args.query,
    ).validate()  # before any model loads
    coll, searcher = _searcher(settings)
    with coll:
        answerer = Answerer(searcher, _vlm(settings))
        stream = args.stream and not args.json
        if args.id is not None:
            run: Any = answerer.ask_photo(args.id, args.question, options, stream=stream)
        else:
            run = answerer.ask_stream(args.question, options) if stream else answerer.ask(args.question, options)
        if stream:
            for chunk in run:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            sys.stdout.write("\n")
            result = run.result
        else:
            result = run
    data = result.to_dict()
    if stream:
        tail = _ask_text(data, with_answer=False)
        if tail:
            sys.stdout.write(tail + "\n")
    else:
        emit(data, args.json, _ask_text)
    return EXIT_OK


def cmd_caption(args: argparse.Namespace) -> int:
    from answerer.budget import shrink
    from retrieval.search.filters import parse_filters

    if sum((args.image is not None, args.id is not None, args.all)) != 1:
        raise InputError("give one of: an IMAGE path, --id ID or --all")
    if not args.all and (args.overwrite or args.caption_batch is not None):
        raise InputError("--overwrite and --batch-size go with --all")
    if args.image is not None and args.filter:
        raise InputError("--filter goes with --id or --all, not with an image file")
    filters = parse_filters(args.filter or [])
    settings = _settings(args)
    if args.all:
        return _caption_all(args, settings, filters)
    prompt = args.prompt or settings.vlm_caption_prompt
    if args.image is not None:
        from indexer.encode.decode import decode_photo

        if not os.path.isfile(args.image):
            raise InputError(f"image not found (or not a regular file): {args.image}")
        from indexer.encode.decode import DecodeError

        try:
            img, _ = decode_photo(args.image, settings.vlm_max_image_side)
        except DecodeError as exc:
            raise InputError(f"cannot read image {args.image}: {exc}") from None
        source: dict[str, Any] = {"path": args.image, "id": None}
    else:
        from answerer.rag import load_photo, photo_hit

        coll, searcher = _searcher(settings)
        with coll:
            hit = photo_hit(searcher, args.id, filters)
        img = load_photo(hit, settings.vlm_max_image_side)
        source = {"path": hit.paths[0], "id": hit.id}
    vlm = _vlm(settings)
    text = vlm.answer([shrink(img, settings.vlm_max_image_side)], prompt,
                      max_new_tokens=args.max_new_tokens or settings.vlm_max_new_tokens, budget=_budget(settings))
    emit({**source, "caption": text, "model": settings.vlm}, args.json, lambda d: d["caption"])
    return EXIT_OK


def _caption_all(args: argparse.Namespace, settings: Settings, filters: Any) -> int:
    from answerer.captions import CaptionOptions, caption_collection
    from ui.progress import TqdmProgress

    from .common import open_collection

    options = CaptionOptions(
        prompt=args.prompt or settings.vlm_caption_prompt,
        batch_size=8 if args.caption_batch is None else args.caption_batch,
        max_new_tokens=args.max_new_tokens or min(settings.vlm_max_new_tokens, 48), overwrite=args.overwrite,
        filters=filters, budget=_budget(settings), wait=args.wait).validate()  # before any model loads
    vlm = _vlm(settings)
    with open_collection(settings) as coll, coll.writer_lock().acquire(wait=args.wait) as lock:
        progress = TqdmProgress(enabled=None if not args.json else False)
        try:
            summary = caption_collection(coll, vlm, options, progress, lock=lock)
        finally:
            progress.close()
    emit(summary.to_dict(), args.json, _caption_all_text)
    return EXIT_OK


def _caption_all_text(d: dict[str, Any]) -> str:
    lines = [f"captioned {d['captioned']} of {d['candidates']} photos in {d['seconds']:.1f}s "
             f"({d['photos_per_second']:.1f} photos/s after {d['model_load_seconds']:.1f}s loading the model) "
             f"with {d['model']}; skipped {d['already_captioned']} "
             f"already captioned, {d['hidden']} quarantined/blocked, {len(d['failed'])} unreadable"]
    lines += [f"  #{f['id']}: {printable(f['reason'])}" for f in d["failed"]]
    return "\n".join(lines)


def cmd_rerank(args: argparse.Namespace) -> int:
    from answerer.rerank import rerank
    from retrieval.search.filters import parse_filters
    from retrieval.search.searcher import SearchOptions

    settings = _settings(args)
    options = SearchOptions(k=args.k, filters=parse_filters(args.filter or [])).validate()
    if args.rerank_k < 1:
        raise InputError(f"--rerank-k must be at least 1, got {args.rerank_k}")
    template = getattr(args, "rerank_template", None) or settings.vlm_rerank_template
    weight = getattr(args, "rerank_weight", 0.5)  # getattr: `photodex search --rerank` reuses this command
    coll, searcher = _searcher(settings)
    with coll:
        hits = rerank(searcher, _vlm(settings), args.text, options, rerank_k=args.rerank_k,
                      weight=weight, template=template, max_image_side=settings.vlm_max_image_side)
    emit([h.to_dict() for h in hits], args.json, _rerank_text)
    return EXIT_OK


def _rerank_text(hits: list[dict[str, Any]]) -> str:
    if not hits:
        return "no results"
    return "\n".join(f"{n:3d}. {h['score']:.4f}  (clip {h['clip_score']:.4f}, p_yes {h['p_yes']:.3f}, was "
                     f"{h['clip_rank']})  #{h['id']}  {printable(h['paths'][0]) if h['paths'] else '?'}"
                     for n, h in enumerate(hits, 1))


def _photo_paths(settings: Settings) -> Any:
    """ids → the first file path of each catalogued photo (opens the collection only when called)."""

    def lookup(ids: list[int]) -> dict[int, str]:
        from sqlalchemy import select

        from indexer.catalog.models import PhotoFile

        from .common import open_collection

        found: dict[int, str] = {}
        with open_collection(settings) as coll, coll.catalog.session() as s:
            for pid, path in s.execute(select(PhotoFile.photo_id, PhotoFile.path)
                                       .where(PhotoFile.photo_id.in_(ids)).order_by(PhotoFile.path)):
                found.setdefault(int(pid), path)
        return found

    return lookup


def cmd_eval_pope(args: argparse.Namespace) -> int:
    from pathlib import Path

    from answerer.pope import evaluate_pope, read_pope, resolve_images

    if args.pope_batch < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.pope_batch}")
    settings = _settings(args)
    items = read_pope(args.file)  # fails fast on a bad file, before any model loads
    images = resolve_images(items, args.image_root, _photo_paths(settings), base=Path(args.file).parent)
    report = evaluate_pope(_vlm(settings), items, images, batch_size=args.pope_batch,
                           max_new_tokens=args.max_new_tokens or 8, budget=_budget(settings), file=args.file)
    data = report.to_dict()
    if not args.answers:
        data.pop("answers")

    def text(d: dict[str, Any]) -> str:
        def line(name: str, m: dict[str, Any]) -> str:
            return (f"{name:<12} n={m['n']:<6} accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  "
                    f"recall {m['recall']:.4f}  F1 {m['f1']:.4f}  yes-ratio {m['yes_ratio']:.4f}")

        rows = [line("all", d["metrics"])] + [line(c, m) for c, m in d["per_category"].items()]
        rows.append(f"{d['timings']['questions_per_s']:.1f} questions/s, model {d['model']}")
        return "\n".join(rows)

    emit(data, args.json, text)
    return EXIT_OK


def register_pope(ev: Subparsers) -> None:
    """``photodex eval pope`` (registered by :func:`ui.cli.classify.register` under ``eval``)."""
    p = ev.add_parser("pope", help="POPE object-hallucination yes/no evaluation of the VLM",
                      parents=shared_options(model=True))
    p.add_argument("file", help="POPE JSON lines: image (path or photo id), text (yes/no question), label")
    p.add_argument("--image-root", help="folder that relative image paths are under (default: the file's folder)")
    p.add_argument("--batch-size", type=int, default=16, dest="pope_batch",  # not the encoder's --batch-size setting
                   help="questions per generate (default 16)")
    p.add_argument("--answers", action="store_true", help="with --json: include every per-question answer")
    _vlm_args(p)
    p.set_defaults(func=cmd_eval_pope)


def _vlm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vlm", help="VLM Hub id or local folder (default: $PHOTODEX_VLM)")
    p.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: $PHOTODEX_VLM_MAX_NEW_TOKENS)")


def register(sub: Subparsers) -> None:
    """Register the answering commands."""
    p = sub.add_parser("ask", help="answer a question from the photos (retrieval + VLM, with citations)",
                       parents=shared_options(model=True))
    p.add_argument("question")
    p.add_argument("--id", type=int, help="ask about this one photo instead of retrieving")
    p.add_argument("-k", type=int, default=5, help="photos to retrieve (default 5)")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="search filters, as for `photodex search` "
                   "(with --id: moderation=any lets you ask about a quarantined/blocked photo)")
    p.add_argument("--strategy", choices=STRATEGIES, help="joint (one multi-image prompt) or per-photo "
                   "(default: $PHOTODEX_VLM_STRATEGY, auto = by model)")
    p.add_argument("--min-relevance", type=float, help="CLIP score below which a photo counts as not relevant")
    p.add_argument("--query", help="retrieval text (default: derived from the question)")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    _vlm_args(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("caption", help="describe an image file or catalogued photo with the VLM, or caption "
                       "the whole collection (--all) for hybrid search", parents=shared_options(model=True))
    p.add_argument("image", nargs="?", help="image file")
    p.add_argument("--id", type=int, help="id of a photo in the collection")
    p.add_argument("--all", action="store_true", help="caption every indexed photo and store the captions "
                   "(resumable: photos captioned by the same model are skipped)")
    p.add_argument("--overwrite", action="store_true", help="with --all: caption again photos that have a caption")
    p.add_argument("--batch-size", type=int, dest="caption_batch", help="with --all: photos per generate (default 8)")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE",
                   help="with --all: which photos (search filters); moderation=any includes quarantined/blocked "
                   "photos (also needed to caption one with --id)")
    p.add_argument("--wait", action="store_true", help="with --all: wait for the writer lock instead of exiting")
    p.add_argument("--prompt", help="instruction (default: $PHOTODEX_VLM_CAPTION_PROMPT)")
    _vlm_args(p)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("rerank", help="text search, re-ranked by the VLM's yes/no judgement of each candidate",
                       parents=shared_options(model=True))
    p.add_argument("text")
    p.add_argument("-k", type=int, default=20, help="results to return (default 20)")
    p.add_argument("--rerank-k", type=int, default=50, help="candidates re-scored by the VLM (default 50)")
    p.add_argument("--rerank-weight", type=float, default=0.5, help="weight of P(yes) against CLIP, in [0, 1]")
    p.add_argument("--rerank-template", help="question with {query} (default: $PHOTODEX_VLM_RERANK_TEMPLATE)")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE")
    _vlm_args(p)
    p.set_defaults(func=cmd_rerank)
