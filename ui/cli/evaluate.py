"""``photodex eval retrieval`` and ``photodex eval zeroshot``: clip_benchmark's figures; several ``--model`` values, one table.

``--model`` may be given more than once, each as ``NAME`` or ``NAME,PRETRAINED`` (clip_benchmark's
``--pretrained_model`` spelling); with one model ``--pretrained`` still applies. With no ``--model``
the collection's own encoder is used (what search over it does), else the default one.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from indexer.core.errors import InputError
from ui.output import emit

from .common import Subparsers, settings_from, shared_options

log = logging.getLogger(__name__)

OUTPUT_FIELDS = ("dataset", "model", "pretrained", "task", "language")


def model_choices(args: argparse.Namespace) -> list[tuple[str | None, str | None]]:
    """(model, pretrained) per ``--model`` value; ``[(None, --pretrained)]`` when none is given."""
    models = args.model or [None]
    if len(models) > 1 and args.pretrained:
        raise InputError("with several --model values give each one's weights as --model NAME,PRETRAINED, "
                         "not --pretrained")
    out: list[tuple[str | None, str | None]] = []
    for m in models:
        if m is not None and "," in m:
            name, _, pretrained = m.partition(",")
            if not name.strip():
                raise InputError(f"--model {m!r}: no model name before the comma")
            out.append((name.strip(), pretrained.strip() or None))
        else:
            out.append((m, args.pretrained))
    if len(set(out)) != len(out):
        raise InputError("the same --model is given twice")
    return out


def base_settings(args: argparse.Namespace) -> Any:
    """Settings for what all chosen encoders share (batch size, workers, pixel limit)."""
    return settings_from(argparse.Namespace(**{**vars(args), "model": None, "pretrained": None}))


def encoders(args: argparse.Namespace) -> Iterator[Any]:
    """Each chosen encoder in turn (one in memory at a time)."""
    from ui.context import load_chosen_encoder

    for model, pretrained in model_choices(args):
        yield load_chosen_encoder(settings_from(argparse.Namespace(**{**vars(args), "model": model,
                                                                       "pretrained": pretrained})))


def model_label(spec: Any) -> str:
    """``ViT-B-32 laion2b_s34b_b79k`` (clip_benchmark's model_fullname); a local folder by its name."""
    model = spec.model
    if model.startswith("local-dir:"):
        return Path(model[len("local-dir:"):]).name
    pretrained = spec.pretrained or "random"
    return f"{model} {Path(pretrained).name if '/' in pretrained else pretrained}"


def output_path(template: str, n_models: int, **fields: str) -> Path:
    """``--output`` with clip_benchmark's placeholders ({dataset}, {model}, {pretrained}, {task}, {language})."""
    if n_models > 1 and "{model}" not in template and "{pretrained}" not in template:
        raise InputError("with several --model values, --output needs {model} or {pretrained} in the name "
                         "(one clip_benchmark file per model)")
    try:
        name = template.format(**{k: re.sub(r"[^A-Za-z0-9._-]+", "_", str(fields.get(k) or "")).strip("_")
                                  for k in OUTPUT_FIELDS})
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"--output {template!r}: only {', '.join('{' + f + '}' for f in OUTPUT_FIELDS)} "
                         f"may be filled in ({exc})") from None
    return Path(name)


def check_output_template(args: argparse.Namespace, n_models: int) -> None:
    """Fail before any model loads on an --output or --plot that cannot be written."""
    if getattr(args, "output", None):
        output_path(args.output, n_models, dataset="d", model="m", pretrained="p", task="t", language="en")
    plot = getattr(args, "plot", None)
    if plot and not Path(plot).expanduser().resolve().parent.is_dir():
        raise InputError(f"--plot {plot}: folder {Path(plot).parent} does not exist")


def add_eval_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", metavar="NAME[,PRETRAINED]",
                   help="open_clip model name, hf-hub:ORG/REPO or local-dir:PATH; repeat to compare encoders "
                        "(default: the collection's encoder)")
    p.add_argument("--pretrained", help="pretrained tag or weights file, with one --model")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--output", metavar="FILE",
                   help="write the result as clip_benchmark does (its JSON shape); FILE may hold {dataset}, "
                        "{model}, {pretrained}, {task}, {language}")
    p.add_argument("--dataset", help="data set name written in --output (clip_benchmark's, e.g. flickr30k, "
                                     "cifar10, imagenet1k; default: the file or folder name)")
    p.add_argument("--plot", metavar="PNG", help="a bar chart of each model's figures (PNG; needs matplotlib)")
    p.add_argument("--cache", metavar="DIR", help="image vector cache (default: $XDG_CACHE_HOME/photodex/eval-vectors)")
    p.add_argument("--no-cache", action="store_true", help="encode every image, keep nothing")


