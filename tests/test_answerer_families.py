"""Per-family VLM options with tiny random models built in-process (Qwen2-VL, Idefics3/SmolVLM, LLaVA-OneVision).

Each model is a transformers config with tiny sizes and random weights, with its real processor class
built offline around a word-level tokenizer, saved with ``save_pretrained`` and loaded through
:class:`answerer.vlm.VLM` like any checkpoint. The answers are noise; what is checked is that the
family's option reaches the processor, that the image tokens in ``input_ids`` are what the family's
rules say, that an over-context prompt is refused, and that the fast preprocessing equals the processor.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from answerer.budget import ImageBudget, PromptTooLongError, processor_kwargs
from answerer.preprocess import same_inputs
from answerer.rag import choose_strategy
from answerer.vlm import VLM, Request

QUESTION = "is there a red circle?"
WORDS = ["user", "assistant", "User", "Assistant", ":", "is", "there", "a", "red", "circle", "?", "yes", "no"]


def _tokenizer(specials: list[str], eos: str, bos: str | None = None, max_length: int | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", *specials, *WORDS]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    extra = {"model_max_length": max_length} if max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token=eos,
                                   bos_token=bos, additional_special_tokens=specials, **extra), words


def _chat_template(image: str, start: str, end: str) -> str:
    return ("{% for m in messages %}" + start + "{{ m['role'] }} {% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}" + image + "{% else %}{{ c['text'] }}{% endif %}"
            "{% endfor %}" + end + "{% endfor %}{% if add_generation_prompt %}" + start + "assistant {% endif %}")


def _save(folder: Path, model, processor) -> str:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory) -> VLM:
    """Qwen2-VL: 14 px patches merged 2 x 2 (one token per 28 x 28 px); context 64 tokens (tokenizer limit)."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok, words = _tokenizer(specials, eos="<|im_end|>", max_length=64)
    ids = {w: i for i, w in enumerate(words)}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1024, patch_size=14,
                                              merge_size=2, temporal_patch_size=2),
        tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
        chat_template=_chat_template("<|vision_start|><|image_pad|><|vision_end|>", "<|im_start|>", "<|im_end|>"))
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
                         pad_token_id=0, eos_token_id=ids["<|im_end|>"]),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    folder = _save(tmp_path_factory.mktemp("qwen2_vl"), Qwen2VLForConditionalGeneration(config), processor)
    return VLM(folder, device="cpu").load()


@pytest.fixture(scope="module")
def idefics3(tmp_path_factory) -> VLM:
    """Idefics3 / SmolVLM: 32 px tiles of 4 tokens (8 px patches, pixel shuffle 2); images up to 96 px split into tiles."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    rowcol = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    specials = ["<|im_start|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *rowcol]
    tok, words = _tokenizer(specials, eos="<end_of_utterance>", bos="<|im_start|>")
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": 96},
                                               max_image_size={"longest_edge": 32}),
        tokenizer=tok, image_seq_len=4, chat_template=_chat_template("<image>", "<|im_start|>", "<end_of_utterance>"))
    config = Idefics3Config(
        text_config=dict(model_type="llama", vocab_size=len(words), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=1024, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        scale_factor=2, image_token_id=words.index("<image>"), pad_token_id=0)
    torch.manual_seed(0)
    folder = _save(tmp_path_factory.mktemp("idefics3"), Idefics3ForConditionalGeneration(config), processor)
    return VLM(folder, device="cpu").load()


@pytest.fixture(scope="module")
def onevision(tmp_path_factory) -> VLM:
    """LLaVA-OneVision: 32 px base image of 16 tokens (+1 newline in the multi-image path), any-res grid up to 64 px."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor)

    specials = ["<image>", "<video>", "<|im_start|>", "<|im_end|>"]
    tok, words = _tokenizer(specials, eos="<|im_end|>")
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints),
        tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=16,
        vision_feature_select_strategy="full", chat_template=_chat_template("<image>", "<|im_start|>", "<|im_end|>"))
    config = LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", vocab_size=len(words), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=2048, pad_token_id=0),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        image_grid_pinpoints=pinpoints, image_token_id=words.index("<image>"), video_token_id=words.index("<video>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1)
    torch.manual_seed(0)
    folder = _save(tmp_path_factory.mktemp("onevision"), LlavaOnevisionForConditionalGeneration(config), processor)
    return VLM(folder, device="cpu").load()


