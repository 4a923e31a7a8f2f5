"""The indexer's settings (``PHOTODEX_*``): collection, catalog, encoder and the index run.

One part of the settings object the CLI and the API read (:class:`ui.settings.Settings` composes it with the
search index's, the API's and the VLM's parts); each part is declared beside the code it configures.
"""

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

# every settings part reads the environment the same way
SETTINGS_CONFIG = SettingsConfigDict(env_prefix="PHOTODEX_", env_nested_delimiter="__", extra="ignore")


def _default_collection() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "photodex" / "collection"


def _default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class IndexerSettings(BaseSettings):
    """The indexer's knobs; every field can be set as ``PHOTODEX_<NAME>``."""

    model_config = SETTINGS_CONFIG

    collection: Path = Field(default_factory=_default_collection)
    database_url: str | None = None
    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # image tower numerics; auto: a probed faster CPU path (indexer.encode.precision) or CUDA autocast
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    batch_size: int = Field(default=64, ge=1, le=65536)
    workers: int = Field(default_factory=_default_workers, ge=0, le=256)
    max_image_pixels: int = Field(default=178_956_970, ge=1)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    index_nice: int | None = Field(default=None, ge=0, le=19)  # index runs' nice; None: 10 if a server holds it

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
