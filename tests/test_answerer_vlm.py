"""The VLM wrapper with the trained tiny LLaVA-style model: loading, budget, batching, streaming, P(yes)."""

from __future__ import annotations

import threading

import pytest

from answerer.budget import PromptTooLongError
from answerer.rerank import answer_token_ids, p_yes
from answerer.streaming import stream_generate
from answerer.vlm import VLM, Request, VLMLoadError, shared_vlm
from ui.demo.world import CLASSES, generate_samples

HELD_OUT_SEED = 9001  # the VLM trained on 4321-4323


@pytest.fixture(scope="module")
def samples():
    return [s for s in generate_samples(40, HELD_OUT_SEED) if not s.unsafe][:24]


def test_load_happens_once_across_threads(world_tiny_vlm_dir, monkeypatch):
    from transformers import AutoModelForImageTextToText

    calls = []
    real = AutoModelForImageTextToText.from_pretrained

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", counting)
    fresh = VLM(str(world_tiny_vlm_dir), device="cpu")
    assert not fresh.loaded
    models = []
    threads = [threading.Thread(target=lambda: models.append(fresh.load().model)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(models) == 4 and all(m is models[0] for m in models)
    fresh.answer([generate_samples(1, 3)[0].image], "what shape is the object?")
    assert len(calls) == 1  # reused, not reloaded
    assert shared_vlm(str(world_tiny_vlm_dir), "cpu") is shared_vlm(str(world_tiny_vlm_dir), "cpu")


def test_offline_hub_id_error_says_how_to_use_a_local_folder():
    with pytest.raises(VLMLoadError) as err:
        VLM("photodex-test/no-such-vlm", device="cpu").load()
    message = str(err.value)
    assert "no-such-vlm" in message and "HF_HUB_OFFLINE" in message
    assert "local folder" in message and "PHOTODEX_VLM" in message and "save_pretrained" in message


def test_a_folder_that_is_not_a_vlm_is_a_config_error(world_tiny_clip_dir):
    from indexer.core.errors import ConfigError

    with pytest.raises(ConfigError, match="could not load VLM"):
        VLM(str(world_tiny_clip_dir), device="cpu").load()


def test_chat_prompt_has_one_image_item_per_image(vlm):
    prompt = vlm.render(Request.question([None, None], "what colour is the object?").content)  # type: ignore[list-item]
    assert prompt.count("<image>") == 2 and prompt.endswith("assistant:")
    assert vlm.context_length == 256 and vlm.model_type == "llava" and not vlm.multi_image


def test_image_tokens_are_counted_and_over_context_prompts_refused(vlm, samples):
    three = vlm.prepare([Request.question([s.image for s in samples[:3]], "what colour is the object?")])
    assert three.image_tokens == [48] and three.n_images == [3]  # 16 tokens per 64 px image
    twenty = [s.image for s in samples[:20]]  # 320 image tokens > the tiny model's 256 positions
    with pytest.raises(PromptTooLongError, match=r"20 image\(s\), ~16 each.*context of 256 tokens"):
        vlm.answer(twenty, "what colour is the object?")


def test_batched_answers_equal_one_at_a_time(vlm, samples):
    items = [([s.image], q) for s in samples[:12] for q, _ in s.qa[:3]]
    single = [vlm.answer(imgs, q) for imgs, q in items]
    assert vlm.answer_batch(items, batch_size=8) == single
    truth = [a for s in samples[:12] for _, a in s.qa[:3]]
    assert sum(a == t for a, t in zip(single, truth)) / len(truth) >= 0.7  # the model answers, not noise


def test_streamed_text_equals_non_streamed(vlm, samples):
    for s in samples[:6]:
        for q, _ in s.qa[:2]:
            prepared = vlm.prepare([Request.question([s.image], q)])
            # min_new_tokens forces several tokens (the tiny model otherwise stops after one word)
            chunks = list(stream_generate(vlm, prepared, 6, min_new_tokens=5))
            assert len(chunks) >= 2
            assert "".join(chunks).strip() == vlm.answer([s.image], q, max_new_tokens=6, min_new_tokens=5)


def test_streaming_refuses_over_context_before_starting(vlm, samples):
    prepared = vlm.prepare([Request.question([s.image for s in samples[:20]], "what shape is the object?")])
    with pytest.raises(PromptTooLongError):
        next(iter(stream_generate(vlm, prepared, 4)))


def test_p_yes_separates_the_shown_class_from_others(vlm, samples):
    assert answer_token_ids(vlm.tokenizer, ["yes", "Yes", " yes"]) == [vlm.tokenizer.convert_tokens_to_ids("yes")]
    wins = 0
    for s in samples:
        other = next(c for c in CLASSES if c.split()[0] != s.colour)  # another colour: no hard negative
        pos = p_yes(vlm, [s.image], f"is there a {s.class_name}?")[0]
        neg = p_yes(vlm, [s.image], f"is there a {other}?")[0]
        assert 0.0 <= neg <= 1.0 and 0.0 <= pos <= 1.0
        wins += pos > neg
    assert wins / len(samples) >= 0.9
    batch = p_yes(vlm, [s.image for s in samples], "is there a red circle?", batch_size=5)
    one = [p_yes(vlm, [s.image], "is there a red circle?")[0] for s in samples[:5]]
    assert batch.shape == (len(samples),) and list(batch[:5]) == pytest.approx(one, abs=1e-4)