def _image(size: tuple[int, int], colour=(200, 30, 30)) -> Image.Image:
    img = Image.new("RGB", size, colour)
    img.paste((30, 30, 200), (0, 0, size[0] // 3, size[1] // 2))
    return img


def _check_fast_equals_processor(vlm: VLM, requests: list[Request], budget: ImageBudget) -> None:
    prepared = vlm.prepare(requests, budget)
    pre = vlm.preprocessor
    assert pre.checked.get("ids") is True
    prompts = [vlm.render(r.content) for r in requests]
    images = [list(r.images) for r in requests]
    kwargs = processor_kwargs(vlm.model_type, max(len(r.images) for r in requests), budget)
    assert same_inputs(prepared.inputs, pre.slow(prompts, images, kwargs))


def test_qwen2_vl_pixel_budget_bounds_the_image_tokens(qwen2_vl):
    vlm = qwen2_vl
    assert vlm.model_type == "qwen2_vl" and vlm.multi_image and choose_strategy("auto", vlm) == "joint"
    assert vlm.context_length == 64 and vlm.input_side is None
    img = _image((448, 448))  # 16 x 16 merged patches at full size = 256 tokens
    counts = {}
    for tokens in (16, 64, 1024):
        prepared = vlm.prepare([Request.question([img], QUESTION)], ImageBudget(max_image_tokens=tokens))
        (grid,) = prepared.inputs["image_grid_thw"].tolist()
        counts[tokens] = prepared.image_tokens[0]
        assert counts[tokens] == grid[0] * grid[1] * grid[2] // 4 <= tokens  # the option reached the processor
    assert counts == {16: 16, 64: 64, 1024: 256}
    fits = vlm.prepare([Request.question([img], QUESTION)], ImageBudget(max_image_tokens=16))
    assert len(vlm.generate(fits, 4)) == 1  # 16 image + 13 text tokens + answer room fit in 64
    over = vlm.prepare([Request.question([img], QUESTION)], ImageBudget(max_image_tokens=64))
    with pytest.raises(PromptTooLongError, match="64 of them for 1 image"):
        vlm.generate(over, 4)
    _check_fast_equals_processor(vlm, [Request.question([img, _image((300, 200))], QUESTION)] * 2,
                                 ImageBudget(max_image_tokens=4))


def test_idefics3_splits_one_large_image_and_not_several(idefics3):
    vlm = idefics3
    assert vlm.model_type == "idefics3" and vlm.multi_image
    img = _image((96, 64))
    one = vlm.prepare([Request.question([img], QUESTION)], ImageBudget(max_image_tokens=1024))
    assert one.inputs["pixel_values"].shape[1] == 7 and one.image_tokens == [7 * 4]  # 3 x 2 tiles + global image
    small = vlm.prepare([Request.question([img], QUESTION)], ImageBudget(max_image_tokens=512))
    assert small.inputs["pixel_values"].shape[1] == 1 and small.image_tokens == [4]  # splitting off: one tile
    two = vlm.prepare([Request.question([img, img], QUESTION)] * 2, ImageBudget(max_image_tokens=1024))
    assert two.image_tokens == [8, 8]  # several images per prompt: no splitting
    assert len(vlm.generate(two, 3)) == 2
    _check_fast_equals_processor(vlm, [Request.question([img, img], QUESTION)] * 2, ImageBudget())


def test_llava_onevision_uses_its_multi_image_path_for_several_photos(onevision):
    vlm = onevision
    assert vlm.model_type == "llava_onevision" and vlm.multi_image
    img = _image((64, 48))
    single = vlm.prepare([Request.question([img], QUESTION)])
    assert single.image_tokens[0] > 17  # any-res: base image plus grid tiles
    several = vlm.prepare([Request.question([img, img, img], QUESTION)])
    assert several.image_tokens == [3 * 17]  # 16 base tokens + 1 newline per image
    batch = vlm.prepare([Request.question([img, img], QUESTION)] * 2)
    assert batch.image_tokens == [34, 34]
    assert len(vlm.generate(batch, 3)) == 2 and len(vlm.generate(several, 3)) == 1  # features match the tokens
    _check_fast_equals_processor(vlm, [Request.question([img, img], QUESTION)] * 2, ImageBudget())
