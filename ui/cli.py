"""The ``photodex`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from indexer.errors import PhotodexError
from indexer.settings import Settings, get_settings

from .output import emit

log = logging.getLogger("photodex")

EXIT_OK = 0
EXIT_USAGE = 2


def _settings(args: argparse.Namespace) -> Settings:
    return get_settings(
        collection=getattr(args, "collection", None),
        database_url=getattr(args, "database_url", None),
        model=getattr(args, "model", None),
        pretrained=getattr(args, "pretrained", None),
        device=getattr(args, "device", None),
        batch_size=getattr(args, "batch_size", None),
        workers=getattr(args, "workers", None),
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", help="collection folder (default: $PHOTODEX_COLLECTION)")
    p.add_argument("--database-url", help="SQLAlchemy URL of the catalog (default: SQLite in the collection)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="count", default=0)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="open_clip model name, hf-hub:ORG/REPO or local-dir:PATH")
    p.add_argument("--pretrained", help="pretrained tag or path to a weights file ('none' for random init)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])


# ---- commands -------------------------------------------------------------------------------
def cmd_index(args: argparse.Namespace) -> int:
    from indexer.run import RunOptions, check_roots, index_paths
    from retrieval.index_store import refresh_index

    from .context import open_with_encoder
    from .progress import TqdmProgress

    settings = _settings(args)
    check_roots(args.paths)
    coll, encoder = open_with_encoder(settings, model_given=args.model is not None, create=True)
    options = RunOptions(
        batch_size=settings.batch_size,
        workers=settings.workers,
        max_image_pixels=settings.max_image_pixels,
        include=args.include or settings.include,
        exclude=args.exclude or settings.exclude,
        retry_errors=args.retry_errors,
    )
    progress = TqdmProgress(enabled=None if not args.json else False)
    try:
        summary = index_paths(coll, encoder, args.paths, options, progress)
    finally:
        progress.close()
    data = summary.as_dict()
    data["index"] = refresh_index(coll)
    emit(data, args.json, _index_text)
    coll.close()
    return EXIT_OK


def _index_text(d: dict[str, Any]) -> str:
    s, e, c = d["sync"], d["encode"], d["collection"]
    lines = [
        f"scanned {s['scanned']} files: {s['unchanged']} unchanged, {s['new_photos']} new photos, "
        f"{s['linked_existing']} matched by content (moved/copied), {s['removed_files']} paths removed, "
        f"{s['removed_photos']} photos removed",
        f"encoded {e['encoded']} photos in {e['seconds']:.1f}s ({e['photos_per_second']:.1f} photos/s); "
        f"{e['errors'] + s['file_errors']} skipped with errors (see `photodex info --errors`)",
        f"collection {c['collection']}: {c['photos']} photos, {c['vectors']} vectors, {c['errors']} errors",
    ]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from indexer.collection import Collection
    from retrieval.index_store import index_state

    settings = _settings(args)
    coll = Collection.open(settings.collection, settings.database_url)
    if args.errors:
        errors = coll.errors()
        emit(errors, args.json, lambda rows: "\n".join(f"{r['path']}\t{r['error']}" for r in rows) or "no errors")
    else:
        stats = coll.stats()
        stats["index"] = index_state(coll) or None
        stats["encoder_spec"] = coll.manifest["encoder"]
        emit(stats, args.json, lambda d: "\n".join(f"{k}: {v}" for k, v in d.items() if k != "encoder_spec"))
    coll.close()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="photodex", description="Search, tag and question a photo library.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index photo folders into the collection (incremental, resumable)")
    p.add_argument("paths", nargs="+", help="folders or files to index")
    _common(p)
    _model_args(p)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int, help="decode worker processes")
    p.add_argument("--include", action="append", help="glob of files to include (repeatable)")
    p.add_argument("--exclude", action="append", help="glob of files/folders to exclude (repeatable)")
    p.add_argument("--retry-errors", action="store_true", help="try photos that failed before again")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("info", help="what the collection holds")
    _common(p)
    p.add_argument("--errors", action="store_true", help="list every file that could not be indexed and why")
    p.set_defaults(func=cmd_info)

    _register_extra_commands(sub)
    return parser


def _register_extra_commands(sub: Any) -> None:
    """Commands from the retrieval and classification layers."""
    from . import cli_search

    cli_search.register(sub, _common, _model_args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(getattr(args, "verbose", 0), 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except PhotodexError as exc:
        sys.stderr.write(f"photodex: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("photodex: interrupted; run the same command again to resume\n")
        return 130
    except Exception as exc:  # pydantic ValidationError for bad settings, etc.
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            sys.stderr.write(f"photodex: error: invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}\n")
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    raise SystemExit(main())
