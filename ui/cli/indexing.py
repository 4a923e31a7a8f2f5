"""``photodex index``, ``photodex reindex`` and ``photodex info``."""

from __future__ import annotations

import argparse
from typing import Any

from ui.output import emit, printable

from .common import EXIT_OK, Subparsers, open_collection, settings_from, shared_options


def cmd_index(args: argparse.Namespace) -> int:
    from indexer.run import RunOptions, check_roots, index_paths
    from indexer.core.storage_errors import storage_refusals
    from ui.context import ensure_fast_text_path, ingest_hook, open_for_indexing
    from ui.progress import TqdmProgress

    settings = settings_from(args)
    check_roots(args.paths)
    coll, load = open_for_indexing(settings)
    with coll, coll.writer_lock().acquire(wait=args.wait) as lock:
        options = RunOptions(
            batch_size=settings.batch_size,
            workers=settings.workers,
            max_image_pixels=settings.max_image_pixels,
            include=args.include or settings.include,
            exclude=args.exclude or settings.exclude,
            retry_errors=args.retry_errors,
            on_commit=ingest_hook(),
            engine=args.engine,
            ray=_ray_options(args, settings) if args.engine == "ray" else None,
            follow_external_symlinks=args.follow_external_symlinks,
            nice=_nice(args, settings),
        )
        progress = TqdmProgress(enabled=None if not args.json else False)
        try:
            summary = index_paths(coll, load, args.paths, options, progress, lock=lock)
        finally:
            progress.close()
        data = summary.to_dict()
        from retrieval.index.store import refresh_index  # faiss: not needed before the vectors are in

        kept = (f"the catalog holds all {summary.stats['photos']} photos and {summary.stats['vectors']} vectors; "
                "only the search index file was not saved (searches stay complete meanwhile)")
        with storage_refusals(context=kept):
            data["index"] = refresh_index(coll, shards=_shards(args, settings))
        data["text_tower"] = ensure_fast_text_path(coll, settings, load)
    emit(data, args.json, _index_text)
    return EXIT_OK


def _shards(args: argparse.Namespace, settings: Any) -> int | None:
    """--shards, else PHOTODEX_INDEX_SHARDS, else None (keep the collection's index layout)."""
    return args.shards if args.shards is not None else settings.index_shards


def _nice(args: argparse.Namespace, settings: Any) -> int | None:
    """--nice, else PHOTODEX_INDEX_NICE, else None (10 when a server holds the collection, else 0)."""
    return args.nice if args.nice is not None else settings.index_nice


def _add_nice(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nice", type=int, choices=range(20), metavar="N",
                   help="lower this run's CPU priority by N (0-19; default: $PHOTODEX_INDEX_NICE, else 10 when "
                        "`photodex serve` holds the collection on this machine, else 0)")


def _shard_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 1024, got {text!r}")
    return n


def _add_shards(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", type=_shard_count, metavar="N",
                   help="keep the search index in N photo-id-range shards from now on, searched in parallel "
                        "(1: one file; default: $PHOTODEX_INDEX_SHARDS, else the collection's current layout)")


def _ray_options(args: argparse.Namespace, settings: Any) -> Any:
    from indexer.distributed import RayOptions

    return RayOptions(address=args.ray_address, actors=args.ray_actors, gpus_per_worker=args.gpus_per_worker,
                      gpu_decode={"auto": None, "on": True, "off": False}[args.gpu_decode],
                      device=settings.device, precision=settings.precision).validate()


def _index_text(d: dict[str, Any]) -> str:
    from ui.context import fast_text_path_line

    s, e, c = d["sync"], d["encode"], d["collection"]
    lines = [
        f"scanned {s['scanned']} files: {s['unchanged']} unchanged, {s['new_photos']} new photos, "
        f"{s['linked_existing']} matched by content (moved/copied), {s['removed_files']} paths removed, "
        f"{s['removed_photos']} photos removed"
        + (f"; {s['raw_beside_processed']} RAW files left out beside a JPEG/HEIC of the same name"
           if s.get("raw_beside_processed") else "")
        + (f"; {s['outside_roots']} symlinks leading outside the named folders skipped (name their targets "
           "too, or pass --follow-external-symlinks)" if s.get("outside_roots") else ""),
        f"encoded {e['encoded']} photos in {e['seconds']:.1f}s ({e['photos_per_second']:.1f} photos/s); "
        f"{e['errors'] + s['file_errors']} skipped with errors (see `photodex info --errors`)",
        f"collection {printable(c['collection'])}: {c['photos']} photos, {c['vectors']} vectors, {c['errors']} errors",
        f"index: {d['index']['action']} ({d['index']['factory']}, {d['index']['vectors']} vectors)",
        fast_text_path_line(d["text_tower"]),
    ]
    return "\n".join(lines)


