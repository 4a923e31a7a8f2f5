"""The ``photodex`` command line: builds the parser from each command module and maps errors once.

Exit codes: 0 success; 2 a :class:`~indexer.core.errors.PhotodexError` (bad input, configuration,
busy writer) or a read-only or full disk (:mod:`indexer.core.storage_errors`) printed as one line;
130 interrupted; 1 with a traceback for anything else (a bug).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from indexer.core.errors import PhotodexError

from . import answer, classify, indexing, moderation, search, serve, web
from .common import EXIT_USAGE, settings_from

COMMAND_MODULES = (indexing, search, classify, moderation, serve, answer, web)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="photodex", description="Search, tag and question a photo library.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _cheap_exit() -> None:
    """At exit, CPython's finalisation runs full garbage collections over every object still alive: after torch
    and open_clip are imported that is millions of objects, ~1.5 s of a run (~3 s on a busy 2-core box), for
    nothing (the process is ending). ``gc.freeze`` moves them to the permanent generation those passes skip.
    Registered with ``atexit``, so it acts only once the process is exiting (never between in-process calls)."""
    if not getattr(_cheap_exit, "registered", False):
        atexit.register(gc.freeze)
        _cheap_exit.registered = True  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    _cheap_exit()
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(getattr(args, "verbose", 0), 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from pydantic import ValidationError

    try:
        return int(args.func(args) or 0)
    except PhotodexError as exc:
        sys.stderr.write(f"photodex: error: {exc}\n")
        return EXIT_USAGE
    except ValidationError as exc:  # settings from the environment
        first = exc.errors()[0]
        sys.stderr.write(f"photodex: error: invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("photodex: interrupted; run the same command again to resume\n")
        return 130
    except Exception as exc:
        from indexer.core.storage_errors import storage_error

        err = storage_error(exc, _catalog_of(args))
        if err is None:
            raise
        sys.stderr.write(f"photodex: error: {err}\n")
        return EXIT_USAGE


def _catalog_of(args: argparse.Namespace) -> str | None:
    """The command's catalog as an error names it (the SQLite file, or the URL without its password)."""
    try:
        from sqlalchemy.engine import make_url

        from indexer.collection import CATALOG_FILE

        settings = settings_from(args)
        if settings.database_url:
            return make_url(settings.database_url).render_as_string(hide_password=True)
        return str(Path(settings.collection).expanduser() / CATALOG_FILE)
    except Exception:  # noqa: BLE001 - only words a message
        return None
