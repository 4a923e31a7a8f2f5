"""POPE evaluation with the tiny VLM on a POPE file generated from the synthetic world."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from answerer.pope import evaluate_pope, pope_metrics, read_pope, resolve_images, yes_no
from answerer.vlm import VLM
from indexer.core.errors import InputError
from ui.demo.world import CLASSES, COLOURS, SHAPES, UNSAFE_CONCEPT, write_library

SPLITS = ("random", "popular", "adversarial")


def _negatives(split: str, present: str, popular: list[str], rng: random.Random) -> str:
    """POPE's three negative samplings over the world's classes (never the class shown)."""
    others = [c for c in (*CLASSES, UNSAFE_CONCEPT) if c != present]
    if split == "random":
        return rng.choice(others)
    if split == "popular":  # the library's most frequent classes
        return next(c for c in popular if c != present)
    # adversarial: the class most easily confused with the one shown (same colour or same shape)
    if present == UNSAFE_CONCEPT:
        return rng.choice(CLASSES)
    colour, shape = present.split()
    near = [f"{colour} {s}" for s in SHAPES if s != shape] + [f"{c} {shape}" for c in COLOURS if c != colour]
    return rng.choice(near)


def write_pope_file(root: Path, n_images: int = 16, seed: int = 77) -> tuple[Path, int]:
    """One image folder and a POPE JSON-lines file: per image and split, one yes and one no question."""
    library = write_library(root / "images", n_images, seed, unsafe_rate=0.1)
    popular = [c for c, _ in Counter(s.class_name for _, s in library).most_common()]
    rng = random.Random(seed)
    rows, qid = [], 0
    for path, sample in library:
        rel = str(path.relative_to(root))
        for split in SPLITS:
            for obj, label in ((sample.class_name, "yes"), (_negatives(split, sample.class_name, popular, rng), "no")):
                qid += 1
                rows.append({"question_id": qid, "image": rel, "text": f"is there a {obj}?", "label": label,
                             "category": split})
    pope = root / "pope.jsonl"
    pope.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return pope, len(rows)


@pytest.fixture(scope="module")
def pope_file(tmp_path_factory) -> tuple[Path, int]:
    return write_pope_file(tmp_path_factory.mktemp("pope"))


def _by_hand(answers: list[dict]) -> dict:
    """Metrics recomputed from the per-question answers without the module's helpers."""
    yes = [a["answer"].strip().lower().startswith("yes") for a in answers]
    truth = [a["label"] == "yes" for a in answers]
    tp = sum(y and t for y, t in zip(yes, truth))
    fp = sum(y and not t for y, t in zip(yes, truth))
    fn = sum(not y and t for y, t in zip(yes, truth))
    tn = len(yes) - tp - fp - fn
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {"accuracy": (tp + tn) / len(yes), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall), "yes_ratio": (tp + fp) / len(yes)}


def test_pope_metrics_equal_those_computed_by_hand(vlm, pope_file):
    path, n = pope_file
    items = read_pope(path)
    assert len(items) == n and {i.category for i in items} == set(SPLITS)
    images = resolve_images(items, base=path.parent)
    report = evaluate_pope(vlm, items, images, batch_size=16)
    answers = [a.to_dict() for a in report.answers]
    assert len(answers) == n and [a["question_id"] for a in answers] == [i.question_id for i in items]
    assert all(a["answer"] in ("yes", "no") for a in answers)  # the tiny model answers in one word
    assert all(a["prediction"] == a["answer"] for a in answers)
    hand = _by_hand(answers)
    for key, value in hand.items():
        assert report.metrics[key] == pytest.approx(value), key
    assert report.metrics["n"] == n and 0 < report.metrics["yes_ratio"] < 1
    for split in SPLITS:
        part = [a for a in answers if a["category"] == split]
        for key, value in _by_hand(part).items():
            assert report.per_category[split][key] == pytest.approx(value), (split, key)
    assert report.metrics["accuracy"] >= 0.7  # the model answers, not noise
    # batching does not change the answers
    one = evaluate_pope(vlm, items[:10], images, batch_size=1)
    assert [a.answer for a in one.answers] == [a["answer"] for a in answers[:10]]


