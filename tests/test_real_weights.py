"""Checks that need real downloaded weights or a GPU; skipped unless those are present."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image


@pytest.mark.weights
def test_zero_shot_on_real_weights():
    """PHOTODEX_TEST_WEIGHTS=ViT-B-32:/path/open_clip_model.safetensors (or local-dir:/path),
    PHOTODEX_TEST_IMAGEFOLDER=/path/cifar10-test (ImageFolder), PHOTODEX_TEST_MIN_TOP1=0.85.

    open_clip's table: ViT-B-32 (openai) reaches 89.8 % on CIFAR-10.
    """
    from indexer.encode.encoders import load_encoder
    from retrieval.classify.eval_folder import evaluate_image_folder

    spec = os.environ["PHOTODEX_TEST_WEIGHTS"]
    model, _, pretrained = spec.partition(":") if not spec.startswith("local-dir:") else (spec, "", "")
    encoder = load_encoder(model, pretrained or None)
    folder = os.environ["PHOTODEX_TEST_IMAGEFOLDER"]
    report = evaluate_image_folder(encoder, folder, "imagenet80")
    assert report["zero_shot"]["top1"] >= float(os.environ.get("PHOTODEX_TEST_MIN_TOP1", "0.85")), report


@pytest.mark.gpu
def test_cuda_autocast_matches_fp32(tiny_clip):
    from indexer.encode.encoders import load_encoder

    folder, _ = tiny_clip
    cpu = load_encoder("local-dir:" + str(folder), device="cpu")
    gpu = load_encoder("local-dir:" + str(folder), device="cuda", precision="fp16")
    imgs = [Image.new("RGB", (40, 40), (i * 20, 100, 200 - i * 10)) for i in range(8)]
    a, b = cpu.encode_images(imgs), gpu.encode_images(imgs)
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-3)
    assert np.min(np.sum(a * b, axis=1)) > 0.99
