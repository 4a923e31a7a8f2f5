"""The progress callback every long run reports through: ``progress(phase, done, total)``."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]
"""Called with a phase name ("hash", "encode", ...), units done so far and the total."""
