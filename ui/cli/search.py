"""``photodex search`` and ``photodex similar``."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import Any

from indexer.core.errors import InputError
from retrieval.search.defaults import DEFAULT_CAPTION_WEIGHT, DEFAULT_COLLAPSE
from ui.output import emit, printable

from .common import EXIT_OK, Subparsers, settings_from, shared_options


def _hits_text(hits: list[dict[str, Any]]) -> str:
    if not hits:
        return "no results"
    lines = []
    for rank, h in enumerate(hits, 1):
        extra = f"  (+{len(h['duplicates'])} near-duplicates)" if h["duplicates"] else ""
        path = printable(h["paths"][0]) if h["paths"] else "?"
        if "caption_score" in h:
            extra += f"  (clip {h['clip_score']:.4f}, caption {h['caption_score']:.2f}: {h['caption'] or '-'})"
        lines.append(f"{rank:3d}. {h['score']:.4f}  #{h['id']}  {path}{extra}")
    return "\n".join(lines)


def _finite(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {text!r}")
        return value

    return parse


def _options(args: argparse.Namespace) -> Any:
    from retrieval.index.choice import SearchParams
    from retrieval.search.filters import parse_filters
    from retrieval.search.searcher import SearchOptions

    filters = parse_filters(args.filter or [])
    collapse = None if args.no_collapse else (args.collapse if args.collapse is not None else DEFAULT_COLLAPSE)
    params = SearchParams(nprobe=args.nprobe, ef_search=args.ef_search)
    return SearchOptions(k=args.k, offset=args.offset, min_score=args.min_score, filters=filters,
                         collapse=collapse, params=params).validate()


def _run_search(args: argparse.Namespace, do: Callable[[Any, Any], list[Any]], text_only: bool = False) -> int:
    from retrieval.search.searcher import Searcher
    from ui.context import open_for_search

    settings = settings_from(args)
    options = _options(args)  # validated before any model loads
    coll, encoder = open_for_search(settings, text_only=text_only)
    with coll:
        hits = do(Searcher(coll, encoder), options)
    emit([h.to_dict() for h in hits], args.json, _hits_text)
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    if args.rerank and (args.captions or args.caption_weight is not None):
        raise InputError("--rerank and --captions cannot be combined")
    if args.rerank:
        from .answer import cmd_rerank

        return cmd_rerank(args)
    if args.captions or args.caption_weight is not None:
        weight = DEFAULT_CAPTION_WEIGHT if args.caption_weight is None else args.caption_weight
        return _run_search(args, lambda s, o: s.search_hybrid(args.text, o, caption_weight=weight), text_only=True)
    return _run_search(args, lambda s, o: s.search_text(args.text, o), text_only=True)


def cmd_similar(args: argparse.Namespace) -> int:
    if (args.image is None) == (args.id is None):
        raise InputError("give either an IMAGE_PATH or --id ID")
    if args.image is not None:
        if not os.path.isfile(args.image):
            raise InputError(f"image not found (or not a regular file): {args.image}")
        return _run_search(args, lambda s, o: s.search_similar(path=args.image, options=o))
    return _run_search(args, lambda s, o: s.search_similar(photo_id=args.id, options=o))


def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", type=int, default=20, help="number of results (default 20)")
    p.add_argument("--offset", type=int, default=0, help="skip this many results (pagination)")
    p.add_argument("--min-score", type=_finite("--min-score"), help="drop results below this cosine score")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE",
                   help="taken_after, taken_before, path (glob), make, camera, has_gps, type, tag, moderation")
    p.add_argument("--collapse", type=_finite("--collapse"),
                   help=f"near-duplicate cosine threshold in (0, 1] (default {DEFAULT_COLLAPSE})")
    p.add_argument("--no-collapse", action="store_true", help="return near-duplicates individually")
    p.add_argument("--nprobe", type=int, help="IVF lists to probe (per query, >= 1)")
    p.add_argument("--ef-search", type=int, help="HNSW efSearch (per query, >= 1)")


def register(sub: Subparsers) -> None:
    p = sub.add_parser("search", help="find photos by text, e.g. 'beach +sunset -people'",
                       parents=shared_options(model=True))
    p.add_argument("text")
    _search_args(p)
    p.add_argument("--rerank", action="store_true", help="re-score the top --rerank-k results with the VLM")
    p.add_argument("--rerank-k", type=int, default=50, help="candidates re-scored by the VLM (default 50)")
    p.add_argument("--vlm", help="VLM Hub id or local folder (default: $PHOTODEX_VLM)")
    p.add_argument("--captions", action="store_true",
                   help="hybrid score: CLIP cosine + W x caption match (BM25 over `photodex caption --all` captions)")
    p.add_argument("--caption-weight", type=_finite("--caption-weight"), metavar="W",
                   help=f"weight W of the caption match, in [0, 10] (default {DEFAULT_CAPTION_WEIGHT}; implies --captions)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("similar", help="find photos like an image file or a catalogued photo id",
                       parents=shared_options(model=True))
    p.add_argument("image", nargs="?", help="path of the query image")
    p.add_argument("--id", type=int, help="id of a photo in the collection")
    _search_args(p)
    p.set_defaults(func=cmd_similar)
