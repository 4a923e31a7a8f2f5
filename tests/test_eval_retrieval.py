"""``photodex eval retrieval``: Recall@K equal to clip_benchmark's own function, both caption formats, the
index's encode path, the resumable cache, the clip_benchmark JSON shape, and every bad-input rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from indexer.core.errors import InputError
from retrieval.evaluation.captions import read_captions, resolve_images
from retrieval.evaluation.image_vectors import encode_image_files
from retrieval.evaluation.recall import retrieval_recall
from tests.world.eval_sets import write_caption_sets
from ui.cli import main

zeroshot_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_caption_sets(tmp_path_factory.mktemp("caption_sets"))


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    monkeypatch.setenv("PHOTODEX_WORKERS", "0")
    monkeypatch.setenv("PHOTODEX_DEVICE", "cpu")


def clip_benchmark_recall(image_vectors, caption_vectors, caption_image, ks=(1, 5, 10), batch=8):
    """clip_benchmark's ``zeroshot_retrieval.evaluate`` on given embeddings: a model that looks them up."""
    images = torch.from_numpy(np.asarray(image_vectors, np.float32))
    texts = torch.from_numpy(np.asarray(caption_vectors, np.float32))
    owner = np.asarray(caption_image)

    class Lookup:
        def encode_image(self, idx):
            return images[idx]

        def encode_text(self, idx):
            return texts[idx]

    def tokenizer(names):
        return torch.tensor([int(n) for n in names])

    loader = []
    for s in range(0, len(images), batch):
        idx = list(range(s, min(s + batch, len(images))))
        loader.append((torch.tensor(idx), [[str(j) for j in np.flatnonzero(owner == i)] for i in idx]))
    return zeroshot_retrieval.evaluate(Lookup(), loader, tokenizer, "cpu", amp=False, recall_k_list=list(ks))


def normalised(x):
    return torch.nn.functional.normalize(torch.from_numpy(x), dim=-1).numpy()


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------ the figures


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_equals_clip_benchmark_on_random_embeddings(seed):
    rng = np.random.default_rng(seed)
    n, d = 53, 12
    per_image = rng.integers(1, 7, n)  # uneven caption counts, as COCO has
    owner = np.repeat(np.arange(n), per_image)
    rng.shuffle(owner)  # captions in any order
    img = rng.standard_normal((n, d)).astype(np.float32)
    cap = (img[owner] * 0.4 + rng.standard_normal((len(owner), d))).astype(np.float32)
    # clip_benchmark normalises again; give both sides the same unit vectors
    img, cap = normalised(normalised(img)), normalised(normalised(cap))
    ks = (1, 2, 5, 10, 50)
    ours = retrieval_recall(img, cap, owner, ks).metrics()
    theirs = clip_benchmark_recall(img, cap, owner, ks)
    assert ours == theirs  # exactly, float32 rounding included
    assert list(ours) == list(theirs)
    assert 0 < ours["image_retrieval_recall@1"] < ours["image_retrieval_recall@10"] < 1


def test_recall_counts_hand_example():
    # 3 images, 4 captions; caption 3 belongs to image 2 but points at image 0
    img = np.eye(3, dtype=np.float32)
    cap = normalised(np.array([[1, .1, 0], [0, 1, .2], [0, .1, 1], [1, 0, .5]], np.float32))
    r = retrieval_recall(img, cap, np.array([0, 1, 2, 2]), ks=(1, 2))
    assert r.image_hits == {1: 3, 2: 4}  # caption 3 finds image 2 only second
    assert r.text_hits == {1: 3, 2: 3}  # image 2's best caption (2) is its top one
    assert r.metrics()["image_retrieval_recall@1"] == pytest.approx(0.75)


