"""``photodex policy``, ``photodex moderate``, ``photodex calibrate`` and ``photodex decisions``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from indexer.core.errors import InputError
from ui.output import emit, printable

from .common import EXIT_OK, Subparsers, open_collection, settings_from, shared_options


def _policy_file(arg: str) -> Any:
    from retrieval.moderation.policy import STARTER_POLICY, load_policy

    if arg == "starter" and not os.path.exists(arg):
        return load_policy(STARTER_POLICY)
    return load_policy(arg)


def _text_encoder(settings: Any, coll: Any) -> Any:
    from ui.context import load_chosen_encoder

    encoder = load_chosen_encoder(settings)
    coll.check_encoder(encoder.spec)
    return encoder


def _policy_line(r: dict[str, Any]) -> str:
    concepts = r["policy"]["concepts"]
    return (f"{'*' if r['active'] else ' '} {r['name']} v{r['version']}  {len(concepts)} concepts  "
            f"{r['created_at']}" + (f"  calibrated: {', '.join(r['calibration'])}" if r["calibration"] else "")
            + (f"  ({r['note']})" if r.get("note") else ""))


def _policy_text(r: dict[str, Any]) -> str:
    lines = [_policy_line(r), f"  encoder {r['encoder']}; special-care adjustment "
                              f"{r['policy']['special_care_adjustment']}"]
    for c in r["policy"]["concepts"]:
        band = f" review >= {c['review_threshold']}" if c["review_threshold"] is not None else ""
        extra = " special care" if c["special_care"] else ""
        contrast = f" vs {len(c['contrast'])} contrast" if c["contrast"] else ""
        lines.append(f"  {c['name']}: {c['action']} at >= {c['threshold']}{band}{extra} "
                     f"({len(c['prompts'])} prompts{contrast})")
        point = r["calibration"].get(c["name"], {}).get("point")
        if point:
            lines.append(f"    calibrated for {point['target']} {point['target_value']}: precision "
                         f"{point['precision']:.3f} recall {point['recall']:.3f} f1 {point['f1']:.3f}")
    return "\n".join(lines)


def cmd_policy(args: argparse.Namespace) -> int:
    from retrieval.moderation import store

    settings = settings_from(args)
    if args.what == "set":
        policy = _policy_file(args.file)  # validated before the collection or a model is opened
        with open_collection(settings) as coll:
            store.check_policy_encoder(coll, policy)
            record = store.save_policy(coll, policy, _text_encoder(settings, coll), activate=args.activate)
        emit(record.to_dict(), args.json, _policy_text)
        return EXIT_OK
    with open_collection(settings) as coll:
        if args.what == "list":
            rows = [r.to_dict() for r in store.list_policies(coll)]
            emit(rows, args.json, lambda rs: "\n".join(_policy_line(r) for r in rs) or "no policies stored")
            return EXIT_OK
        if args.what == "activate":
            version = args.version_opt if args.version_opt is not None else args.version
            if version is None:
                raise InputError("give the version to activate: `photodex policy activate NAME --version N`")
            record = store.activate_policy(coll, args.name, version)
        else:  # show
            record = store.get_policy(coll, args.name, args.version)
    emit(record.to_dict(curves=args.json), args.json, _policy_text)
    return EXIT_OK


def _decision_text(rows: list[dict[str, Any]]) -> str:
    lines = []
    for d in rows:
        if d.get("error"):
            lines.append(f"{printable(d['source'])}: error: {d['error']}")
            continue
        top = sorted(d["concepts"], key=lambda c: -c["margin"])[:3]
        detail = ", ".join(f"{c['name']} {c['score']:.4f} ({c['margin']:+.4f})" for c in top)
        lines.append(f"{printable(d['source'])}: {d['action'].upper()}  [{d['policy']} v{d['version']}"
                     f"{', special care' if d['adjusted'] else ''}]  {detail}")
    return "\n".join(lines) or "nothing to moderate"


def _rescan_text(r: dict[str, Any]) -> str:
    head = (f"{'dry run: ' if r['dry_run'] else ''}{r['policy']} v{r['version']} over {r['photos']} photos: "
            f"{r['changed']} decision(s) {'would change' if r['dry_run'] else 'changed'} in {r['seconds']}s")
    lines = [head, "  outcomes: " + (", ".join(f"{k} {v}" for k, v in r["by_action"].items()) or "-")]
    for k, v in r["changes"].items():
        lines.append(f"  {k}: {v}  e.g. {', '.join(map(str, r['examples'].get(k, [])))}")
    for name, counts in r["by_concept"].items():
        lines.append(f"  {name}: {counts['hit']} hit, {counts['review']} review"
                     + (f", {r['changed_by_concept'][name]} changing" if name in r["changed_by_concept"] else ""))
    return "\n".join(lines)


def cmd_moderate(args: argparse.Namespace) -> int:
    from retrieval.moderation.store import get_policy

    given = sum(bool(x) for x in (args.images, args.ids, args.all))
    if given != 1:
        raise InputError("give IMAGE paths, --id N, or --all (exactly one of them)")
    if args.dry_run and not args.all:
        raise InputError("--dry-run goes with --all")
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        raise InputError(f"image not found (or not a regular file): {', '.join(missing)}")
    settings = settings_from(args)
    with open_collection(settings) as coll:
        record = get_policy(coll, args.policy, args.version)
        if args.all:
            from retrieval.moderation.rescan import rescan

            report = rescan(coll, record, dry_run=args.dry_run, wait=args.wait)
            emit(report.to_dict(), args.json, _rescan_text)
            return EXIT_OK
        if args.ids:
            from retrieval.moderation.service import moderate_ids

            decisions = moderate_ids(coll, record, args.ids)
        else:
            from retrieval.moderation.service import moderate_files

            decisions = moderate_files(record, _text_encoder(settings, coll), args.images)
    emit([d.to_dict() for d in decisions], args.json, _decision_text)
    return EXIT_OK


def _ids(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"photo ids must be comma-separated integers, got {text!r}") from None


def cmd_calibrate(args: argparse.Namespace) -> int:
    from retrieval.moderation.calibrate import Examples, calibrate_concept
    from retrieval.moderation.store import get_policy

    positives = Examples(list(args.positives or []), _ids(args.positive_ids))
    negatives = Examples(list(args.negatives or []), _ids(args.negative_ids))
    if not (positives.paths or positives.ids) or not (negatives.paths or negatives.ids):
        raise InputError("give positive and negative examples (--positives/--positive-ids and "
                         "--negatives/--negative-ids); calibration needs both classes")
    if (args.target_precision is None) == (args.target_recall is None):
        raise InputError("give --target-precision P or --target-recall R (one of them)")
    settings = settings_from(args)
    with open_collection(settings) as coll:
        record = get_policy(coll, args.policy, args.version)
        record.policy.concept(args.concept)  # unknown concept: refused before a model loads
        encoder = _text_encoder(settings, coll) if positives.paths or negatives.paths else None
        result = calibrate_concept(coll, record, args.concept, positives, negatives, encoder,
                                   target_precision=args.target_precision, target_recall=args.target_recall,
                                   write=args.write, activate=args.activate, plot=args.plot)

    def text(r: dict[str, Any]) -> str:
        p, c = r["point"], r["curve"]
        lines = [f"{r['concept']} ({r['policy']} v{r['version']}): {c['positives']} positive, {c['negatives']} "
                 f"negative examples; average precision {c['average_precision']:.3f}",
                 f"threshold {p['threshold']:.6f} for {p['target']} >= {p['target_value']}: precision "
                 f"{p['precision']:.3f} recall {p['recall']:.3f} f1 {p['f1']:.3f} (tp {p['tp']} fp {p['fp']} "
                 f"fn {p['fn']} tn {p['tn']})"]
        if r["skipped"]:
            lines.append(f"skipped {len(r['skipped'])} unreadable example file(s)")
        if r["plot"]:
            lines.append(f"plot: {r['plot']}")
        lines.append(f"stored as {r['policy']} version {r['written_version']}" if r["written_version"]
                     else "not stored (add --write to store it as a new policy version)")
        return "\n".join(lines)

    emit(result.to_dict(), args.json, text)
    return EXIT_OK


def cmd_decisions(args: argparse.Namespace) -> int:
    from retrieval.moderation.history import list_decisions

    with open_collection(settings_from(args)) as coll:
        rows = [r.to_dict() for r in list_decisions(coll, photo_id=args.id, action=args.action,
                                                    history=args.history, limit=args.limit)]

    def text(rs: list[dict[str, Any]]) -> str:
        lines = []
        for r in rs:
            lines.append(f"#{r['photo_id']}  {r['action']}  hits: {','.join(r['hits']) or '-'}  "
                         f"review: {','.join(r['review']) or '-'}  [{r['policy']} v{r['version']}]  {r['created_at']}"
                         + (f"  (photo deleted; sha256 {r['photo_sha256']})" if r.get("photo_deleted") else ""))
            for h in r["history"]:
                lines.append(f"    {h['created_at']}  {h['action']}  [{h['policy']} v{h['version']}]"
                             + ("  (current)" if h["current"] else ""))
        return "\n".join(lines) or "no decisions"

    emit(rows, args.json, text)
    return EXIT_OK


def _policy_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", help="policy name (default: the active policy)")
    p.add_argument("--version", type=int, help="policy version (default: the newest of --policy)")


def register(sub: Subparsers) -> None:
    """Register moderation commands."""
    p = sub.add_parser("policy", help="moderation policies: set (new version), show, list, activate")
    ps = p.add_subparsers(dest="what", required=True)
    s = ps.add_parser("set", help="store a policy file (JSON/YAML) as a new version; 'starter' for the shipped one",
                      parents=shared_options(model=True))
    s.add_argument("file")
    s.add_argument("--activate", action="store_true", help="make the new version the active policy")
    s = ps.add_parser("show", parents=shared_options(), help="one policy version (default: the active one)")
    s.add_argument("name", nargs="?")
    s.add_argument("--version", type=int)
    s = ps.add_parser("list", parents=shared_options(), help="every stored policy version (* marks the active one)")
    s = ps.add_parser("activate", parents=shared_options(), help="make NAME at --version N the active policy")
    s.add_argument("name")
    s.add_argument("version", nargs="?", type=int)
    s.add_argument("--version", dest="version_opt", type=int)
    for q in ps.choices.values():
        q.set_defaults(func=cmd_policy)

    p = sub.add_parser("moderate", help="moderation decisions for images, photo ids, or the whole collection (--all)",
                       parents=shared_options(model=True))
    p.add_argument("images", nargs="*", help="image files to check (nothing is stored)")
    p.add_argument("--id", dest="ids", type=int, action="append", default=[], help="a catalogued photo id (repeatable)")
    p.add_argument("--all", action="store_true", help="re-evaluate every photo from stored vectors and store changes")
    p.add_argument("--dry-run", action="store_true", help="with --all: report what would change, write nothing")
    p.add_argument("--wait", action="store_true", help="with --all: wait for another writer instead of refusing")
    _policy_choice(p)
    p.set_defaults(func=cmd_moderate)

    p = sub.add_parser("calibrate", help="choose a concept's threshold from labelled examples (precision-recall)",
                       parents=shared_options(model=True))
    p.add_argument("concept")
    p.add_argument("--positives", nargs="+", metavar="PATH", help="image files or folders showing the concept")
    p.add_argument("--negatives", nargs="+", metavar="PATH", help="image files or folders not showing it")
    p.add_argument("--positive-ids", metavar="IDS", help="catalogued photo ids showing the concept (1,2,3)")
    p.add_argument("--negative-ids", metavar="IDS", help="catalogued photo ids not showing it")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-precision", type=float, metavar="P")
    target.add_argument("--target-recall", type=float, metavar="R")
    p.add_argument("--plot", metavar="FILE.png", help="write the precision-recall curve (needs matplotlib)")
    p.add_argument("--write", action="store_true", help="store the threshold and curve as a new policy version")
    p.add_argument("--activate", action="store_true", help="with --write: make the new version active")
    _policy_choice(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("decisions", help="stored moderation decisions (current; --history for earlier ones)",
                       parents=shared_options())
    p.add_argument("--id", type=int, help="one photo id")
    p.add_argument("--action", help="allow, review, flag, quarantine or block")
    p.add_argument("--history", action="store_true", help="include each photo's earlier decisions")
    p.add_argument("--limit", type=int)
    p.set_defaults(func=cmd_decisions)
