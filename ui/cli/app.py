"""The ``photodex`` command line: builds the parser from each command module and maps errors once.

Exit codes: 0 success; 2 a :class:`~indexer.core.errors.PhotodexError` (bad input, configuration,
busy writer) printed as one line; 130 interrupted; 1 with a traceback for anything else (a bug).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from indexer.core.errors import PhotodexError

from . import answer, classify, indexing, moderation, search, serve, web
from .common import EXIT_USAGE

COMMAND_MODULES = (indexing, search, classify, moderation, serve, answer, web)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="photodex", description="Search, tag and question a photo library.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
