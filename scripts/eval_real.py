"""The published comparisons, run with real weights and data: photodex's figure beside the published one.

Run through ``scripts/eval_real.sh``. Everything comes from environment variables (nothing is
downloaded; weights must already be in the Hugging Face hub cache or in local folders):

====================================  ==========================================================================
PHOTODEX_EVAL_MODEL                   open_clip model (default ``ViT-B-32``; ``local-dir:PATH`` or ``hf-hub:...``)
PHOTODEX_EVAL_PRETRAINED              its weights: a pretrained tag in the hub cache (default ``laion2b_s34b_b79k``)
                                      or a weights file; empty for a ``local-dir:`` model
PHOTODEX_EVAL_IMAGENET                ImageNet-1k validation as an ImageFolder (1000 WordNet-id folders)
PHOTODEX_EVAL_IMAGENET_CLASSNAMES     class names for its folders (default ``imagenet1k``: clip_benchmark's;
                                      ``folders``: the folder names)
PHOTODEX_EVAL_CIFAR10                 CIFAR-10 test: an ImageFolder, or the ``cifar-10-batches-py`` folder
                                      (turned into PNGs under PHOTODEX_EVAL_WORK once)
PHOTODEX_EVAL_FLICKR30K_CAPTIONS      Karpathy's ``dataset_flickr30k.json``
PHOTODEX_EVAL_FLICKR30K_IMAGES        the folder of Flickr30k's ``*.jpg``
PHOTODEX_EVAL_VLM                     LLaVA-1.5-7B: a ``save_pretrained`` folder or a hub id in the cache
                                      (default ``llava-hf/llava-1.5-7b-hf``)
PHOTODEX_EVAL_POPE                    folder with POPE's ``coco_pope_{random,popular,adversarial}.json``
PHOTODEX_EVAL_POPE_IMAGES             COCO ``val2014`` images those files name
PHOTODEX_EVAL_ONLY                    comma-separated subset of ``imagenet,cifar10,flickr30k,pope`` (default: all)
PHOTODEX_EVAL_WORK                    scratch folder (default ``$XDG_CACHE_HOME/photodex/eval-real``); result
                                      files in clip_benchmark's shape are written under it
====================================  ==========================================================================

Anything a chosen comparison needs that is not there is named in one line, and the exit code is 2,
before any model loads. The published figures and their sources are in :data:`PUBLISHED`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPARISONS = ("imagenet", "cifar10", "flickr30k", "pope")
PUBLISHED_MODEL = ("ViT-B-32", "laion2b_s34b_b79k")
PUBLISHED_VLM = "llava-hf/llava-1.5-7b-hf"
POPE_SPLITS = ("random", "popular", "adversarial")
_CLS = "open_clip docs/openclip_classification_results.csv, row ViT-B-32,laion2b_s34b_b79k, column "
_RET = "open_clip docs/openclip_retrieval_results.csv, row ViT-B-32,laion2b_s34b_b79k, column "


@dataclass(frozen=True)
class Published:
    comparison: str
    figure: str  # what the row shows
    key: str  # where ours is in the command's JSON report (see :func:`ours`)
    value: float
    source: str


PUBLISHED = (
    Published("imagenet", "ImageNet-1k zero-shot top-1", "metrics.acc1", 0.6656, _CLS + "'ImageNet 1k'"),
    Published("cifar10", "CIFAR-10 zero-shot top-1", "metrics.acc1", 0.9358, _CLS + "'CIFAR-10'"),
    Published("flickr30k", "Flickr30k text->image R@1", "metrics.image_retrieval_recall@1", 0.6678,
              _RET + "'Flickr image retr. R@1'"),
    Published("flickr30k", "Flickr30k text->image R@5", "metrics.image_retrieval_recall@5", 0.8838,
              _RET + "'Flickr image retr. R@5'"),
    Published("flickr30k", "Flickr30k image->text R@1", "metrics.text_retrieval_recall@1", 0.8410,
              _RET + "'Flickr text retr. R@1'"),
    Published("flickr30k", "Flickr30k image->text R@5", "metrics.text_retrieval_recall@5", 0.9620,
              _RET + "'Flickr text retr. R@5'"),
    Published("pope", "POPE F1, mean of the three COCO splits", "mean_f1", 0.859,
              "LLaVA-1.5 paper (Liu et al., Improved Baselines with Visual Instruction Tuning, arXiv 2310.03744), "
              "Table 4, column POPE, LLaVA-1.5 7B"),
)


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


class Refused(Exception):
    """An input that makes the run impossible: told in one line, exit code 2."""


def work_dir() -> Path:
    base = _env("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(_env("PHOTODEX_EVAL_WORK") or Path(base) / "photodex" / "eval-real")


def chosen() -> list[str]:
    only = _env("PHOTODEX_EVAL_ONLY")
    if not only:
        return list(COMPARISONS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPARISONS]
    if unknown:
        raise Refused(f"PHOTODEX_EVAL_ONLY names {', '.join(unknown)}; choose from {', '.join(COMPARISONS)}")
    return names


def _fail(message: str) -> int:
    sys.stderr.write(f"eval_real: {message}\n")
    return 2


def clip_weights_missing(model: str, pretrained: str | None) -> str | None:
    """Why the CLIP weights cannot be had offline, or None when they can (nothing is downloaded)."""
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):]).expanduser()
        return None if (folder / "open_clip_config.json").is_file() else f"{model} (no open_clip_config.json there)"
    if not pretrained:
        return None if model.startswith("hf-hub:") else f"weights for {model} (PHOTODEX_EVAL_PRETRAINED is empty)"
    if "/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth")):
        return None if Path(pretrained).expanduser().is_file() else f"weights file {pretrained}"
    try:
        from open_clip.pretrained import download_pretrained, get_pretrained_cfg

        cfg = get_pretrained_cfg(model, pretrained)
        if not cfg:
            return f"{model} {pretrained} (open_clip knows no such pretrained tag)"
        os.environ["HF_HUB_OFFLINE"] = "1"
        download_pretrained(cfg)  # offline: finds the cached file or raises
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: not in the cache
        return f"{model} {pretrained} weights (not in the hub cache: {type(exc).__name__})"


def vlm_missing(vlm: str) -> str | None:
    path = Path(vlm).expanduser()
    if path.exists():
        return None if (path / "config.json").is_file() else f"VLM folder {vlm} (no config.json)"
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(vlm, local_files_only=True)
        return None
    except Exception as exc:  # noqa: BLE001
        return f"VLM {vlm} (not in the hub cache: {type(exc).__name__}; set PHOTODEX_EVAL_VLM to its folder)"


def _need(var: str, what: str, kind: str = "dir") -> str | None:
    value = _env(var)
    ok = value is not None and (Path(value).is_dir() if kind == "dir" else Path(value).is_file())
    return None if ok else f"{var} ({what}{': ' + value + ' is not there' if value else ''})"


def missing_inputs(names: list[str], model: str, pretrained: str | None, vlm: str) -> list[str]:
    out: list[str] = []
    if set(names) & {"imagenet", "cifar10", "flickr30k"}:
        out.append(clip_weights_missing(model, pretrained))
    if "imagenet" in names:
        out.append(_need("PHOTODEX_EVAL_IMAGENET", "ImageNet-1k val as an ImageFolder"))
    if "cifar10" in names:
        out.append(_need("PHOTODEX_EVAL_CIFAR10", "CIFAR-10 test: an ImageFolder or cifar-10-batches-py"))
    if "flickr30k" in names:
        out.append(_need("PHOTODEX_EVAL_FLICKR30K_CAPTIONS", "Karpathy's dataset_flickr30k.json", "file"))
        out.append(_need("PHOTODEX_EVAL_FLICKR30K_IMAGES", "the Flickr30k image folder"))
    if "pope" in names:
        out.append(vlm_missing(vlm))
        pope = _need("PHOTODEX_EVAL_POPE", "folder of coco_pope_{random,popular,adversarial}.json")
        out.append(pope)
        if pope is None:
            out += [f"PHOTODEX_EVAL_POPE/coco_pope_{s}.json" for s in POPE_SPLITS
                    if not (Path(_env("PHOTODEX_EVAL_POPE") or "") / f"coco_pope_{s}.json").is_file()]
        out.append(_need("PHOTODEX_EVAL_POPE_IMAGES", "COCO val2014 images"))
    return [m for m in out if m]


def cifar10_folder(source: Path) -> Path:
    """An ImageFolder for CIFAR-10 test: the folder itself, or PNGs made once from ``test_batch``."""
    if not (source / "test_batch").is_file():
        return source
    target = work_dir() / "cifar10-test"
    done = target / ".complete"
    if done.is_file():
        return target
    import numpy as np
    from PIL import Image

    with open(source / "batches.meta", "rb") as fh:
        names = [n.decode() if isinstance(n, bytes) else n for n in pickle.load(fh, encoding="bytes")[b"label_names"]]
    with open(source / "test_batch", "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    data = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    for i, (pixels, label) in enumerate(zip(data, batch[b"labels"])):
        folder = target / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    done.write_text("ok\n")
    return target


def pope_file(folder: Path) -> Path:
    """POPE's three files as one, each question marked with its split: the VLM loads once, F1 comes per split."""
    target = work_dir() / "pope_all_splits.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8") as out:
        for split in POPE_SPLITS:
            text = (folder / f"coco_pope_{split}.json").read_text(encoding="utf-8")
            try:  # POPE ships JSON lines; a JSON array is read too
                rows = json.loads(text)
                rows = rows if isinstance(rows, list) else [rows]
            except json.JSONDecodeError:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            for n, row in enumerate(rows, 1):
                row = {**row, "category": split, "question_id": f"{split}-{row.get('question_id', n)}"}
                out.write(json.dumps(row) + "\n")
    return target


