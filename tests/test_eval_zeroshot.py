"""``photodex eval zeroshot`` as clip_benchmark reports it (mean per-class recall, its template sets and class
names, its JSON shape), and several encoders compared in one table with a bar chart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexer.core.errors import InputError
from retrieval.classify.class_names import load_class_names
from retrieval.classify.metrics import evaluate_scores
from retrieval.classify.templates import load_templates
from retrieval.evaluation.compare import disk_per_million
from tests.world.eval_sets import write_caption_sets
from ui.demo.world import CLASSES, write_imagefolder
from ui.cli import main


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    monkeypatch.setenv("PHOTODEX_WORKERS", "0")
    monkeypatch.setenv("PHOTODEX_DEVICE", "cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    write_imagefolder(root, 2, seed=11)
    return root


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _clip_benchmark_data(name):
    cb = pytest.importorskip("clip_benchmark")
    return json.loads((Path(cb.__file__).parent / "datasets" / name).read_text())


def test_mean_per_class_recall_hand_computed():
    # 4 score columns; labels use classes 0, 1, 2 only (class 3 never occurs and does not count)
    scores = np.array([[9, 1, 0, 0], [9, 1, 0, 0], [0, 9, 0, 0],  # class 0: 2 of 3 right
                       [9, 0, 1, 0],  # class 1: 0 of 1 right
                       [0, 0, 9, 1], [1, 0, 9, 0]], float)  # class 2: 2 of 2 right
    r = evaluate_scores(scores, np.array([0, 0, 0, 1, 2, 2]))
    assert r.top1 == pytest.approx(4 / 6)
    assert r.mean_per_class_recall == pytest.approx((2 / 3 + 0 + 1) / 3)  # balanced accuracy, not top-1
    assert r.per_class == {0: pytest.approx(2 / 3), 1: 0.0, 2: 1.0}


def test_clip_benchmark_template_sets_and_class_names_by_name():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert load_templates("openai_imagenet") == tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    theirs = _clip_benchmark_data("en_zeroshot_classification_templates.json")
    for name in ("cifar10", "cifar100", "imagenet1k", "food101", "sun397"):
        assert load_templates(name) == tuple(t.replace("{c}", "{}") for t in theirs[name])
    names = _clip_benchmark_data("en_classnames.json")
    folders = [f"n{i:08d}" for i in range(1000)]
    assert load_class_names("imagenet1k", folders) == names["imagenet1k"]
    assert load_class_names("cifar10", [str(i) for i in range(10)])[:3] == ["airplane", "automobile", "bird"]


def test_class_name_files(tmp_path):
    folders = ["a_1", "b_2", "c_3"]
    (tmp_path / "n.txt").write_text("# names\nred thing\n\ngreen thing\nblue thing\n")
    assert load_class_names(str(tmp_path / "n.txt"), folders) == ["red thing", "green thing", "blue thing"]
    (tmp_path / "n.json").write_text(json.dumps({"b_2": "bee", "a_1": "ay", "c_3": "sea"}))
    assert load_class_names(str(tmp_path / "n.json"), folders) == ["ay", "bee", "sea"]
    with pytest.raises(InputError, match="2 class names for 3 class folders"):
        (tmp_path / "short.json").write_text(json.dumps(["x", "y"]))
        load_class_names(str(tmp_path / "short.json"), folders)
    with pytest.raises(InputError, match="names no class for folder 'c_3'"):
        (tmp_path / "d.json").write_text(json.dumps({"a_1": "x", "b_2": "y"}))
        load_class_names(str(tmp_path / "d.json"), folders)
    with pytest.raises(InputError, match="neither a built-in list"):
        load_class_names("no_such_list", folders)


def test_cli_zeroshot_clip_benchmark_output(capsys, tmp_path, folder, world_tiny_clip_dir):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"{c} shape" for c in sorted(CLASSES)))  # one per sorted sub-folder
    out_file = tmp_path / "{dataset}_{task}.json"
    rc, out, err = run(capsys, "eval", "zeroshot", str(folder), "--model", f"local-dir:{world_tiny_clip_dir}",
                       "--templates", "cifar10", "--classnames", str(names), "--dataset", "world12",
                       "--output", str(out_file), "--json", "--cache", str(tmp_path / "cache"))
    assert rc == 0, err
    report = json.loads(out)
    zs = report["zero_shot"]
    assert report["metrics"] == {"acc1": zs["top1"], "acc5": zs["top5"],
                                 "mean_per_class_recall": zs["mean_per_class_recall"]}
    assert report["templates"] == 18 and report["template_set"] == "cifar10"
    assert set(zs["per_class"]) == {f"{c} shape" for c in CLASSES}  # the file's names were used
    data = json.loads((tmp_path / "world12_zeroshot_classification.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert list(data)[:6] == ["dataset", "model", "pretrained", "task", "metrics", "language"]
    assert data["dataset"] == "world12" and data["task"] == "zeroshot_classification"
    assert data["metrics"] == report["metrics"]
    assert report["encode"]["encoded"] == 2 * len(CLASSES)


def test_cli_zeroshot_fewer_than_five_classes_has_no_top5(capsys, tmp_path, folder, world_tiny_clip_dir):
    small = tmp_path / "three"
    for c in sorted(CLASSES)[:3]:
        (small / c).mkdir(parents=True)
        for f in (folder / c).iterdir():
            (small / c / f.name).write_bytes(f.read_bytes())
    rc, out, err = run(capsys, "eval", "zeroshot", str(small), "--model", f"local-dir:{world_tiny_clip_dir}",
                       "--output", str(tmp_path / "o.json"), "--no-cache")
    assert rc == 0, err
    assert json.loads((tmp_path / "o.json").read_text())["metrics"]["acc5"] is None  # clip_benchmark: NaN
    assert "fewer than 5 classes" in out


def test_cli_zeroshot_bad_input_before_any_model(capsys, tmp_path, folder):
    for argv, expect in [(["--templates", "nope"], "unknown template set 'nope'"),
                         (["--classnames", "imagenet1k"], "1000 class names for 12 class folders"),
                         (["--model", "a", "--model", "b", "--output", str(tmp_path / "x.json")], "{model}")]:
        rc, out, err = run(capsys, "eval", "zeroshot", str(folder), *argv)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and expect in err, err


def test_two_models_one_table_and_plot(capsys, tmp_path, folder, world_tiny_clip_dir, tiny_clip):
    models = ["--model", f"local-dir:{world_tiny_clip_dir}", "--model", f"local-dir:{tiny_clip[0]}"]
    plot = tmp_path / "zs.png"
    rc, out, err = run(capsys, "eval", "zeroshot", str(folder), *models, "--plot", str(plot), "--no-cache")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["model", "top-1", "top-5"]
    trained, random_ = (line.split() for line in lines[1:3])
    assert trained[0] == world_tiny_clip_dir.name and random_[0] == tiny_clip[0].name
    assert float(trained[1]) > float(random_[1])  # the trained tiny CLIP beats a random one
    assert (trained[5], random_[5]) == ("64", "32")  # embedding sizes
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # retrieval: the same table with both directions, as JSON
    sets = write_caption_sets(tmp_path / "sets")
    rc, out, err = run(capsys, "eval", "retrieval", str(sets.karpathy), "--images", str(sets.images), *models,
                       "--json", "--plot", str(tmp_path / "r.png"), "--cache", str(tmp_path / "c"))
    assert rc == 0, err
    data = json.loads(out)
    assert [r["embed_dim"] for r in data["table"]] == [64, 32]
    assert [r["disk_per_1m_photos_bytes"] for r in data["table"]] == [disk_per_million(64), disk_per_million(32)]
    assert all(r["photos_per_second"] > 0 for r in data["table"])
    assert data["table"][0]["metrics"] == data["models"][0]["metrics"]
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_disk_per_million_follows_the_index_choice():
    from retrieval.index.choice import choose_index_spec, estimate_memory_bytes

    spec = choose_index_spec(1_000_000, 512)
    assert disk_per_million(512) == 1_000_000 * 512 * 2 + estimate_memory_bytes(spec, 1_000_000, 512)
    assert disk_per_million(768) > disk_per_million(512)
