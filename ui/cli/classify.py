"""``photodex classify``, ``photodex tags`` and the ``eval`` group (``eval zeroshot``/``retrieval``: ui/cli/evaluate.py,
``eval pope``: ui/cli/answer.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from indexer.core.errors import InputError
from ui.output import emit, printable

from .common import Subparsers, open_collection, settings_from, shared_options


def _labels(args: argparse.Namespace) -> list[str]:
    if args.labels and args.labels_file:
        raise InputError("give --labels or --labels-file, not both")
    if args.labels:
        return [x.strip() for x in args.labels.split(",")]
    if args.labels_file:
        try:
            lines = Path(args.labels_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"cannot read labels file {args.labels_file}: {exc.strerror}") from exc
        return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    raise InputError("give the labels with --labels a,b,c or --labels-file FILE")


def _thresholds(args: argparse.Namespace, labels: list[str]) -> float | list[float]:
    """One cosine threshold for all labels, or one per label from a ``LABEL<TAB>THRESHOLD`` file."""
    if args.thresholds_file:
        per: dict[str, float] = {}
        try:
            lines = Path(args.thresholds_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"cannot read thresholds file {args.thresholds_file}: {exc.strerror}") from exc
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            label, _, value = line.rpartition("\t") if "\t" in line else line.rpartition(" ")
            try:
                per[label.strip()] = float(value)
            except ValueError:
                raise InputError(f"{args.thresholds_file}:{n}: expected 'LABEL<TAB>THRESHOLD'") from None
        missing = [lab for lab in labels if lab not in per and args.threshold is None]
        if missing:
            raise InputError(f"no threshold for {', '.join(missing)} (add them to the file or give --threshold)")
        return [per.get(lab, args.threshold) for lab in labels]  # type: ignore[misc]
    if args.threshold is None:
        raise InputError("--multi-label needs --threshold (cosine similarity, e.g. 0.25) or --thresholds-file")
    return args.threshold


def _classifier(args: argparse.Namespace, labels: list[str], encoder: Any, cache_dir: Path | None) -> Any:
    from retrieval.classify.tagging import ZeroShotClassifier

    return ZeroShotClassifier(encoder, labels, args.templates, cache_dir=cache_dir)


def cmd_classify(args: argparse.Namespace) -> int:
    from retrieval.classify.tagging import classify_files, tag_library
    from ui.context import load_chosen_encoder, open_for_search

    if bool(args.images) == bool(args.all):
        raise InputError("give IMAGE paths or --all (the whole collection), not both or neither")
    if args.moderation is not None and not args.all:
        raise InputError("--moderation goes with --all (it chooses which catalogued photos are tagged)")
    labels = _labels(args)  # read once; fails fast on label errors before loading a model
    thresholds = _thresholds(args, labels) if args.multi_label else None
    settings = settings_from(args)
    if args.all:
        coll, encoder = open_for_search(settings)
        with coll:
            clf = _classifier(args, labels, encoder, coll.path / "zeroshot")
            taxonomy = args.taxonomy or "zeroshot"
            result = tag_library(coll, clf, taxonomy, k=args.k, min_score=args.min_score, thresholds=thresholds,
                                 moderation=args.moderation)
        emit(result, args.json, lambda r: f"tagged {r['photos']} photos with {r['tags']} tags in taxonomy "
             f"{r['taxonomy']!r}: " + ", ".join(f"{k} {v}" for k, v in r["per_label"].items())
             + (f" ({r['skipped_by_moderation']} left out by moderation; --moderation any includes them)"
                if r["skipped_by_moderation"] else "")
             + (" (sigmoid scoring: each probability is the label's own, from the model's logit bias)"
                if r.get("scoring") == "sigmoid" else ""))
        return 0
    encoder = load_chosen_encoder(settings)
    clf = _classifier(args, labels, encoder, None)
    results = [r.to_dict() for r in classify_files(clf, args.images, k=args.k, thresholds=thresholds)]

    def text(rows: list[dict[str, Any]]) -> str:
        return "\n".join(f"{printable(r['source'])}: " + (r["error"] or ", ".join(f"{x['label']} {x['score']:.3f}"
                                                                        for x in r["labels"]) or "-") for r in rows)

    emit(results, args.json, text)
    return 0


def cmd_tags(args: argparse.Namespace) -> int:
    from retrieval.classify.tagging import list_tags

    with open_collection(settings_from(args)) as coll:
        rows = list_tags(coll, args.taxonomy)
    emit(rows, args.json, lambda rs: "\n".join(f"{r['taxonomy']}\t{r['label']}\t{r['photos']}" for r in rs) or "no tags")
    return 0


def _label_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", help="comma-separated class names")
    p.add_argument("--labels-file", help="file with one class name per line")
    p.add_argument("--templates", default="photos",
                   help="template set (imagenet80, imagenet7, photos) or a file with one '{}' template per line")


def register(sub: Subparsers) -> None:
    """Register classification commands."""
    p = sub.add_parser("classify", help="zero-shot classify images, or tag the whole collection (--all)",
                       parents=shared_options(model=True))
    p.add_argument("images", nargs="*", help="image files to classify")
    p.add_argument("--all", action="store_true", help="tag every photo of the collection from stored vectors")
    _label_args(p)
    p.add_argument("-k", type=int, default=3, help="top-k labels per photo (default 3; 1 for --all tagging)")
    p.add_argument("--multi-label", action="store_true", help="every label whose cosine reaches --threshold")
    p.add_argument("--threshold", type=float, help="cosine similarity threshold for --multi-label")
    p.add_argument("--thresholds-file", help="per-label thresholds for --multi-label: LABEL<TAB>THRESHOLD lines")
    p.add_argument("--min-score", type=float, default=0.0, help="with --all: store only labels with this probability")
    p.add_argument("--taxonomy", help="with --all: name under which tags are stored (replaces earlier ones)")
    p.add_argument("--moderation", metavar="VALUE",
                   help="with --all: tag only photos the search filter moderation=VALUE selects (allow, review, "
                        "flag, quarantine, block; any = every photo); by default quarantined and blocked are skipped")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("tags", parents=shared_options(), help="label counts of stored tags")
    p.add_argument("--taxonomy")
    p.set_defaults(func=cmd_tags)

    p = sub.add_parser("eval", help="evaluate classifiers")
    ev = p.add_subparsers(dest="what", required=True)
    from .answer import register_pope
    from .evaluate import register_retrieval, register_zeroshot

    register_zeroshot(ev)
    register_pope(ev)
    register_retrieval(ev)