def photodex(*args: str) -> dict[str, Any]:
    """Run one photodex command (in this process: torch and the models' code load once) with --json.

    Its progress bars and its one-line error go to stderr as they are; a failed command ends the run
    with the command's exit code."""
    from ui.cli import main as photodex_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = photodex_main([*args, "--json"])
    if rc != 0:
        raise SystemExit(rc)
    return json.loads(out.getvalue())


def run(names: list[str], model: str, pretrained: str | None, vlm: str) -> dict[str, dict[str, Any]]:
    out_dir = work_dir() / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    clip = ["--model", f"{model},{pretrained}" if pretrained else model,
            "--output", str(out_dir / "{dataset}_{pretrained}_{model}_{language}_{task}.json")]
    reports: dict[str, dict[str, Any]] = {}
    if "imagenet" in names:
        names_arg = _env("PHOTODEX_EVAL_IMAGENET_CLASSNAMES", "imagenet1k")
        extra = [] if names_arg == "folders" else ["--classnames", names_arg]
        reports["imagenet"] = photodex("eval", "zeroshot", _env("PHOTODEX_EVAL_IMAGENET"), "--templates",
                                       "openai_imagenet", *extra, "--dataset", "imagenet1k", *clip)
    if "cifar10" in names:
        folder = cifar10_folder(Path(_env("PHOTODEX_EVAL_CIFAR10")))
        reports["cifar10"] = photodex("eval", "zeroshot", str(folder), "--templates", "cifar10", "--dataset",
                                      "cifar10", *clip)
    if "flickr30k" in names:
        reports["flickr30k"] = photodex("eval", "retrieval", _env("PHOTODEX_EVAL_FLICKR30K_CAPTIONS"), "--images",
                                        _env("PHOTODEX_EVAL_FLICKR30K_IMAGES"), "--split", "test", "--dataset",
                                        "flickr30k", *clip)
    if "pope" in names:
        report = photodex("eval", "pope", str(pope_file(Path(_env("PHOTODEX_EVAL_POPE")))), "--image-root",
                          _env("PHOTODEX_EVAL_POPE_IMAGES"), "--vlm", vlm)
        per_split = {s: report["per_category"][s] for s in POPE_SPLITS}
        reports["pope"] = {"per_split": per_split,
                           "mean_f1": sum(m["f1"] for m in per_split.values()) / len(per_split)}
    return reports


