"""The one settings object of the CLI and the API: every layer's part, read from ``PHOTODEX_*`` at start-up.

Each part is declared beside what it configures (:mod:`indexer.core.settings`, :mod:`retrieval.index.settings`,
:mod:`retrieval.search.settings`, :mod:`ui.api.settings`, :mod:`answerer.settings`); only ``ui`` may import every layer, so they are joined here.
"""

from __future__ import annotations

from answerer.settings import VlmSettings
from indexer.core.settings import SETTINGS_CONFIG, IndexerSettings
from retrieval.index.settings import IndexSettings
from retrieval.search.settings import SearchSettings
from ui.api.settings import ApiSettings


# Bases listed top layer first: pydantic collects fields from the last base up, so they keep the order
# indexer, index, search, API, VLM.
class Settings(VlmSettings, ApiSettings, SearchSettings, IndexSettings, IndexerSettings):
    """All knobs of photodex; every field can be set as ``PHOTODEX_<NAME>``."""

    model_config = SETTINGS_CONFIG


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment, then apply explicit (non-None) overrides."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
