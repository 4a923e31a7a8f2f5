"""Answerer pure logic: citations, image budget, question handling, composition, blending (no models)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from answerer.budget import (
    ImageBudget,
    PromptTooLongError,
    check_context,
    count_image_tokens,
    drop_to_fit,
    processor_kwargs,
    select,
    shrink,
)
from answerer.citations import check_citations, parse_citations
from answerer.rag import (
    AskOptions,
    PhotoAnswer,
    compose_per_photo,
    is_yes_no,
    photo_question,
    retrieval_query,
    supports,
)
from answerer.rerank import blend
from indexer.core.errors import InputError


def test_parse_citations_reads_the_usual_forms_in_order():
    text = "Yes [#12], also [3, #7] and photo 5; see #12 again, id 9. Not 2023 or 64px."
    assert parse_citations(text) == [12, 3, 7, 5, 9]
    assert parse_citations("no citations here, 3 circles") == []


def test_invented_citations_are_dropped_and_reported():
    check = check_citations("The car is red [#4] [#99] (photo 7).", shown=[4, 7, 8])
    assert check.cited == [4, 7]
    assert check.invented == [99]
    assert check_citations("[#1]", shown=[]).invented == [1]


def test_select_and_shrink():
    kept, dropped = select([5, 4, 3, 2], 3)
    assert kept == [5, 4, 3] and dropped == [2]
    big = Image.new("RGB", (4000, 1000))
    small = shrink(big, 1024)
    assert small.size == (1024, 256)
    tiny = Image.new("RGB", (64, 64))
    assert shrink(tiny, 1024) is tiny  # never enlarged


def test_count_image_tokens_per_row():
    ids = np.array([[0, 4, 4, 4, 9], [4, 9, 9, 9, 9]])
    assert count_image_tokens(ids, 4) == [3, 1]
    assert count_image_tokens(np.array([4, 4, 1]), 4) == [2]
    assert count_image_tokens(ids, None) == [0, 0]


def test_over_context_is_refused_with_a_clear_error():
    check_context(200, 160, 10, 16, 256)  # fits: 200 + 16 <= 256
    with pytest.raises(PromptTooLongError, match=r"330 tokens \(320 of them for 20 image\(s\), ~16 each\).*context of 256"):
        check_context(330, 320, 20, 64, 256)
    with pytest.raises(InputError, match="fewer photos"):  # an InputError: the CLI maps it to exit code 2
        check_context(250, 16, 1, 64, 256)
    check_context(10**6, 0, 0, 64, None)  # unknown context: no check


def test_drop_to_fit_counts_images_to_remove():
    # 20 images x 16 tokens + 10 text = 330; room for 16 answer tokens in 256 -> drop ceil(90/16) = 6
    assert drop_to_fit(330, 320, 20, 64, 256) == 6
    assert 330 - 6 * 16 + 16 <= 256
    assert drop_to_fit(100, 80, 5, 64, 256) == 0
    assert drop_to_fit(300, 0, 0, 64, 256) == 0  # nothing to drop: caller refuses


def test_processor_kwargs_bound_tokens_per_family():
    budget = ImageBudget(max_images=4, max_image_tokens=256)
    qwen = processor_kwargs("qwen2_vl", 3, budget)
    assert qwen["size"]["longest_edge"] == 256 * 28 * 28
    assert processor_kwargs("smolvlm", 2, budget) == {"do_image_splitting": False}
    assert processor_kwargs("smolvlm", 1, ImageBudget(max_image_tokens=4096)) == {}
    assert processor_kwargs("llava", 3, budget) == {}
    with pytest.raises(InputError):
        ImageBudget(max_images=0).validate()


def test_question_rewriting():
    assert photo_question("is there a skull in any of the garden photos?") == "is there a skull?"
    assert photo_question("what colour was the car in the 2023 trip photos?") == "what colour was the car?"
    assert retrieval_query("is there a skull in any of the garden photos?") == "a photo of a skull"
    assert retrieval_query("Are there any red circles?") == "a photo of red circles"
    assert retrieval_query("does the photo show a dog?") == "a photo of a dog"
    assert retrieval_query("what colour is the car?") == "what colour is the car"
    assert is_yes_no("is there a skull?") and is_yes_no("Does any photo show a dog?")
    assert not is_yes_no("what colour is the car?")


def test_support_and_composition():
    assert supports("yes", True) and supports("Yes, there is.", True) and not supports("no", True)
    assert supports("red", False) and not supports("no", False) and not supports("I don't know", False)
    answers = [PhotoAnswer(3, "yes", True), PhotoAnswer(5, "no", False), PhotoAnswer(8, "yes", True)]
    text = compose_per_photo(answers, yes_no=True, n_looked=3)
    assert text == "Yes: 2 of the 3 photos looked at show it: [#3] [#8]."
    assert parse_citations(text) == [3, 8]  # only supporting photos are cited
    assert compose_per_photo([PhotoAnswer(5, "no", False)], True, 1).startswith("No: none of the 1")
    open_q = [PhotoAnswer(1, "red", True), PhotoAnswer(2, "blue", True), PhotoAnswer(4, "red", True)]
    assert compose_per_photo(open_q, yes_no=False, n_looked=3) == "red [#1] [#4]; blue [#2]."


def test_ask_options_validation():
    with pytest.raises(InputError, match="-k must be at least 1"):
        AskOptions(k=0).validate()
    with pytest.raises(InputError, match="strategy"):
        AskOptions(strategy="both").validate()


def test_blend_scales_clip_and_weights_p_yes():
    clip = np.array([0.30, 0.20, 0.25])
    p = np.array([0.1, 0.9, 0.5])
    assert np.allclose(blend(clip, p, 0.0), [1.0, 0.0, 0.5])
    assert np.allclose(blend(clip, p, 1.0), p)
    close = np.array([0.30, 0.29, 0.10])
    assert np.argmax(blend(close, p, 0.5)) == 1  # a confident VLM overturns a small CLIP lead
    with pytest.raises(InputError):
        blend(clip, p, 1.5)


def test_settings_have_vlm_fields(monkeypatch):
    from answerer.settings import DEFAULT_VLM
    from ui.settings import Settings

    assert Settings().vlm == DEFAULT_VLM
    monkeypatch.setenv("PHOTODEX_VLM", "/models/my-vlm")
    monkeypatch.setenv("PHOTODEX_VLM_MAX_IMAGES", "3")
    s = Settings()
    assert s.vlm == "/models/my-vlm" and s.vlm_max_images == 3 and s.vlm_strategy == "auto"
