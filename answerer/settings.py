"""The answerer's settings (``PHOTODEX_VLM*``), one part of :class:`ui.settings.Settings`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from indexer.core.settings import SETTINGS_CONFIG

# Qwen2-VL 2B Instruct: multi-image, cites ids when asked, MMBench 74.9; ~4.4 GB one-time download
# (bf16 safetensors), ~5 GB of GPU memory in bf16; slow but usable on a CPU. For CPU-only hosts
# "HuggingFaceTB/SmolVLM-500M-Instruct" (~1.0 GB) is the lighter choice. Override with PHOTODEX_VLM
# (a Hub id or a local folder written by save_pretrained).
DEFAULT_VLM = "Qwen/Qwen2-VL-2B-Instruct"


class VlmSettings(BaseSettings):
    """Which vision-language model answers, and how much of each photo it sees."""

    model_config = SETTINGS_CONFIG

    vlm: str = DEFAULT_VLM  # Hub id or local save_pretrained folder of an image-text-to-text model
    vlm_strategy: Literal["auto", "joint", "per-photo"] = "auto"  # auto: joint for multi-image models
    vlm_max_images: int = Field(default=6, ge=1, le=64)  # photos shown per prompt (joint strategy)
    vlm_max_image_side: int = Field(default=1024, ge=32)  # photos are shrunk to this longest side first
    vlm_max_image_tokens: int = Field(default=1024, ge=16)  # per image, where the model lets us bound it
    vlm_max_new_tokens: int = Field(default=256, ge=1, le=8192)
    vlm_min_relevance: float = Field(default=0.2, ge=-1.0, le=1.0)  # below: "nothing relevant" (CLIP cosine)
    vlm_caption_prompt: str = "Describe this photo in one sentence."
    vlm_rerank_template: str = "Does this photo show {query}? Answer yes or no."
