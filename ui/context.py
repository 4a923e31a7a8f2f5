"""Shared wiring for the CLI and the API: settings → encoder → collection."""

from __future__ import annotations

import os
from pathlib import Path

from indexer.collection import MANIFEST, Collection, read_manifest
from indexer.encoders import Encoder, load_encoder
from indexer.settings import Settings
from indexer.spec import EncoderSpec


def encoder_choice(settings: Settings, model_given: bool) -> tuple[str, str | None]:
    """The model to use: the explicit one, else the collection's own, else the default setting."""
    if not model_given and "PHOTODEX_MODEL" not in os.environ and (Path(settings.collection) / MANIFEST).exists():
        spec = EncoderSpec.from_dict(read_manifest(Path(settings.collection))["encoder"])
        return spec.model, spec.pretrained
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