def test_cli_figures_equal_clip_benchmark_in_both_formats(capsys, tmp_path, sets, world_tiny_clip_dir,
                                                         world_encoder):
    common = ["--images", str(sets.images), "--json", "--model", f"local-dir:{world_tiny_clip_dir}",
              "--cache", str(tmp_path / "cache")]
    rc, out, err = run(capsys, "eval", "retrieval", str(sets.karpathy), *common)
    assert rc == 0, err
    karpathy = json.loads(out)
    target = tmp_path / "{dataset}_{task}.json"
    rc, out, err = run(capsys, "eval", "retrieval", str(sets.coco), *common, "--output", str(target))
    assert rc == 0, err
    coco = json.loads(out)
    for report, fmt in ((karpathy, "karpathy"), (coco, "coco")):
        assert (report["format"], report["images"], report["captions"]) == (fmt, sets.n_test, 87)
    assert (karpathy["encode"]["encoded"], coco["encode"]["from_cache"]) == (sets.n_test, sets.n_test)
    # the same embeddings, computed apart from the command, through clip_benchmark's own function
    cs = read_captions(sets.karpathy)
    vecs = encode_image_files(world_encoder, resolve_images(cs, sets.images)).vectors
    texts = world_encoder.encode_texts(cs.captions)
    theirs = clip_benchmark_recall(normalised(vecs), normalised(texts), cs.caption_image)
    assert karpathy["metrics"] == coco["metrics"] == theirs
    assert karpathy["metrics"]["image_retrieval_recall@1"] < 1.0  # a figure that can move
    # --output: clip_benchmark's result file
    data = json.loads((tmp_path / "captions_world_test_zeroshot_retrieval.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert list(data)[:6] == ["dataset", "model", "pretrained", "task", "metrics", "language"]
    assert data["task"] == "zeroshot_retrieval" and data["language"] == "en"
    assert list(data["metrics"]) == [f"{d}_retrieval_recall@{k}" for k in (1, 5, 10) for d in ("image", "text")]
    assert data["metrics"] == theirs


def test_text_report(capsys, tmp_path, sets, world_tiny_clip_dir):
    rc, out, err = run(capsys, "eval", "retrieval", str(sets.karpathy), "--images", str(sets.images),
                       "--model", f"local-dir:{world_tiny_clip_dir}", "--cache", str(tmp_path / "c"),
                       "--recall-k", "1", "3")
    assert rc == 0, err
    assert "text -> image" in out and "image -> text" in out and "R@3" in out and "R@5" not in out


def test_images_encoded_as_index_stores_them(tmp_path, sets, world_encoder):
    """The eval vectors are the ones an index run keeps for the same files (float16 in the catalog)."""
    from indexer.collection import Collection
    from indexer.run import RunOptions, index_paths

    with Collection.open_for_encoder(tmp_path / "coll", world_encoder.spec) as coll:
        index_paths(coll, world_encoder, [sets.images / "val2014"], RunOptions(workers=0, batch_size=8))
        _, stored = coll.load_vectors()
    files = resolve_images(read_captions(sets.karpathy), sets.images)
    vecs = encode_image_files(world_encoder, files).vectors
    # every eval vector has a stored twin within float16 rounding, and they pair one to one
    sims = vecs @ stored.T
    assert np.all(sims.max(axis=1) > 1 - 1e-3)
    assert len(set(sims.argmax(axis=1).tolist())) == len(files) == len(stored)


# ------------------------------------------------------------------ cache and output


def test_cache_resumes_after_a_stopped_run_and_notices_changed_files(tmp_path, sets, world_encoder, monkeypatch):
    cs = read_captions(sets.karpathy)
    files = resolve_images(cs, sets.images)[:12]
    cache = tmp_path / "cache"
    calls = {"n": 0}
    real = world_encoder.encode_images

    def stop_on_third(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(world_encoder, "encode_images", stop_on_third)
    with pytest.raises(KeyboardInterrupt):
        encode_image_files(world_encoder, files, cache_dir=cache, batch_size=4)
    monkeypatch.setattr(world_encoder, "encode_images", real)
    resumed = encode_image_files(world_encoder, files, cache_dir=cache, batch_size=4)
    assert (resumed.from_cache, resumed.encoded) == (8, len(files) - 8)  # two whole batches were kept
    fresh = encode_image_files(world_encoder, files, batch_size=4)
    np.testing.assert_array_equal(resumed.vectors, fresh.vectors)
    again = encode_image_files(world_encoder, files, cache_dir=cache)
    assert (again.from_cache, again.encoded) == (len(files), 0)
    changed = tmp_path / "changed" / "val2014"
    changed.mkdir(parents=True)
    from PIL import Image

    Image.open(files[0]).rotate(90).save(changed / files[0].name)
    files2 = [changed / files[0].name, *files[1:]]
    third = encode_image_files(world_encoder, files2, cache_dir=cache)
    assert (third.from_cache, third.encoded) == (len(files) - 1, 1)


# ------------------------------------------------------------------ bad input


def _karpathy(tmp_path, entries, name="bad.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"images": entries}))
    return p


def _entry(name, split="test", caps=("a red circle",)):
    return {"filename": name, "split": split, "sentences": [{"raw": c} for c in caps]}


def _bad(capsys, path, images, *extra):
    rc, out, err = run(capsys, "eval", "retrieval", str(path), "--images", str(images), "--model",
                       "no-such-model-is-loaded", *extra)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_inputs_each_one_line_exit_2_before_any_model(capsys, tmp_path, sets):
    img = sets.images
    # neither format
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"annotations_only": []}))
    assert "neither caption format" in _bad(capsys, p, img)
    p.write_text("not json {")
    assert "is not JSON" in _bad(capsys, p, img)
    # missing image, named, with the count of the others
    p = _karpathy(tmp_path, [_entry("world_0020.jpg"), _entry("gone1.jpg"), _entry("gone2.jpg"), _entry("gone3.jpg")])
    err = _bad(capsys, p, img)
    assert "images[1] 'gone1.jpg' is not under" in err and "(and 2 others like it)" in err
    # absent split lists the splits present
    p = _karpathy(tmp_path, [_entry("world_0020.jpg", "train"), _entry("world_0021.jpg", "val")])
    err = _bad(capsys, p, img)
    assert "no images in split 'test'" in err and "train (1), val (1)" in err
    err = _bad(capsys, p, img, "--split", "restval")
    assert "split 'restval'" in err
    # empty file
    p = _karpathy(tmp_path, [])
    assert "lists no images" in _bad(capsys, p, img)
    # an image with no caption
    p = _karpathy(tmp_path, [_entry("world_0020.jpg"), _entry("world_0021.jpg", caps=()),
                             _entry("world_0022.jpg", caps=("  ",))])
    err = _bad(capsys, p, img)
    assert "images[1] ('world_0021.jpg') has no caption" in err and "(and 1 other like it)" in err
    # COCO: an image with no caption, a caption of an unknown image
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "world_0020.jpg"},
                                           {"id": 2, "file_name": "world_0021.jpg"}],
                                "annotations": [{"image_id": 1, "caption": "a red circle"}]}))
    assert "images[1] ('world_0021.jpg', id 2) has no caption" in _bad(capsys, coco, img)
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "world_0020.jpg"}],
                                "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 9, "caption": "b"}]}))
    assert "annotations[1] is a caption of image id 9" in _bad(capsys, coco, img)
    assert "has no splits" in _bad(capsys, coco, img, "--split", "test")
    # a name that leaves the images folder
    p = _karpathy(tmp_path, [_entry("../dataset_world.json")])
    assert "outside the images folder" in _bad(capsys, p, img)
    # several models with one --pretrained
    err = _bad(capsys, sets.karpathy, img, "--model", "b", "--pretrained", "x")
    assert "NAME,PRETRAINED" in err


def test_undecodable_image_is_named_and_the_rest_cached(capsys, tmp_path, sets, world_tiny_clip_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = sorted((sets.images / "val2014").glob("*.jpg"))[:3]
    for g in good:
        (folder / g.name).write_bytes(g.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    p = _karpathy(tmp_path, [_entry(g.name) for g in good] + [_entry("broken.jpg")])
    common = ["--images", str(folder), "--model", f"local-dir:{world_tiny_clip_dir}", "--cache", str(tmp_path / "c")]
    rc, out, err = run(capsys, "eval", "retrieval", str(p), *common)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "images[3]" in err and "broken.jpg" in err and "cannot decode" in err
    (folder / "broken.jpg").write_bytes(good[0].read_bytes())
    rc, out, err = run(capsys, "eval", "retrieval", str(p), *common, "--json")
    assert rc == 0, err
    assert json.loads(out)["encode"] == {**json.loads(out)["encode"], "from_cache": 3, "encoded": 1}


def test_read_captions_unit_errors(tmp_path):
    with pytest.raises(InputError, match="cannot read caption file"):
        read_captions(tmp_path / "nope.json")
