"""The search index's settings (``PHOTODEX_INDEX_*``), one part of :class:`ui.settings.Settings`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from indexer.core.settings import SETTINGS_CONFIG


class IndexSettings(BaseSettings):
    """How the collection's vector index is laid out."""

    model_config = SETTINGS_CONFIG

    index_shards: int | None = Field(default=None, ge=1, le=1024)  # id-range shards; None: keep the collection's
