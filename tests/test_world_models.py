"""The synthetic world's tiny models really learned it (held-out seeds, no retraining).

Regenerate the artefacts with::

    python -m tests.world.train_clip --out tests/assets/tiny_clip
    python -m tests.world.train_vlm ...  # three stages: see tests/world/train_vlm.py's docstring
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ui.demo.world import (
    CLASSES,
    UNSAFE_CAPTION,
    UNSAFE_CONCEPT,
    class_prompt,
    generate_samples,
    write_imagefolder,
)

HELD_OUT_SEED = 777  # training used 1234 (CLIP) and 4321 (VLM)


@pytest.fixture(scope="module")
def clip_encoder(world_encoder):
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return world_encoder


@pytest.fixture(scope="module")
def held_out():
    samples = generate_samples(360, HELD_OUT_SEED)
    return samples


def test_generator_is_deterministic_and_labelled():
    a, b = generate_samples(8, 5), generate_samples(8, 5)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    many = generate_samples(400, 6)
    assert Counter(s.count for s in many).most_common(1)[0][0] == 1
    assert any(s.unsafe for s in many) and not all(s.unsafe for s in many)
    for s in many:
        assert s.image.size == (64, 64) and s.image.mode == "RGB"
        assert s.qa and all(isinstance(q, str) and isinstance(a, str) for q, a in s.qa)
        if s.unsafe:
            assert s.shape == UNSAFE_CONCEPT and "unsafe" in s.labels
        else:
            assert s.class_name in CLASSES and s.class_name in s.labels
            assert s.colour in s.caption and s.shape in s.caption


def test_world_library_layout(world_library):
    assert len(world_library) == 120
    exts = {p.suffix for p, _ in world_library}
    assert exts == {".jpg", ".png"}
    for path, _ in world_library[:5]:
        assert path.is_file() and len(path.parent.relative_to(path.parents[2]).parts) == 2


def test_imagefolder_layout(tmp_path):
    out = write_imagefolder(tmp_path, 2, seed=3)
    assert sorted(out) == sorted(CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CLASSES)


def test_tiny_clip_loads_as_local_dir_and_named_config(world_tiny_clip_dir):
    import open_clip
    import torch

    from tests.world.train_clip import WEIGHTS_NAME, register_tiny_clip_config

    a, _, pre = open_clip.create_model_and_transforms("local-dir:" + str(world_tiny_clip_dir))
    name = register_tiny_clip_config()
    b, _, _ = open_clip.create_model_and_transforms(name, pretrained=str(world_tiny_clip_dir / WEIGHTS_NAME))
    x = pre(generate_samples(1, 1)[0].image)[None]
    with torch.no_grad():
        assert torch.allclose(a.eval().encode_image(x), b.eval().encode_image(x), atol=1e-5)


def test_tiny_clip_zero_shot_accuracy(clip_encoder, held_out):
    names = list(CLASSES) + [UNSAFE_CONCEPT]
    text = clip_encoder.encode_texts([class_prompt(c) for c in CLASSES] + [UNSAFE_CAPTION])
    img = clip_encoder.encode_images([s.image for s in held_out])
    assert img.dtype == np.float32 and np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-4)
    pred = (img @ text.T).argmax(1)
    truth = np.array([names.index(s.class_name) for s in held_out])
    acc = float((pred == truth).mean())
    errors = Counter((names[t], names[p]) for t, p in zip(truth, pred) if t != p).most_common(5)
    assert acc >= 0.95, f"zero-shot accuracy {acc:.3f}; top confusions {errors}"


def test_tiny_clip_text_to_image_precision_at_10(clip_encoder, held_out):
    gallery = held_out[:240]
    img = clip_encoder.encode_images([s.image for s in gallery])
    names = list(CLASSES) + [UNSAFE_CONCEPT]
    text = clip_encoder.encode_texts([class_prompt(c) for c in CLASSES] + [UNSAFE_CAPTION])
    precisions = {}
    for name, vec in zip(names, text):
        top = np.argsort(-(img @ vec))[:10]
        precisions[name] = float(np.mean([gallery[j].class_name == name for j in top]))
    bad = {k: v for k, v in precisions.items() if v < 0.9}
    assert not bad, f"precision@10 below 0.9: {bad}"


@pytest.fixture(scope="module")
def vlm(world_tiny_vlm_dir):
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from answerer.vlm import VLM

    model = VLM(str(world_tiny_vlm_dir))
    assert model.load() is model.load()  # idempotent
    return model


def test_vlm_missing_model_has_clear_error(tmp_path):
    from answerer.vlm import VLM, VLMLoadError

    with pytest.raises(VLMLoadError, match="local"):
        VLM(str(tmp_path / "nope")).load()
    with pytest.raises(VLMLoadError, match="save_pretrained"):
        VLM(str(tmp_path)).load()  # exists but empty


VLM_MIN_EXACT = 0.70
VLM_MIN_YES_NO = 0.85


def test_tiny_vlm_answers_held_out_questions(vlm):
    samples = generate_samples(200, HELD_OUT_SEED + 1)  # ~900 held-out questions
    exact = total = yn_ok = yn_total = skull_ok = skull_total = 0
    wrong = Counter()
    for s in samples:
        for q, a in s.qa:
            got = vlm.answer([s.image], q, max_new_tokens=3)
            total += 1
            exact += got == a
            if a in ("yes", "no"):
                yn_total += 1
                yn_ok += got == a
            if "skull" in q:
                skull_total += 1
                skull_ok += got == a
            if got != a:
                wrong[" ".join(q.split()[:3])] += 1
    em, yn = exact / total, yn_ok / yn_total
    assert em >= VLM_MIN_EXACT, f"exact match {em:.3f} over {total}; errors by question kind {wrong.most_common()}"
    assert yn >= VLM_MIN_YES_NO, f"yes/no accuracy {yn:.3f} over {yn_total}"
    assert skull_ok / skull_total >= 0.95, f"'is there a skull?' accuracy {skull_ok}/{skull_total}"


def test_tiny_vlm_answers_colour_of_blue_square(vlm):
    import random

    from ui.demo.world import make_sample

    rng = random.Random(11)
    hits = sum(vlm.answer([make_sample(rng, colour="blue", shape="square", count=1).image],
                          "what colour is the object?") == "blue" for _ in range(10))
    assert hits >= 9
