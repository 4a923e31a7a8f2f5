"""``scripts/eval_real.sh`` end to end on tiny stand-ins (the tiny CLIP and VLM, world data in the real formats),
and its one-line refusal when weights or data are missing."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import env_offline
from tests.world.eval_sets import write_caption_sets
from ui.demo.world import write_imagefolder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "eval_real.sh"


def _run(env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in env_offline().items() if not k.startswith("PHOTODEX_EVAL_")}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(ROOT), PHOTODEX_WORKERS="0", PHOTODEX_DEVICE="cpu",
               XDG_CACHE_HOME=str(tmp_path / "xdg"), PHOTODEX_EVAL_WORK=str(tmp_path / "work"), **env_extra)
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)


def write_cifar_batches(folder: Path, imagefolder: Path) -> int:
    """A ``cifar-10-batches-py`` stand-in: world images (32x32) in CIFAR's pickle layout, 10 labels."""
    from PIL import Image

    classes = sorted(p.name for p in imagefolder.iterdir())[:10]
    data, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((imagefolder / name).iterdir()):
            pixels = np.asarray(Image.open(f).convert("RGB").resize((32, 32)), np.uint8)
            data.append(pixels.transpose(2, 0, 1).reshape(-1))
            labels.append(label)
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [n.encode() for n in names]}, fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.stack(data), b"labels": labels}, fh)
    return len(labels)


def write_pope_splits(folder: Path) -> Path:
    """POPE's three COCO files (JSON lines, one per split) over a few world images."""
    from tests.test_answerer_pope import write_pope_file

    pope, _ = write_pope_file(folder, n_images=3)
    by_split = defaultdict(list)
    for line in pope.read_text().splitlines():
        row = json.loads(line)
        by_split[row.pop("category")].append(row)
    for split, rows in by_split.items():
        (folder / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _main_in_process(monkeypatch, capsys, tmp_path, **env):
    """scripts/eval_real.py's main() here (the shell wrapper only picks the interpreter): one fast check."""
    import runpy

    for k in list(os.environ):
        if k.startswith("PHOTODEX_EVAL_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("PHOTODEX_EVAL_WORK", str(tmp_path / "work"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    module = runpy.run_path(str(ROOT / "scripts" / "eval_real.py"))
    rc = module["main"]()
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_missing_inputs_one_line_exit_2(monkeypatch, capsys, tmp_path):
    rc, out, err = _main_in_process(monkeypatch, capsys, tmp_path)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    for name in ("ViT-B-32 laion2b_s34b_b79k weights", "PHOTODEX_EVAL_IMAGENET", "PHOTODEX_EVAL_CIFAR10",
                 "PHOTODEX_EVAL_FLICKR30K_CAPTIONS", "PHOTODEX_EVAL_FLICKR30K_IMAGES", "VLM llava-hf/llava-1.5-7b-hf",
                 "PHOTODEX_EVAL_POPE ", "PHOTODEX_EVAL_POPE_IMAGES"):
        assert name in err, name
    rc, out, err = _main_in_process(monkeypatch, capsys, tmp_path, PHOTODEX_EVAL_ONLY="flickr30k",
                                    PHOTODEX_EVAL_MODEL=f"local-dir:{ROOT / 'tests/assets/tiny_clip'}",
                                    PHOTODEX_EVAL_FLICKR30K_IMAGES=str(tmp_path))
    assert rc == 2 and "missing 1 input: PHOTODEX_EVAL_FLICKR30K_CAPTIONS" in err
    rc, out, err = _main_in_process(monkeypatch, capsys, tmp_path, PHOTODEX_EVAL_ONLY="imagenet,nope")
    assert rc == 2 and "PHOTODEX_EVAL_ONLY names nope" in err


def test_eval_real_end_to_end_on_stand_ins(tmp_path, world_tiny_clip_dir, world_tiny_vlm_dir):
    imagefolder = tmp_path / "imagenet-standin"
    write_imagefolder(imagefolder, 1, seed=3)
    n_cifar = write_cifar_batches(tmp_path / "cifar-10-batches-py", imagefolder)
    sets = write_caption_sets(tmp_path / "flickr")
    pope = write_pope_splits(tmp_path / "pope")
    proc = _run({"PHOTODEX_EVAL_MODEL": f"local-dir:{world_tiny_clip_dir}",
                 "PHOTODEX_EVAL_IMAGENET": str(imagefolder), "PHOTODEX_EVAL_IMAGENET_CLASSNAMES": "folders",
                 "PHOTODEX_EVAL_CIFAR10": str(tmp_path / "cifar-10-batches-py"),
                 "PHOTODEX_EVAL_FLICKR30K_CAPTIONS": str(sets.karpathy),
                 "PHOTODEX_EVAL_FLICKR30K_IMAGES": str(sets.images),
                 "PHOTODEX_EVAL_VLM": str(world_tiny_vlm_dir), "PHOTODEX_EVAL_POPE": str(pope),
                 "PHOTODEX_EVAL_POPE_IMAGES": str(pope)}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line[:42].strip(): line[42:].split(None, 2) for line in proc.stdout.splitlines()[1:]
            if not line.startswith(("models:", "result files", "  "))}
    assert set(rows) == {"ImageNet-1k zero-shot top-1", "CIFAR-10 zero-shot top-1", "Flickr30k text->image R@1",
                         "Flickr30k text->image R@5", "Flickr30k image->text R@1", "Flickr30k image->text R@5",
                         "POPE F1, mean of the three COCO splits"}
    published = {k: float(v[1]) for k, v in rows.items()}
    assert published["ImageNet-1k zero-shot top-1"] == 0.6656 and published["CIFAR-10 zero-shot top-1"] == 0.9358
    assert "openclip_classification_results.csv" in rows["CIFAR-10 zero-shot top-1"][2]
    assert "arXiv 2310.03744" in rows["POPE F1, mean of the three COCO splits"][2]
    assert "another model than the published one" in rows["ImageNet-1k zero-shot top-1"][2]
    ours = {k: float(v[0]) for k, v in rows.items()}
    assert ours["ImageNet-1k zero-shot top-1"] > 0.8  # the trained tiny CLIP on its own world: plumbing is real
    assert ours["Flickr30k text->image R@5"] == 1.0
    assert all(f"POPE F1 {s}" in proc.stdout for s in ("random", "popular", "adversarial"))
    # the CIFAR-10 pickles became an ImageFolder with CIFAR's class folders, and every result file was written
    converted = tmp_path / "work" / "cifar10-test"
    assert sorted(p.name for p in converted.iterdir() if p.is_dir())[:2] == ["airplane", "automobile"]
    assert sum(1 for _ in converted.rglob("*.png")) == n_cifar
    results = sorted((tmp_path / "work" / "results").glob("*.json"))
    tasks = sorted(json.loads(p.read_text())["dataset"] for p in results)
    assert tasks == ["cifar10", "flickr30k", "imagenet1k"]