def ours(report: dict[str, Any], key: str) -> float | None:
    value: Any = report
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def table(reports: dict[str, dict[str, Any]], model: str, pretrained: str | None, vlm: str) -> str:
    same_clip = (model, pretrained) == PUBLISHED_MODEL
    lines = [f"{'figure':<42} {'ours':>8} {'published':>10}  source"]
    for p in PUBLISHED:
        if p.comparison not in reports:
            continue
        mine = ours(reports[p.comparison], p.key)
        same = (vlm == PUBLISHED_VLM or Path(vlm).name == Path(PUBLISHED_VLM).name) if p.comparison == "pope" \
            else same_clip
        note = "" if same else "  [ours is another model than the published one]"
        lines.append(f"{p.figure:<42} {'-' if mine is None else f'{mine:.4f}':>8} {p.value:>10.4f}  {p.source}{note}")
        if p.comparison == "pope":
            for split, m in reports["pope"]["per_split"].items():
                lines.append(f"  POPE F1 {split:<33} {m['f1']:>8.4f} {'':>10}  (per split: ours only)")
    who = f"CLIP {model} {pretrained or ''}".strip() + (f"; VLM {vlm}" if "pope" in reports else "")
    lines.append(f"models: {who}; published figures are for {' '.join(PUBLISHED_MODEL)} and {PUBLISHED_VLM}")
    lines.append(f"result files (clip_benchmark's shape): {work_dir() / 'results'}")
    return "\n".join(lines)


def main() -> int:
    try:
        names = chosen()
    except Refused as exc:
        return _fail(str(exc))
    model = _env("PHOTODEX_EVAL_MODEL", PUBLISHED_MODEL[0])
    pretrained = _env("PHOTODEX_EVAL_PRETRAINED", None if model.startswith(("local-dir:", "hf-hub:"))
                      else PUBLISHED_MODEL[1])
    vlm = _env("PHOTODEX_EVAL_VLM", PUBLISHED_VLM)
    missing = missing_inputs(names, model, pretrained, vlm)
    if missing:
        return _fail(f"missing {len(missing)} input{'s' if len(missing) > 1 else ''}: " + "; ".join(missing)
                     + " (see scripts/eval_real.py for each variable)")
    reports = run(names, model, pretrained, vlm)
    sys.stdout.write(table(reports, model, pretrained, vlm) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
