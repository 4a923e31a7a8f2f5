"""The fast text path's settings (``PHOTODEX_TEXT_TOWER_*``), one part of :class:`ui.settings.Settings`."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings

from indexer.core.settings import SETTINGS_CONFIG


class SearchSettings(BaseSettings):
    """How the collection's text tower is exported (:mod:`retrieval.search.text_tower_job`)."""

    model_config = SETTINGS_CONFIG

    # background: a low-priority child exports the text tower after the run (it returns once its vectors are
    # durable); inline: the run exports it before returning (e.g. an image build that must ship it ready)
    text_tower_export: Literal["background", "inline"] = "background"
