"""Settings read from the environment (``PHOTODEX_*``) and validated at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "ViT-B-32"
# LAION-2B trained ViT-B/32: 66.6 % ImageNet zero-shot, ~605 MB one-time download (fp32 weights),
# fast enough on a CPU for personal libraries. Override with PHOTODEX_MODEL / PHOTODEX_PRETRAINED.
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
# Qwen2-VL 2B Instruct: multi-image, cites ids when asked, MMBench 74.9; ~4.4 GB one-time download
# (bf16 safetensors), ~5 GB of GPU memory in bf16; slow but usable on a CPU. For CPU-only hosts
# "HuggingFaceTB/SmolVLM-500M-Instruct" (~1.0 GB) is the lighter choice. Override with PHOTODEX_VLM
# (a Hub id or a local folder written by save_pretrained).
DEFAULT_VLM = "Qwen/Qwen2-VL-2B-Instruct"


def _default_collection() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "photodex" / "collection"


def _default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class Settings(BaseSettings):
    """All knobs of photodex; every field can be set as ``PHOTODEX_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="PHOTODEX_", env_nested_delimiter="__", extra="ignore")

    collection: Path = Field(default_factory=_default_collection)
    database_url: str | None = None
    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # image tower numerics; auto: a probed faster CPU path (indexer.precision) or CUDA autocast
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    batch_size: int = Field(default=64, ge=1, le=65536)
    workers: int = Field(default_factory=_default_workers, ge=0, le=256)
    max_image_pixels: int = Field(default=178_956_970, ge=1)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    # ---- search index (retrieval/index) ----
    index_shards: int | None = Field(default=None, ge=1, le=1024)  # id-range shards; None: keep the collection's
    # ---- HTTP API (ui/api) ----
    api_require_key_for_reads: bool = False  # also require an X-API-Key (scope read) on every read route
    api_library_roots: list[Path] = Field(default_factory=list)  # index jobs may only index under these
    api_max_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1)  # largest request body (413 beyond)
    api_max_upload_pixels: int = Field(default=50_000_000, ge=1)  # largest uploaded image (422 beyond)
    api_cors_origins: list[str] = Field(default_factory=list)  # CORS off unless origins are listed
    # ---- answering (answerer/) ----
    vlm: str = DEFAULT_VLM  # Hub id or local save_pretrained folder of an image-text-to-text model
    vlm_strategy: Literal["auto", "joint", "per-photo"] = "auto"  # auto: joint for multi-image models
    vlm_max_images: int = Field(default=6, ge=1, le=64)  # photos shown per prompt (joint strategy)
    vlm_max_image_side: int = Field(default=1024, ge=32)  # photos are shrunk to this longest side first
    vlm_max_image_tokens: int = Field(default=1024, ge=16)  # per image, where the model lets us bound it
    vlm_max_new_tokens: int = Field(default=256, ge=1, le=8192)
    vlm_min_relevance: float = Field(default=0.2, ge=-1.0, le=1.0)  # below: "nothing relevant" (CLIP cosine)
    vlm_caption_prompt: str = "Describe this photo in one sentence."
    vlm_rerank_template: str = "Does this photo show {query}? Answer yes or no."

    @field_validator("collection", mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        if isinstance(value, (str, Path)):
            return Path(value).expanduser()
        return value

    @field_validator("pretrained", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in {"", "none", "random"}:
            return None
        return value


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment, then apply explicit (non-None) overrides."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
