"""Shared wiring for the CLI and the API: settings → encoder → collection."""

from __future__ import annotations

import json
import os
from pathlib import Path

from indexer.collection import MANIFEST, Collection
from indexer.encoders import Encoder, load_encoder
from indexer.settings import Settings


def encoder_choice(settings: Settings, model_given: bool) -> tuple[str, str | None]:
    """The model to use: the explicit one, else the collection's own, else the default setting."""
    manifest = Path(settings.collection) / MANIFEST
    if not model_given and "PHOTODEX_MODEL" not in os.environ and manifest.exists():
        try:
            enc = json.loads(manifest.read_text())["encoder"]
            return enc["model"], enc.get("pretrained")
        except (OSError, ValueError, KeyError):
            pass
    return settings.model, settings.pretrained


def open_with_encoder(settings: Settings, model_given: bool, create: bool = False) -> tuple[Collection, Encoder]:
    """Load the encoder and open (or create) the collection, refusing an encoder mismatch."""
    model, pretrained = encoder_choice(settings, model_given)
    encoder = load_encoder(model, pretrained, settings.device, settings.precision)
    if create:
        coll = Collection.open_for_encoder(settings.collection, encoder.spec, settings.database_url)
    else:
        coll = Collection.open(settings.collection, settings.database_url)
        coll.check_encoder(encoder.spec)
    return coll, encoder
