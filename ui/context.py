"""Shared wiring for the CLI and the API: settings → encoder → collection.

The encoder is chosen by provenance (``Settings.model_fields_set``): an explicitly given model
(flag or ``PHOTODEX_MODEL``) wins; otherwise an existing collection's own encoder is used; the
default setting applies only to a new collection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.collection import MANIFEST, Collection, read_manifest
from ui.settings import Settings
from indexer.core.spec import EncoderSpec

if TYPE_CHECKING:
    from indexer.encode.encoders import Encoder

log = logging.getLogger(__name__)


def encoder_choice(settings: Settings) -> tuple[str, str | None]:
    """The model to use: the explicit one, else the collection's own, else the default setting."""
    given = {"model", "pretrained"} & settings.model_fields_set
    if not given and (Path(settings.collection) / MANIFEST).exists():
        spec = EncoderSpec.from_dict(read_manifest(Path(settings.collection))["encoder"])
        return spec.model, spec.pretrained
    return settings.model, settings.pretrained


def load_chosen_encoder(settings: Settings) -> "Encoder":
    from indexer.encode.encoders import load_encoder

    model, pretrained = encoder_choice(settings)
    return load_encoder(model, pretrained, settings.device, settings.precision)


def open_for_indexing(settings: Settings) -> tuple[Collection, Callable[[], "Encoder"]]:
    """(collection, encoder loader) for an index run; the encoder loads only when needed.

    An existing collection opens from its manifest without loading a model (an explicitly given
    other model is refused once loaded); a new collection needs the encoder's spec first."""
    if (Path(settings.collection) / MANIFEST).exists():
        coll = Collection.open(settings.collection, settings.database_url)
        cached: list[Any] = []

        def load() -> "Encoder":
            if not cached:
                cached.append(load_chosen_encoder(settings))
            return cached[0]

        if {"model", "pretrained"} & settings.model_fields_set:
            try:
                coll.check_encoder(load().spec)  # refuse a mismatch before touching anything
            except BaseException:
                coll.close()
                raise
        return coll, load
    encoder = load_chosen_encoder(settings)
    coll = Collection.open_for_encoder(settings.collection, encoder.spec, settings.database_url)
    return coll, lambda: encoder


def open_for_search(settings: Settings, text_only: bool = False, one_shot: bool = True) -> tuple[Collection, Any]:
    """Open the collection and an encoder for it, refusing an encoder mismatch.

    ``text_only`` (a text search) with no explicitly chosen model uses the fast text path:
    query cache, then the collection's exported text tower, then the full model — no torch and
    no vision tower unless the export is missing. ``one_shot`` (a CLI command answering one query)
    trades a little per-query speed for a faster start."""
    coll = Collection.open(settings.collection, settings.database_url)
    try:
        if text_only and not ({"model", "pretrained"} & settings.model_fields_set):
            from retrieval.search.text_encoder import FastTextEncoder

            return coll, FastTextEncoder(coll.path, coll.spec, lambda: load_checked_encoder(coll, settings),
                                         one_shot=one_shot)
        return coll, load_checked_encoder(coll, settings)
    except BaseException:
        coll.close()
        raise


def load_checked_encoder(coll: Collection, settings: Settings) -> "Encoder":
    """The chosen encoder, refused unless the collection was built with it."""
    encoder = load_chosen_encoder(settings)
    coll.check_encoder(encoder.spec)
    return encoder


def ensure_fast_text_path(coll: Collection, settings: Settings, load: Callable[[], "Encoder"]) -> dict[str, Any]:
    """Make the collection's fast text path ready or on its way (writer only); ``{"state", "why"}`` with
    state ready, pending (exporting in the background), failed or missing (see :mod:`retrieval.search.text_tower_job`).

    ``text_tower_export="background"`` (the default) loads nothing here: the export, when this user's cache
    does not already hold it, runs in a low-priority child after the run; ``"inline"`` exports now with the
    run's own encoder (loaded only if the export is missing)."""
    from retrieval.search.text_tower_job import background_supported, export_state, start_export

    state = export_state(coll.path, coll.spec.id)
    if state["state"] == "ready":
        return state
    if settings.text_tower_export == "background" and background_supported():
        model, pretrained = encoder_choice(settings)
        state = start_export(coll.path, coll.spec.id, model, pretrained)
    else:
        from retrieval.search.text_tower import TextTowerError
        from retrieval.search.text_tower_export import ensure_text_tower

        try:
            ensure_text_tower(coll.path, load())
            state = {"state": "ready", "why": "exported by this run"}
        except TextTowerError as exc:
            state = {"state": "failed", "why": str(exc)}
    if state["state"] == "failed":
        log.warning("the fast text path is not available: %s; text searches use the full model, and the next "
                    "index or reindex tries again", state["why"])
    elif state.get("previous"):
        log.warning("the last text-tower export failed (%s); trying again", state["previous"])
    return state


def fast_text_path_line(state: dict[str, Any]) -> str:
    """The run summary's line about the fast text path."""
    if state["state"] == "ready":
        return f"fast text path: ready ({state['why']})"
    if state["state"] == "pending":
        return "fast text path: " + state["why"]
    retry = f" (the last export failed: {state['previous']})" if state.get("previous") else ""
    return (f"warning: fast text path not available: {state['why']}{retry}; text searches use the full model; "
            "the next index or reindex tries again")


def ingest_hook() -> Callable[..., Any]:
    """What every index run does with each committed batch: the active moderation policy's decisions
    (imported at the first batch, so a run with nothing to encode stays light)."""

    def decide(*args: Any, **kwargs: Any) -> Any:
        from retrieval.moderation.rescan import decide_in_session

        return decide_in_session(*args, **kwargs)

    return decide
