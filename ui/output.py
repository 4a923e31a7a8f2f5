"""How every CLI command prints: JSON for machines, a text rendering for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

_CONTROL = {i: f"\\x{i:02x}" for i in range(32)} | {0x7F: "\\x7f", ord("\n"): "\\n", ord("\t"): "\\t",
                                                     ord("\r"): "\\r", ord("\\"): "\\\\"}


def printable(text: str) -> str:
    """One-line text form of a name: newlines, tabs and other control characters escaped."""
    if text.isprintable() and "\\" not in text:
        return text
    return text.translate(_CONTROL)


def emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    """Write ``data`` to stdout as indented JSON or as ``text(data)``."""
    sys.stdout.write((json.dumps(data, indent=2, default=str) if as_json else text(data)) + "\n")