def cmd_reindex(args: argparse.Namespace) -> int:
    from retrieval.index.store import refresh_index
    from ui.context import ensure_fast_text_path, fast_text_path_line, load_checked_encoder

    from indexer.priority import yield_cpu

    settings = settings_from(args)
    with open_collection(settings) as coll, coll.writer_lock().acquire(wait=args.wait):
        yield_cpu(coll.path, _nice(args, settings))
        result = refresh_index(coll, force_rebuild=args.force, shards=_shards(args, settings))
        result["text_tower"] = ensure_fast_text_path(coll, settings, lambda: load_checked_encoder(coll, settings))
    emit(result, args.json, lambda r: f"index {r['action']}: {r['factory']}, {r['vectors']} vectors"
         + (f" in {len(r['files'])} shards" if r.get("files") else "") + "\n" + fast_text_path_line(r["text_tower"]))
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from retrieval.search.text_tower_job import export_state
    from retrieval.index.state import index_state

    settings = settings_from(args)
    with open_collection(settings) as coll:
        if args.errors:
            errors = coll.errors()
            emit(errors, args.json,
                 lambda rows: "\n".join(f"{printable(r['path'])}\t{printable(r['error'])}" for r in rows) or "no errors")
            return EXIT_OK
        stats = coll.stats()
        stats["index"] = index_state(coll) or None
        stats["text_tower"] = export_state(coll.path, coll.spec.id)
        stats["encoder_spec"] = coll.manifest["encoder"]
    emit(stats, args.json, _info_text)
    return EXIT_OK


def _info_text(d: dict[str, Any]) -> str:
    from indexer.encode.precision_record import precision_text

    def value(k: str, v: Any) -> str:
        if k == "text_tower":
            return f"{v['state']} ({v['why']})"
        return precision_text(v) if k == "precision" else str(v)

    return "\n".join(f"{k}: {printable(value(k, v))}" for k, v in d.items() if k != "encoder_spec")


def register(sub: Subparsers) -> None:
    p = sub.add_parser("index", help="index photo folders into the collection (incremental, resumable)",
                       parents=shared_options(model=True))
    p.add_argument("paths", nargs="+", help="folders or files to index")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int, help="decode worker processes")
    p.add_argument("--include", action="append", help="glob of files to include (repeatable)")
    p.add_argument("--exclude", action="append", help="glob of files/folders to exclude (repeatable)")
    p.add_argument("--retry-errors", action="store_true", help="try photos that failed before again")
    p.add_argument("--wait", action="store_true", help="wait for another writer instead of refusing")
    p.add_argument("--follow-external-symlinks", action="store_true",
                   help="follow symlinks that lead outside the named folders (default: skip and count them)")
    g = p.add_argument_group("engine", "where decoding and encoding run (the catalog is always written here)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: decode workers + this process; ray: Ray Data tasks and actors (photodex[ray])")
    g.add_argument("--ray-address", help="Ray cluster to use (default: $RAY_ADDRESS, else a local one for the run)")
    g.add_argument("--ray-actors", type=int, help="encode actors (default: one per GPU share, else as many as hosts)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per encode actor (0: CPU actors)")
    g.add_argument("--gpu-decode", choices=["auto", "on", "off"], default="auto",
                   help="decode JPEGs with nvJPEG in the encode actors (auto: when they have GPUs)")
    _add_shards(p)
    _add_nice(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("reindex", help="bring the search index file up to date (or --force a rebuild)",
                       parents=shared_options())
    p.add_argument("--force", action="store_true", help="rebuild from the stored vectors even if up to date")
    p.add_argument("--wait", action="store_true", help="wait for another writer instead of refusing")
    _add_shards(p)
    _add_nice(p)
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("info", parents=shared_options(), help="what the collection holds")
    p.add_argument("--errors", action="store_true", help="list every file that could not be indexed and why")
    p.set_defaults(func=cmd_info)
