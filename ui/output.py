"""How every CLI command prints: JSON for machines, a text rendering for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    """Write ``data`` to stdout as indented JSON or as ``text(data)``."""
    sys.stdout.write((json.dumps(data, indent=2, default=str) if as_json else text(data)) + "\n")
