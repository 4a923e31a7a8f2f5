"""The ``photodex`` CLI, one module per command family.

Modules:
    app       the parser (registers each command module) and the one error-to-exit-code mapping
    common    the shared option groups (defined once) and settings from flags + environment
    indexing  index, reindex, info
    search    search, similar
    classify  classify, tags, eval zeroshot
    evaluate  eval retrieval, and several --model values compared in one table (eval zeroshot too)
    moderation  policy, moderate, calibrate, decisions
    answer    ask, caption, rerank, eval pope
    serve     serve (the API), apikey
    web       ui (the Streamlit app)
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``photodex`` script."""
    from .app import main as _main

    return _main(argv)