def cache_dir(args: argparse.Namespace) -> Path | None:
    from retrieval.evaluation.image_vectors import default_cache_dir

    return None if args.no_cache else Path(args.cache).expanduser() if args.cache else default_cache_dir()


def run_models(args: argparse.Namespace, evaluate: Callable[[Any], dict[str, Any]],
               to_clip_benchmark: Callable[[dict[str, Any]], dict[str, Any]], columns: Any, title: str,
               text: Callable[[dict[str, Any]], str]) -> int:
    """Evaluate each chosen encoder; print its report (one) or the comparison table (several)."""
    from retrieval.evaluation.clip_benchmark import write_result
    from retrieval.evaluation.compare import comparison_row, format_table, plot_comparison

    n = len(model_choices(args))
    check_output_template(args, n)
    reports, rows = [], []
    for encoder in encoders(args):
        report = evaluate(encoder)
        label = model_label(encoder.spec)
        report["label"] = label
        if args.dataset:
            report["dataset"] = args.dataset
        if args.output:
            result = to_clip_benchmark(report)
            path = output_path(args.output, n, **{k: result.get(k, "") for k in OUTPUT_FIELDS})
            write_result(path, result)
            report["output"] = str(path)
        reports.append(report)
        rows.append(comparison_row(label, report["metrics"], encoder.spec.embed_dim,
                                   report["encode"]["photos_per_second"]))
        del encoder
    if args.plot:
        plot_comparison(rows, columns, args.plot, title)
    if n == 1:
        emit(reports[0], args.json, text)
    else:
        emit({"models": reports, "table": rows}, args.json, lambda _: format_table(rows, columns))
    return 0


def _retrieval_text(r: dict[str, Any]) -> str:
    m = r["metrics"]
    ks = sorted(int(key.rsplit("@", 1)[1]) for key in m if key.startswith("image_retrieval_recall@"))
    where = f"{r['format']} split {r['split']}" if r["split"] else r["format"]
    e = r["encode"]
    speed = f" at {e['photos_per_second']} photos/s" if e["photos_per_second"] else ""
    lines = [f"{r['dataset']} ({where}): {r['images']} images, {r['captions']} captions; encoder {r['encoder']}",
             " " * 15 + "".join(f"R@{k:<7}" for k in ks),
             "text -> image  " + "".join(f"{m[f'image_retrieval_recall@{k}']:<9.4f}" for k in ks)
             + "(image_retrieval_recall@k: each caption finds its image)",
             "image -> text  " + "".join(f"{m[f'text_retrieval_recall@{k}']:<9.4f}" for k in ks)
             + "(text_retrieval_recall@k: each image finds one of its captions)",
             f"images: {e['encoded']} encoded{speed}, {e['from_cache']} from the cache"]
    if "output" in r:
        lines.append(f"wrote {r['output']}")
    return "\n".join(lines)


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from retrieval.evaluation.compare import RETRIEVAL_COLUMNS
    from retrieval.evaluation.retrieval_eval import as_clip_benchmark, evaluate_retrieval, load_task
    from ui.progress import TqdmProgress

    ks = sorted(set(args.recall_k))
    if ks[0] < 1:
        raise InputError(f"--recall-k must be at least 1, got {ks[0]}")
    model_choices(args)  # bad --model values fail before the files are read
    task = load_task(args.captions, args.images, args.split)  # fails fast, before any model loads
    settings = base_settings(args)
    cache = cache_dir(args)

    def evaluate(encoder: Any) -> dict[str, Any]:
        progress = TqdmProgress(enabled=None if not args.json else False)
        try:
            return evaluate_retrieval(encoder, task, ks=ks, cache_dir=cache, batch_size=settings.batch_size,
                                      workers=settings.workers, max_image_pixels=settings.max_image_pixels,
                                      progress=progress)
        finally:
            progress.close()

    return run_models(args, evaluate, as_clip_benchmark, RETRIEVAL_COLUMNS,
                      f"{task.captions_file.stem} retrieval recall", _retrieval_text)


def register_retrieval(ev: Subparsers) -> None:
    """``photodex eval retrieval`` (registered by :func:`ui.cli.classify.register` under ``eval``)."""
    p = ev.add_parser("retrieval", help="image<->text Recall@1/5/10 on a Karpathy split or COCO captions file",
                      parents=shared_options())
    p.add_argument("captions", help="Karpathy split JSON (dataset_flickr30k.json, dataset_coco.json) or COCO "
                                    "captions JSON (captions_val2014.json)")
    p.add_argument("--images", required=True, metavar="DIR", help="folder the file's image names are under")
    p.add_argument("--split", help="Karpathy split to evaluate (default: test)")
    p.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10], metavar="K",
                   help="the k of Recall@k (default: 1 5 10)")
    add_eval_model_args(p)
    p.set_defaults(func=cmd_eval_retrieval)


