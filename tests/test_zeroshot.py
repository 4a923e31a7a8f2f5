"""Tests for prompt templates, zero-shot weights, caching, scoring and evaluation.

The open_clip reference test uses a tiny randomly initialised CLIP (registered
in-process, no weights downloaded). Accuracy tests use synthetic data, see
:func:`synthetic_task`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from retrieval.classify.templates import (
    TemplateError,
    ensure_templates,
    list_template_sets,
    load_templates,
    validate_template,
)
from retrieval.classify.cache import ZeroShotCache
from retrieval.classify.labels import expand_prompts, validate_classnames
from retrieval.classify.scoring import classify_vectors, cosine_scores, multi_label, zero_shot_probs
from retrieval.classify.weights import build_zero_shot_weights, classifier_key, encode_prompt_embeddings
from retrieval.scoring import l2_normalize as normalize_rows
from retrieval.scoring import softmax, top_k
from retrieval.classify.metrics import (
    compare_templates,
    evaluate_scores,
    evaluate_zero_shot,
)

TINY_MODEL = "photodex-tiny-zeroshot-test"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CLASSNAMES = ["dog", "cat", "birthday cake", "snowy mountain", "beach at sunset", "my grandmother"]


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(model, tokenizer, encode_texts) for a random tiny open_clip CLIP."""
    open_clip = pytest.importorskip("open_clip")
    cfg_path = tmp_path_factory.mktemp("oc_cfg") / f"{TINY_MODEL}.json"
    cfg_path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_MODEL, pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)

    def encode_texts(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            emb = model.encode_text(tokenizer(texts)).float()
            return torch.nn.functional.normalize(emb, dim=-1).numpy()

    return model, tokenizer, encode_texts


def synthetic_task(
    n_classes: int = 12,
    dim: int = 48,
    n_templates: int = 8,
    n_per_class: int = 40,
    image_noise: float = 1.0,
    template_bias: float = 0.6,
    prompt_noise: float = 1.2,
    seed: int = 0,
):
    """A separable synthetic zero-shot task with a simulated text encoder.

    * each class ``i`` has a random unit "concept" direction ``u_i``;
    * image vectors are ``normalize(u_i + image_noise * g)`` with ``g ~ N(0, I/dim)``;
    * the text embedding of prompt (class ``i``, template ``j``) is
      ``normalize(u_i + template_bias * b_j + prompt_noise * e_ij)``: ``b_j`` is a
      per-template style offset shared by all classes, ``e_ij`` per-prompt noise.
      Both are fixed, so ``encode_texts`` is deterministic.

    Averaging over templates cancels much of ``e_ij``, so the ensemble should beat
    (or at least match) the worst single template.
    Returns ``(classnames, templates, encode_texts, image_vectors, labels)``.
    """
    rng = np.random.default_rng(seed)
    concepts = normalize_rows(rng.standard_normal((n_classes, dim)))
    classnames = [f"class {i}" for i in range(n_classes)]
    templates = [f"template {j}: {{}}." for j in range(n_templates)]
    style = normalize_rows(rng.standard_normal((n_templates, dim)))
    table = {}
    for i, name in enumerate(classnames):
        for j, tmpl in enumerate(templates):
            noise = rng.standard_normal(dim) / np.sqrt(dim)
            table[tmpl.format(name)] = concepts[i] + template_bias * style[j] + prompt_noise * noise

    def encode_texts(texts: list[str]) -> np.ndarray:
        return normalize_rows(np.stack([table[t] for t in texts])).astype(np.float32)

    labels = np.repeat(np.arange(n_classes), n_per_class)
    noise = rng.standard_normal((len(labels), dim)) / np.sqrt(dim)
    images = normalize_rows(concepts[labels] + image_noise * noise).astype(np.float32)
    return classnames, templates, encode_texts, images, labels


def counting_encoder(encode):
    calls = []

    def wrapped(texts):
        calls.append(list(texts))
        return encode(texts)

    return wrapped, calls


# ----------------------------------------------------------- open_clip parity


@pytest.mark.parametrize("template_set", ["imagenet7", "photos"])
@pytest.mark.parametrize("batch_size", [5, 256])
def test_weights_match_open_clip_reference(tiny_clip, template_set, batch_size):
    import open_clip

    model, tokenizer, encode_texts = tiny_clip
    templates = load_templates(template_set)
    reference = open_clip.build_zero_shot_classifier(
        model, tokenizer, CLASSNAMES, templates, num_classes_per_batch=4, device="cpu", use_tqdm=False
    )
    ours = build_zero_shot_weights(CLASSNAMES, templates, encode_texts, batch_size=batch_size)
    assert ours.shape == (len(CLASSNAMES), TINY_CONFIG["embed_dim"])
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference.numpy().T, atol=1e-6)


