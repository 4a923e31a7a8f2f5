"""Zero-shot classification, library tagging and few-shot on the synthetic world with the tiny CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.classify.eval_folder import evaluate_image_folder
from retrieval.classify.tagging import ZeroShotClassifier, classify_files, list_tags, tag_library
from retrieval.search.filters import parse_filters
from retrieval.search.searcher import Searcher, SearchOptions
from tests.helpers import cli
from ui.demo.world import CLASSES, write_imagefolder

WORLD_TEMPLATES = ["a photo of a {}", "a photo of one {}", "a picture of a {}", "{}"]


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    write_imagefolder(root, 12, seed=4242)
    return root


@pytest.fixture(scope="module")
def encoder(world_encoder):
    return world_encoder


def test_zero_shot_accuracy_on_held_out_images(heldout, encoder, tmp_path):
    clf = ZeroShotClassifier(encoder, list(CLASSES), ["a photo of a {}"], cache_dir=tmp_path / "zs")
    paths = sorted(str(p) for p in heldout.rglob("*.png"))
    results = classify_files(clf, paths, k=1)
    correct = [r.labels[0][0] == r.source.split("/")[-2] for r in results]
    assert np.mean(correct) >= 0.95, np.mean(correct)
    full = classify_files(clf, paths[:8], k=len(CLASSES))  # every label: a distribution over the list
    for r in full:
        assert len(r.labels) == len(CLASSES) and sum(p for _, p in r.labels) == pytest.approx(1.0, abs=1e-4)
        assert r.labels[0][1] > 1 / len(CLASSES)  # the top label beats a uniform guess
    assert list((tmp_path / "zs").rglob("*.npy"))  # weights cached on disk, keyed by encoder + labels


def test_eval_ensemble_and_few_shot(heldout, encoder, tmp_path):
    tmpl = tmp_path / "world_templates.txt"
    tmpl.write_text("\n".join(WORLD_TEMPLATES))
    report = evaluate_image_folder(encoder, heldout, str(tmpl), shots=4)
    assert report["zero_shot"]["top1"] >= 0.9
    cmp = report["templates_compared"]
    assert cmp["ensemble_top1"] >= (cmp["worst_single_top1"] + cmp["best_single_top1"]) / 2, cmp  # beats the average prompt
    fs = report["few_shot"]
    assert fs["few_shot_top1"] >= fs["zero_shot_top1"] - 0.02, fs  # not worse on the held-out split
    assert report["zero_shot"]["per_class"] and set(report["zero_shot"]["per_class"]) <= set(CLASSES)


def test_library_tags_stored_replaced_and_filterable(tmp_path, world):
    n = len(world.truth)
    coll = world.private_copy(tmp_path / "coll")  # tagging writes
    clf = ZeroShotClassifier(world.encoder, list(CLASSES), ["a photo of a {}"])
    result = tag_library(coll, clf, "world", k=1)
    assert result["photos"] == n and result["tags"] == n
    rows = list_tags(coll, "world")
    assert sum(r["photos"] for r in rows) == n
    s = Searcher(coll, world.encoder)
    hits = s.search_text("a photo of a green triangle", SearchOptions(k=50, collapse=None,
                                                                     filters=parse_filters(["tag=green triangle"])))
    assert hits and all("green triangle" in h.tags for h in hits)
    truth = [world.sample_of(h.paths).class_name for h in hits]
    assert np.mean([t == "green triangle" for t in truth]) >= 0.9
    # a new taxonomy run replaces the old one's tags cleanly
    colours = ZeroShotClassifier(world.encoder, ["red", "green", "blue", "yellow"], ["a photo of a {} object"])
    tag_library(coll, colours, "world", k=1)
    labels = {r["label"] for r in list_tags(coll, "world")}
    assert labels <= {"red", "green", "blue", "yellow"}
    coll.close()


def test_cli_classify_and_bad_label_input(heldout, world_tiny_clip_dir, tmp_path):
    model = f"local-dir:{world_tiny_clip_dir}"
    img = sorted(heldout.rglob("*.png"))[0]
    ok = cli("classify", "--model", model, "--labels", ",".join(CLASSES), "--templates", "imagenet7", str(img),
              "--json", "-k", "2")
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert len(out[0]["labels"]) == 2 and out[0]["labels"][0]["score"] >= out[0]["labels"][1]["score"]
    bad_tmpl = tmp_path / "t.txt"
    bad_tmpl.write_text("a photo of a cat\n")
    cases = [
        (["--labels", " , "], "empty"),
        (["--labels", "dog,Dog"], "duplicate"),
        (["--labels", "dog,cat", "--templates", "no-such-set"], "unknown"),
        (["--labels", "dog,cat", "--templates", str(bad_tmpl)], "{}"),
    ]
    for extra, needle in cases:
        r = cli("classify", "--model", model, *extra, str(img), check_rc=None)
        assert r.returncode == 2 and needle in r.stderr.lower() and "Traceback" not in r.stderr, (extra, r.stderr)


def test_cli_multi_label_with_per_label_thresholds(heldout, world_tiny_clip_dir, tmp_path):
    model = f"local-dir:{world_tiny_clip_dir}"
    img = sorted((heldout / "red circle").glob("*.png"))[0]
    th = tmp_path / "th.tsv"
    th.write_text("red circle\t0.5\nblue square\t0.99\n")
    r = cli("classify", "--model", model, "--labels", "red circle,blue square", "--multi-label",
            "--thresholds-file", str(th), str(img), "--json")
    assert r.returncode == 0, r.stderr
    labels = [x["label"] for x in json.loads(r.stdout)[0]["labels"]]
    assert labels == ["red circle"]
    th.write_text("red circle\t0.5\n")
    r = cli("classify", "--model", model, "--labels", "red circle,blue square", "--multi-label",
            "--thresholds-file", str(th), str(img), check_rc=None)
    assert r.returncode == 2 and "no threshold for blue square" in r.stderr
