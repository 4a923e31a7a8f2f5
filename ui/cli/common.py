"""What every command shares: common options, settings from flags and environment, opening."""

from __future__ import annotations

import argparse
import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.collection import Collection
    from ui.settings import Settings

EXIT_OK = 0
EXIT_USAGE = 2


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the command's explicit flags on top; their decompression-bomb
    limit becomes this process's, so a query image meets the limit the index's decode workers use.

    ``Settings.model_fields_set`` then says which fields were given (flag or ``PHOTODEX_*``)."""
    from indexer.encode.decode import set_max_image_pixels
    from ui.settings import get_settings  # pydantic-settings: ~0.1-0.2 s, not needed for --help

    settings = get_settings(
        collection=getattr(args, "collection", None),
        database_url=getattr(args, "database_url", None),
        model=getattr(args, "model", None),
        pretrained=getattr(args, "pretrained", None),
        device=getattr(args, "device", None),
        precision=getattr(args, "precision", None),
        batch_size=getattr(args, "batch_size", None),
        workers=getattr(args, "workers", None),
    )
    set_max_image_pixels(settings.max_image_pixels)
    return settings


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", help="collection folder (default: $PHOTODEX_COLLECTION)")
    p.add_argument("--database-url", help="SQLAlchemy URL of the catalog (default: SQLite in the collection)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="count", default=0)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="open_clip model name, hf-hub:ORG/REPO or local-dir:PATH")
    p.add_argument("--pretrained", help="pretrained tag or path to a weights file ('none' for random init)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", metavar="{auto,fp32,bf16,fp16,int8}",  # checked by Settings: one line, exit 2
                   help="image-tower numerics (default: $PHOTODEX_PRECISION, else auto: the fastest path this CPU "
                        "offers whose vectors match fp32's, probed once per encoder and machine; CUDA: autocast)")


@functools.cache
def _options_parser(model: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    _common_options(p)
    if model:
        _model_options(p)
    return p


def shared_options(model: bool = False) -> list[argparse.ArgumentParser]:
    """``parents=`` for a command's ``add_parser``: the options every command takes (collection, catalog URL,
    ``--json``, ``-v``) and, with ``model``, the encoder choice; defined once here."""
    return [_options_parser(model)]


def open_collection(settings: Settings) -> "Collection":
    """Open the existing collection of ``settings`` for reading (a clear error if there is none)."""
    from indexer.collection import Collection

    return Collection.open(settings.collection, settings.database_url)


Subparsers = Any  # argparse's private _SubParsersAction
