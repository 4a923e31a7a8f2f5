"""``photodex search`` and ``photodex similar``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from indexer.errors import ConfigError

from .output import emit


def _hits_text(hits: list[dict[str, Any]]) -> str:
    if not hits:
        return "no results"
    lines = []
    for rank, h in enumerate(hits, 1):
        extra = f"  (+{len(h['duplicates'])} near-duplicates)" if h["duplicates"] else ""
        lines.append(f"{rank:3d}. {h['score']:.4f}  #{h['id']}  {h['paths'][0] if h['paths'] else '?'}{extra}")
    return "\n".join(lines)


def _options(args: argparse.Namespace) -> Any:
    from retrieval.filters import FilterError, parse_filters
    from retrieval.index_choice import SearchParams
    from retrieval.search import DEFAULT_COLLAPSE, SearchOptions

    try:
        filters = parse_filters(args.filter or [])
    except FilterError as exc:
        raise ConfigError(str(exc)) from exc
    if args.k < 1 or args.offset < 0:
        raise ConfigError("-k must be >= 1 and --offset >= 0")
    collapse = None if args.no_collapse else (args.collapse if args.collapse is not None else DEFAULT_COLLAPSE)
    params = SearchParams(nprobe=args.nprobe, ef_search=args.ef_search)
    return SearchOptions(k=args.k, offset=args.offset, min_score=args.min_score, filters=filters,
                         collapse=collapse, params=params)


def _run_search(args: argparse.Namespace, do: Callable[[Any, Any], list[Any]]) -> int:
    from retrieval.search import SearchError, Searcher

    from .cli import _settings
    from .context import open_with_encoder

    settings = _settings(args)
    options = _options(args)
    coll, encoder = open_with_encoder(settings, model_given=args.model is not None)
    try:
        hits = do(Searcher(coll, encoder), options)
    except SearchError as exc:
        raise ConfigError(str(exc)) from exc
    finally:
        coll.close()
    data = [h.as_dict() for h in hits]
    emit(data, args.json, _hits_text)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    return _run_search(args, lambda s, o: s.search_text(args.text, o))


def cmd_similar(args: argparse.Namespace) -> int:
    if (args.image is None) == (args.id is None):
        raise ConfigError("give either an IMAGE_PATH or --id ID")
    if args.image is not None:
        import os

        if not os.path.exists(args.image):
            raise ConfigError(f"image not found: {args.image}")
        return _run_search(args, lambda s, o: s.search_similar(path=args.image, options=o))
    return _run_search(args, lambda s, o: s.search_similar(photo_id=args.id, options=o))


def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", type=int, default=20, help="number of results (default 20)")
    p.add_argument("--offset", type=int, default=0, help="skip this many results (pagination)")
    p.add_argument("--min-score", type=float, help="drop results below this cosine score")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE",
                   help="taken_after, taken_before, path (glob), make, camera, has_gps, type, tag, moderation")
    p.add_argument("--collapse", type=float, help="near-duplicate cosine threshold (default 0.95)")
    p.add_argument("--no-collapse", action="store_true", help="return near-duplicates individually")
    p.add_argument("--nprobe", type=int, help="IVF lists to probe (per query)")
    p.add_argument("--ef-search", type=int, help="HNSW efSearch (per query)")


def register(sub: Any, common: Callable[[Any], None], model_args: Callable[[Any], None]) -> None:
    """Register retrieval commands on the ``photodex`` parser."""
    p = sub.add_parser("search", help="find photos by text, e.g. 'beach +sunset -people'")
    p.add_argument("text")
    common(p)
    model_args(p)
    _search_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("similar", help="find photos like an image file or a catalogued photo id")
    p.add_argument("image", nargs="?", help="path of the query image")
    p.add_argument("--id", type=int, help="id of a photo in the collection")
    common(p)
    model_args(p)
    _search_args(p)
    p.set_defaults(func=cmd_similar)

    from . import cli_classify

    cli_classify.register(sub, common, model_args)