def _zeroshot_text(r: dict[str, Any]) -> str:
    zs, m, e = r["zero_shot"], r["metrics"], r["encode"]
    top5 = f"  top-5 {zs['top5']:.4f}" if m["acc5"] is not None else "  (top-5: fewer than 5 classes)"
    lines = [f"{r['images']} images, {r['classes']} classes, {r['templates']} templates ({r['template_set']}); "
             f"encoder {r['encoder']}",
             f"zero-shot top-1 {zs['top1']:.4f}{top5}  mean per-class recall {zs['mean_per_class_recall']:.4f}"
             f"  ({r['scoring']} scoring)"]
    if r["unreadable"]:
        lines.append(f"warning: {r['unreadable']} unreadable images are left out of these figures")
    if "templates_compared" in r:
        t = r["templates_compared"]
        lines.append(f"ensemble top-1 {t['ensemble_top1']:.4f} vs single templates "
                     f"{t['worst_single_top1']:.4f}..{t['best_single_top1']:.4f}")
    if "few_shot" in r:
        f = r["few_shot"]
        lines.append(f"{f['shots_per_class']}-shot: {f['few_shot_top1']:.4f} vs zero-shot {f['zero_shot_top1']:.4f} "
                     f"on {f['held_out']} held-out images (gain {f['gain']:+.4f})")
    worst = sorted(zs["per_class"].items(), key=lambda kv: kv[1])[:5]
    lines.append("weakest classes: " + ", ".join(f"{k} {v:.2f}" for k, v in worst))
    if zs["confusions"]:
        lines.append("top confusions: " + ", ".join(f"{a}->{b} ({n})" for a, b, n in zs["confusions"][:5]))
    speed = f" at {e['photos_per_second']} photos/s" if e["photos_per_second"] else ""
    lines.append(f"images: {e['encoded']} encoded{speed}, {e['from_cache']} from the cache")
    if "output" in r:
        lines.append(f"wrote {r['output']}")
    return "\n".join(lines)


def cmd_eval_zeroshot(args: argparse.Namespace) -> int:
    from retrieval.classify.eval_folder import read_image_folder
    from retrieval.classify.templates import ensure_templates
    from retrieval.evaluation.compare import ZEROSHOT_COLUMNS
    from retrieval.evaluation.zeroshot_eval import as_clip_benchmark, evaluate_zeroshot
    from ui.progress import TqdmProgress

    model_choices(args)
    read_image_folder(args.folder, args.classnames)  # bad folder, class names or templates fail before a model loads
    ensure_templates(args.templates)
    settings = base_settings(args)
    cache = cache_dir(args)

    def evaluate(encoder: Any) -> dict[str, Any]:
        progress = TqdmProgress(enabled=None if not args.json else False)
        try:
            return evaluate_zeroshot(encoder, args.folder, args.templates, shots=args.shots, seed=args.seed,
                                     classnames=args.classnames, cache_dir=cache, batch_size=settings.batch_size,
                                     workers=settings.workers, max_image_pixels=settings.max_image_pixels,
                                     progress=progress)
        finally:
            progress.close()

    return run_models(args, evaluate, as_clip_benchmark, ZEROSHOT_COLUMNS,
                      f"{Path(args.folder).name} zero-shot", _zeroshot_text)


def register_zeroshot(ev: Subparsers) -> None:
    """``photodex eval zeroshot`` (registered by :func:`ui.cli.classify.register` under ``eval``)."""
    z = ev.add_parser("zeroshot", help="zero-shot (and few-shot) top-1/top-5/mean per-class recall on an "
                                       "ImageFolder layout", parents=shared_options())
    z.add_argument("folder", help="one sub-folder of images per class")
    z.add_argument("--templates", default="photos",
                   help="template set: photodex's (photos, imagenet7, imagenet80), clip_benchmark's by data set "
                        "name (openai_imagenet, cifar10, cifar100, imagenet1k, food101, ...) or a file with one "
                        "'{}' template per line")
    z.add_argument("--classnames", metavar="NAME_OR_FILE",
                   help="class names for the sorted sub-folders: clip_benchmark's list by data set name "
                        "(imagenet1k, cifar10, ...), a file with one name per line, or JSON (a list, or "
                        "folder -> name); default: the folder names")
    z.add_argument("--shots", type=int, default=0, help="also fit a few-shot head with N labelled images per class")
    z.add_argument("--seed", type=int, default=0)
    add_eval_model_args(z)
    z.set_defaults(func=cmd_eval_zeroshot)