def test_imagenet80_matches_open_clip_reference(tiny_clip):
    import open_clip
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    model, tokenizer, encode_texts = tiny_clip
    names = CLASSNAMES[:3]
    reference = open_clip.build_zero_shot_classifier(
        model, tokenizer, names, OPENAI_IMAGENET_TEMPLATES, num_classes_per_batch=2, device="cpu"
    )
    ours = build_zero_shot_weights(names, load_templates("imagenet80"), encode_texts, batch_size=64)
    np.testing.assert_allclose(ours, reference.numpy().T, atol=1e-6)


def test_weights_normalise_unnormalised_encoder_output():
    _, templates, encode, _, _ = synthetic_task(n_classes=3)
    names = [f"class {i}" for i in range(3)]
    a = build_zero_shot_weights(names, templates, encode)
    b = build_zero_shot_weights(names, templates, lambda t: 7.0 * encode(t), batch_size=3)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)


def test_encode_texts_bad_shape_raises():
    with pytest.raises(ValueError, match="expected"):
        build_zero_shot_weights(["a"], ["{}"], lambda t: np.zeros(5))


# ----------------------------------------------------------------- templates


def test_builtin_template_sets():
    from open_clip.zero_shot_metadata import (
        OPENAI_IMAGENET_TEMPLATES,
        SIMPLE_IMAGENET_TEMPLATES,
    )

    assert {"imagenet80", "imagenet7", "photos"} <= set(list_template_sets())
    assert load_templates("imagenet80") == tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    assert load_templates("imagenet7") == tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES)
    photos = load_templates("photos")
    assert 10 <= len(photos) <= 16
    assert len(set(photos)) == len(photos)
    assert expand_prompts(["dog"], photos[:1]) == ["a photo of dog."]


def test_user_template_file_with_comments(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my prompts\n\n  a picture of {}.  \nart of {{}} and {}\n", encoding="utf-8")
    assert load_templates(str(path)) == ("a picture of {}.", "art of {{}} and {}")
    assert load_templates(path) == load_templates(str(path))


def test_unknown_template_set_lists_known_names():
    with pytest.raises(TemplateError, match="unknown template set 'nope'.*imagenet80.*photos"):
        load_templates("nope")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("a photo of {}.\nno placeholder here\n", r"line 2: .*no '\{\}' placeholder"),
        ("# c\na {} and {}\n", r"line 2: .*2 placeholders"),
        ("a photo of {name}\n", r"line 1: .*bare '\{\}'"),
        ("a photo of {0}\n", r"line 1: .*bare '\{\}'"),
        ("a photo of {\n", r"line 1: malformed"),
        ("", "no templates found"),
        ("# only a comment\n\n   \n", "no templates found"),
    ],
)
def test_bad_template_files(tmp_path, content, pattern):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TemplateError, match=pattern):
        load_templates(str(path))


def test_template_error_is_value_error_and_sequences_validated():
    assert issubclass(TemplateError, ValueError)
    assert validate_template("x {} y") == "x {} y"
    assert ensure_templates(["a {}", "b {}"]) == ("a {}", "b {}")
    with pytest.raises(TemplateError, match="no templates"):
        ensure_templates([])
    with pytest.raises(TemplateError, match="template #1"):
        ensure_templates(["a {}", "b"])


# ----------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("names", "pattern"),
    [
        ([], "empty"),
        (["dog", "Dog"], "duplicate"),
        (["golden retriever", " Golden   Retriever "], "duplicate"),
        (["dog", ""], "#1 is empty"),
        (["dog", "   "], "#1 is empty"),
        ("dog", "not a single string"),
        (["dog", 3], "must be a str"),
    ],
)
def test_bad_classnames(names, pattern):
    with pytest.raises(ValueError, match=pattern):
        validate_classnames(names)
    with pytest.raises(ValueError, match=pattern):
        build_zero_shot_weights(names, ["{}"], lambda t: np.ones((len(t), 4)))


# ----------------------------------------------------------------- cache


