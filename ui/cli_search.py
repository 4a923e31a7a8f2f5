"""Search and classification commands (filled in by the retrieval layer)."""

from __future__ import annotations

from typing import Any


def register(sub: Any, common: Any, model_args: Any) -> None:
    """Register retrieval commands on the ``photodex`` parser."""
