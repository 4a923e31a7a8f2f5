"""Classification commands (registered once the zero-shot layer is wired)."""

from __future__ import annotations

from typing import Any


def register(sub: Any, common: Any, model_args: Any) -> None:
    """Register classification commands."""