def test_classifier_key_changes():
    base = classifier_key("ViT-B-32/openai", ["dog", "cat"], ["a {}"])
    assert base == classifier_key("ViT-B-32/openai", ("dog", "cat"), ("a {}",))
    assert base.startswith("ViT-B-32/openai:")
    variants = {
        classifier_key("ViT-B-32/laion", ["dog", "cat"], ["a {}"]),
        classifier_key("ViT-B-32/openai", ["cat", "dog"], ["a {}"]),
        classifier_key("ViT-B-32/openai", ["dog", "cats"], ["a {}"]),
        classifier_key("ViT-B-32/openai", ["dog", "cat"], ["a {}."]),
        classifier_key("ViT-B-32/openai", ["dog", "cat"], ["a {}", "b {}"]),
    }
    assert base not in variants and len(variants) == 5
    with pytest.raises(ValueError):
        classifier_key("", ["dog"], ["{}"])


def test_cache_memory_hit_and_miss():
    names, templates, encode, _, _ = synthetic_task(n_classes=4)
    encode, calls = counting_encoder(encode)
    cache = ZeroShotCache()
    w1 = cache.get_or_build("enc", names, templates, encode)
    n_calls = len(calls)
    w2 = cache.get_or_build("enc", names, templates, encode)
    assert w2 is w1 and len(calls) == n_calls
    assert (cache.hits, cache.misses) == (1, 1)
    assert not w1.flags.writeable
    cache.get_or_build("enc", names[:3], templates, encode)  # different labels -> miss
    cache.get_or_build("enc2", names, templates, encode)  # different encoder -> miss
    assert cache.misses == 3
    np.testing.assert_array_equal(w1, build_zero_shot_weights(names, templates, encode))


def test_cache_on_disk_survives_new_instance(tmp_path):
    names, templates, encode, _, _ = synthetic_task(n_classes=4)
    encode, calls = counting_encoder(encode)
    w1 = ZeroShotCache(tmp_path).get_or_build("ViT-B/32 openai", names, templates, encode)
    n_calls = len(calls)
    files = list(tmp_path.rglob("*"))
    npy = [p for p in files if p.suffix == ".npy"]
    assert len(npy) == 1 and not [p for p in files if p.name.startswith(".tmp-")]
    cache = ZeroShotCache(tmp_path)
    w2 = cache.get_or_build("ViT-B/32 openai", names, templates, encode)
    assert len(calls) == n_calls and cache.disk_hits == 1
    np.testing.assert_array_equal(w1, w2)
    key = classifier_key("ViT-B/32 openai", names, templates)
    assert cache.path_for(key) == npy[0]


