"""Encoder registry: local loading paths, normalisation, caching, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from indexer.encode.encoders import load_encoder, resolve_device
from indexer.core.errors import EncoderLoadError
from tests.helpers import TINY_NAME, register_tiny_config


def test_local_dir_and_weights_file_give_the_same_encoder(tiny_clip):
    folder, weights = tiny_clip
    register_tiny_config()
    # fp32: the two routes have different spec ids, so precision=auto probes (and may choose) for each apart
    a = load_encoder("local-dir:" + str(folder), device="cpu", precision="fp32")
    b = load_encoder(TINY_NAME, str(weights), device="cpu", precision="fp32")
    img = Image.new("RGB", (50, 40), (200, 30, 30))
    np.testing.assert_allclose(a.encode_images([img]), b.encode_images([img]), atol=1e-6)
    np.testing.assert_allclose(a.encode_texts(["a red photo"]), b.encode_texts(["a red photo"]), atol=1e-6)
    assert a.spec.embed_dim == 32 and a.spec.preprocess["size"] in (32, [32, 32])
    assert a.spec.weights_fingerprint and b.spec.weights_fingerprint
    assert a.spec.id == f"local-dir:tiny_clip|local@{a.spec.weights_fingerprint}|32"


def test_outputs_are_unit_norm_and_texts_cached(tiny_encoder):
    imgs = [Image.new("RGB", (40, 40), c) for c in [(0, 0, 0), (255, 255, 0), (10, 200, 90)]]
    v = tiny_encoder.encode_images(imgs)
    assert v.dtype == np.float32 and v.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    t = tiny_encoder.encode_texts(["a dog", "a cat", "a dog"])
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(t[0], t[2]) and not np.allclose(t[0], t[1])
    assert "a dog" in tiny_encoder._text_cache


def test_unknown_model_is_one_clear_error():
    with pytest.raises(EncoderLoadError, match="could not load encoder.*--pretrained"):
        load_encoder("no-such-model-xyz", None, device="cpu")


def test_missing_weights_file_and_empty_local_dir(tmp_path):
    with pytest.raises(EncoderLoadError, match="weights file not found"):
        load_encoder("ViT-B-32", str(tmp_path / "missing.safetensors"), device="cpu")
    with pytest.raises(EncoderLoadError, match="open_clip_config.json"):
        load_encoder("local-dir:" + str(tmp_path), device="cpu")


def test_unavailable_pretrained_tag_offline_says_how_to_supply_weights():
    with pytest.raises(EncoderLoadError, match="local-dir:"):
        load_encoder("ViT-B-32", "laion2b_s34b_b79k", device="cpu")


def test_device_resolution_explains_itself():
    import torch

    dev, why = resolve_device("auto")
    assert dev == ("cuda" if torch.cuda.is_available() else "cpu") and why
    if not torch.cuda.is_available():
        assert "CPU" in why
        with pytest.raises(EncoderLoadError, match="CUDA is not usable"):
            resolve_device("cuda")