def test_cli_eval_pope_json_and_text(vlm, pope_file, world_tiny_vlm_dir, capsys):
    from ui.cli.app import main

    path, n = pope_file
    common = ["--vlm", str(world_tiny_vlm_dir), "--device", "cpu"]
    rc = main(["eval", "pope", str(path), "--json", "--answers", "--batch-size", "32", *common])
    out = capsys.readouterr()
    assert rc == 0, out.err
    data = json.loads(out.out)
    assert len(data["answers"]) == n and set(data["per_category"]) == set(SPLITS)
    for key, value in _by_hand(data["answers"]).items():
        assert data["metrics"][key] == pytest.approx(value)
    small = path.parent / "small.jsonl"  # the text output on a few questions: the model is the same
    small.write_text("".join(path.read_text().splitlines(keepends=True)[:6]))
    rc = main(["eval", "pope", str(small), *common])
    text = capsys.readouterr().out
    assert rc == 0 and text.startswith("all") and "yes-ratio" in text and "adversarial" in text


def test_yes_no_mapping_and_metrics_edge_cases():
    assert [yes_no(a) for a in ("yes", "Yes, there is.", "no", "No.", "There is not.", "there isn't one",
                                "I see a cat. No dog.", "")] == ["yes", "yes", "no", "no", "no", "no", "yes", "yes"]
    m = pope_metrics(["yes", "yes", "no", "no"], ["yes", "no", "yes", "no"])
    assert m == {"n": 4, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5,
                 "tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert pope_metrics(["no"], ["no"])["precision"] == 0.0  # no yes predictions: 0, not a crash


def test_images_by_photo_id_and_root(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"x")
    f = tmp_path / "p.jsonl"
    f.write_text('{"image": "a.png", "text": "is there a red circle?", "label": "yes"}\n'
                 '{"image": 7, "text": "is there a red circle?", "label": "no"}\n'
                 '{"image": "#8", "text": "is there a skull?", "label": "No"}\n')
    items = read_pope(f)
    assert [i.image for i in items] == ["a.png", 7, "#8"] and items[2].label == "no"
    found = resolve_images(items, tmp_path / "imgs", lambda ids: {i: f"/lib/{i}.jpg" for i in ids if i != 9})
    assert found == {"a.png": str(tmp_path / "imgs" / "a.png"), 7: "/lib/7.jpg", "#8": "/lib/8.jpg"}
    with pytest.raises(InputError, match="give a collection"):
        resolve_images(items, tmp_path / "imgs")
    f.write_text('{"image": 9, "text": "is there a skull?", "label": "no"}\n')
    with pytest.raises(InputError, match="line 1: photo id 9 is not in the collection"):
        resolve_images(read_pope(f), tmp_path, lambda ids: {})


BAD_FILES = [
    ("", "no questions"),
    ('{"image": "a.png", "text": "is there a skull?"}\n', "missing field(s) label"),
    ('{"image": "a.png", "text": "is there a skull?", "label": "maybe"}\n', "'label' must be"),
    ('{"image": "a.png", "text": "  ", "label": "yes"}\n', "'text' must be"),
    ('{"image": "a.png", "text": "is there a skull?", "label": "yes"}\nnot json\n', ":2: not valid JSON"),
    ('["a.png"]', "expected a JSON object"),
    ('{"image": null, "text": "is there a skull?", "label": "yes"}\n', "'image' must be"),
    ('{"image": "missing.png", "text": "is there a skull?", "label": "yes"}\n', "line 1: image not found"),
]


@pytest.mark.parametrize(("content", "message"), BAD_FILES)
def test_bad_pope_files_are_input_errors_with_exit_2(tmp_path, capsys, content, message, monkeypatch):
    from ui.cli.app import main

    f = tmp_path / "pope.jsonl"
    f.write_text(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_images(read_pope(f), base=tmp_path)
    monkeypatch.setattr(VLM, "load", lambda self: pytest.fail("the model loaded before the file was checked"))
    rc = main(["eval", "pope", str(f), "--vlm", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err


def test_missing_file_and_bad_batch_size(tmp_path, capsys):
    from ui.cli.app import main

    rc = main(["eval", "pope", str(tmp_path / "nope.jsonl")])
    assert rc == 2 and "POPE file not found" in capsys.readouterr().err
    rc = main(["eval", "pope", str(tmp_path / "nope.jsonl"), "--batch-size", "0"])
    assert rc == 2 and "--batch-size" in capsys.readouterr().err