def test_cache_ignores_corrupt_file(tmp_path):
    names, templates, encode, _, _ = synthetic_task(n_classes=3)
    cache = ZeroShotCache(tmp_path)
    key = classifier_key("enc", names, templates)
    path = cache.path_for(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npy file")
    assert cache.get(key) is None
    w = cache.get_or_build("enc", names, templates, encode)
    assert ZeroShotCache(tmp_path).get(key).shape == w.shape


# ----------------------------------------------------------------- scoring


def test_softmax_rows_sum_to_one_and_stable():
    rng = np.random.default_rng(1)
    x = normalize_rows(rng.standard_normal((50, 16))).astype(np.float32)
    w = normalize_rows(rng.standard_normal((9, 16))).astype(np.float32)
    for scale in (1.0, 100.0, 1e4):
        p = zero_shot_probs(x, w, scale)
        assert p.shape == (50, 9) and np.isfinite(p).all()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(softmax(np.array([[1000.0, 0.0]])), [[1.0, 0.0]], atol=1e-7)
    logits = 10.0 * (x @ w.T)
    ref = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(zero_shot_probs(3.0 * x, w, 10.0), ref, atol=1e-6)


def test_top_k_sorted_and_clipped():
    probs = np.array([[0.1, 0.5, 0.2, 0.2], [0.7, 0.0, 0.1, 0.2]])
    idx, vals = top_k(probs, 2)
    np.testing.assert_array_equal(idx[:, 0], [1, 0])
    np.testing.assert_allclose(vals, [[0.5, 0.2], [0.7, 0.2]])
    idx, vals = top_k(probs, 10)
    assert idx.shape == (2, 4)
    np.testing.assert_array_equal(idx[1], [0, 3, 2, 1])
    with pytest.raises(ValueError):
        top_k(probs, 0)


def test_multi_label_thresholds_on_cosine():
    scores = np.array([[0.30, 0.10, 0.25], [0.05, 0.22, 0.26]], dtype=np.float32)
    np.testing.assert_array_equal(multi_label(scores, 0.2), [[True, False, True], [False, True, True]])
    per_class = np.array([0.25, 0.2, 0.3])
    np.testing.assert_array_equal(multi_label(scores, per_class), [[True, False, False], [False, True, False]])
    with pytest.raises(ValueError, match="one value per class"):
        multi_label(scores, np.array([0.1, 0.2]))


def test_classify_vectors_chunked_equals_unchunked(tmp_path):
    rng = np.random.default_rng(2)
    centers = normalize_rows(rng.standard_normal((37, 24)))
    labels = rng.integers(0, 37, size=500)
    vectors = (centers[labels] + 0.3 * rng.standard_normal((500, 24))).astype(np.float32)
    weights = normalize_rows(centers + 0.05 * rng.standard_normal(centers.shape)).astype(np.float32)
    expected = top_k(zero_shot_probs(vectors, weights, 50.0), 5)
    mm = np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", dtype=np.float32, shape=vectors.shape)
    mm[:] = vectors
    for chunk, source in [(10_000, vectors), (128, vectors), (7, vectors), (1, vectors), (64, mm)]:
        got = classify_vectors(source, weights, 50.0, k=5, chunk=chunk)
        np.testing.assert_array_equal(got.indices, expected.indices)
        np.testing.assert_allclose(got.values, expected.values, atol=1e-5)
    for normalize in (True, False):  # already unit-norm input: division skipped / trusted
        normed = classify_vectors(normalize_rows(vectors), weights, 50.0, k=5, chunk=100, normalize=normalize)
        np.testing.assert_array_equal(normed.indices, expected.indices)
        np.testing.assert_allclose(normed.values, expected.values, atol=1e-5)
    assert classify_vectors(vectors[:0], weights, 50.0, k=3).indices.shape == (0, 3)
    assert classify_vectors(vectors, weights, 50.0, k=100).indices.shape == (500, 37)


def test_cosine_scores_dimension_mismatch():
    with pytest.raises(ValueError, match="dimension mismatch"):
        cosine_scores(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="dimension mismatch"):
        classify_vectors(np.ones((2, 3)), np.ones((4, 5)), 1.0)


# ----------------------------------------------------------------- evaluation


def test_ensemble_not_worse_than_worst_single_template():
    names, templates, encode, images, labels = synthetic_task()
    result = compare_templates(images, labels, names, templates, encode, logit_scale=100.0)
    singles = [acc for _, acc in result.per_template]
    print(f"\nsingle-template top1 {min(singles):.3f}..{max(singles):.3f}, ensemble {result.ensemble_top1:.3f}")
    assert len(result.per_template) == len(templates)
    assert result.ensemble_top1 >= float(np.median(singles))  # averaging cancels prompt noise
    ensemble_weights = build_zero_shot_weights(names, templates, encode)
    report = evaluate_zero_shot(images, labels, names, ensemble_weights, 100.0)
    assert report.top1 == pytest.approx(result.ensemble_top1)


def test_evaluate_zero_shot_report():
    names = ["dog", "cat", "car"]
    weights = np.eye(3, 4, dtype=np.float32)
    vectors = np.eye(3, 4, dtype=np.float32)[[0, 0, 1, 1, 1, 2, 0, 0]]
    labels = np.array([0, 0, 1, 1, 2, 2, 1, 2])  # errors: car->cat, cat->dog, car->dog
    report = evaluate_zero_shot(vectors, labels, names, weights, logit_scale=100.0)
    assert report.n == 8
    assert report.top1 == pytest.approx(5 / 8)
    assert report.top5 == 1.0
    assert report.per_class == {"dog": 1.0, "cat": pytest.approx(2 / 3), "car": pytest.approx(1 / 3)}
    assert report.confusions == [("cat", "dog", 1), ("car", "dog", 1), ("car", "cat", 1)]
    assert report.mean_per_class_recall == pytest.approx((1 + 2 / 3 + 1 / 3) / 3)
    assert set(report.to_dict()) == {"n", "top1", "top5", "per_class", "confusions", "mean_per_class_recall"}
    with pytest.raises(ValueError, match="labels must be in"):
        evaluate_scores(np.ones((2, 3)), np.array([0, 3]))


def test_encode_prompt_embeddings_layout():
    names, templates, encode, _, _ = synthetic_task(n_classes=3, n_templates=4)
    emb = encode_prompt_embeddings(names, templates, encode, batch_size=5)
    assert emb.shape == (3, 4, 48)
    np.testing.assert_allclose(emb[2, 1], encode([templates[1].format(names[2])])[0], atol=1e-6)
