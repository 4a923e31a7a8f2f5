"""Fast VLM preprocessing (answerer.preprocess) gives exactly the processor's inputs, or falls back to it."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from answerer.preprocess import Preprocessor, fit, fixed_input_side, same_inputs
from answerer.vlm import VLM, Request
from ui.demo.world import generate_samples

QUESTION = "what colour is the object?"


@pytest.fixture(scope="module")
def samples():
    return generate_samples(24, 515)


def _fresh(vlm: VLM) -> Preprocessor:
    return vlm.reset_preprocessor()


def _mixed(samples) -> list[Image.Image]:
    """World images (64 x 64) and the same scenes at other sizes and modes."""
    imgs = [s.image for s in samples[:12]]
    imgs += [s.image.resize((320, 240), Image.BICUBIC) for s in samples[12:16]]
    imgs += [s.image.resize((40, 90), Image.BICUBIC).convert("L") for s in samples[16:20]]
    return imgs


def test_fit_brings_images_to_the_processors_square_once(vlm):
    side = vlm.input_side
    assert side == fixed_input_side(vlm.processor.image_processor) == 64
    wide = Image.new("RGB", (640, 320), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 100, 320))  # a blue left strip, cropped away by the centre crop
    out = fit(wide, 1024, side)
    assert out.size == (64, 64) and out.mode == "RGB" and out.getpixel((0, 32)) == (255, 0, 0)
    assert fit(Image.new("L", (20, 30)), 1024, side).size == (64, 64)
    same = Image.new("RGB", (64, 64))
    assert fit(same, 1024, side) is same  # nothing to do: no copy, no resampling
    assert fit(Image.new("RGB", (2000, 1000)), 500, None).size == (500, 250)  # no fixed side: the budget
    assert fixed_input_side(None) is None


def test_fast_inputs_equal_the_processors_and_answers_do_too(vlm, samples):
    pre = _fresh(vlm)
    assert vlm.preprocessor is pre and pre.checked == {}
    imgs = _mixed(samples)
    requests = [Request.question([im], QUESTION if i % 2 else "is there a red circle?") for i, im in enumerate(imgs)]
    prepared = vlm.prepare(requests)
    assert pre.checked == {"square": True}  # checked once against the processor, and equal
    fitted = [[fit(im, 1024, vlm.input_side)] for im in imgs]
    prompts = [vlm.render(r.content) for r in requests]
    reference = pre.slow(prompts, fitted, {})
    assert same_inputs({k: v for k, v in prepared.inputs.items()}, reference)
    assert torch.equal(prepared.inputs["input_ids"], reference["input_ids"])
    assert torch.allclose(prepared.inputs["pixel_values"], reference["pixel_values"], atol=1e-5)
    answers = vlm.generate(prepared, 4)
    with torch.inference_mode():
        out = vlm.model.generate(**reference, **vlm.generation_kwargs(4))
    expected = [t.strip() for t in vlm.processor.batch_decode(out[:, reference["input_ids"].shape[1]:],
                                                              skip_special_tokens=True)]
    assert answers == expected
    truth = [s.colour for s in samples[:20]]
    right = sum(a == t for a, t, i in zip(answers, truth, range(20)) if i % 2)
    assert right >= 8  # the colour questions are still answered (the fitted large images too)


def test_token_ids_are_memoised_and_the_image_processor_runs_once_per_batch(vlm, samples, monkeypatch):
    pre = _fresh(vlm)
    imgs = [[s.image.resize((96, 80))] for s in samples[:6]]  # not the square: the "ids" way
    prompts = [vlm.render(Request.question(row, QUESTION).content) for row in imgs]
    first = pre.run(prompts, imgs, {})
    assert pre.checked == {"ids": True} and same_inputs(first, pre.slow(prompts, imgs, {}))
    calls = {"processor": 0, "image_processor": 0}
    proc_cls, ip_cls = type(vlm.processor), type(vlm.processor.image_processor)
    real_proc, real_ip = proc_cls.__call__, ip_cls.__call__

    def counting_proc(self, *a, **k):
        calls["processor"] += 1
        return real_proc(self, *a, **k)

    def counting_ip(self, *a, **k):
        calls["image_processor"] += 1
        return real_ip(self, *a, **k)

    monkeypatch.setattr(proc_cls, "__call__", counting_proc)
    monkeypatch.setattr(ip_cls, "__call__", counting_ip)
    again = pre.run(prompts, imgs, {})
    assert calls == {"processor": 0, "image_processor": 1}
    assert same_inputs(again, first)


def test_a_fast_way_that_differs_from_the_processor_is_switched_off(vlm, samples, monkeypatch):
    pre = _fresh(vlm)
    real = Preprocessor.pixels

    def off_by_one(self, images, kwargs, way):
        out = real(self, images, kwargs, way)
        return {k: v + 1 for k, v in out.items()}

    monkeypatch.setattr(Preprocessor, "pixels", off_by_one)
    imgs = [[s.image] for s in samples[:4]]
    prompts = [vlm.render(Request.question(row, QUESTION).content) for row in imgs]
    reference = pre.slow(prompts, imgs, {})
    for _ in range(2):  # the first call checks and falls back; later calls use the processor directly
        got = pre.run(prompts, imgs, {})
        assert pre.checked == {"square": False}
        assert same_inputs(got, reference)

    def broken(self, images, kwargs, way):
        raise RuntimeError("surprise")

    pre = _fresh(vlm)
    monkeypatch.setattr(Preprocessor, "pixels", broken)
    assert same_inputs(pre.run(prompts, imgs, {}), reference) and pre.checked == {"square": False}
    _fresh(vlm)
