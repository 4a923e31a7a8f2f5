"""Citations: parse the photo ids an answer cites and check them against the photos shown.

The prompt asks the model to cite photos as ``[#12]``; models also write ``[#12, #15]``,
``[12]``, ``#12`` or ``photo 12``, and all of these are read. A cited id that was not among the
photos shown to the model is *invented*: it is dropped from the citations and reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["CitationCheck", "check_citations", "cite", "parse_citations"]

_BRACKET = re.compile(r"\[\s*#?\s*\d+(?:\s*[,;]\s*#?\s*\d+)*\s*\]")
_LOOSE = re.compile(r"(?:#|\bphotos?\s+#?|\bid\s*#?)\s*(\d+)\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+")


def cite(photo_id: int) -> str:
    """The citation marker photodex asks for and writes: ``[#12]``."""
    return f"[#{photo_id}]"


def parse_citations(text: str) -> list[int]:
    """Cited photo ids in order of first appearance (bracket lists, ``#N``, ``photo N``)."""
    found: list[tuple[int, int]] = []  # (position, id)
    for m in _BRACKET.finditer(text):
        found += [(m.start() + n.start(), int(n.group())) for n in _NUMBER.finditer(m.group())]
    rest = _BRACKET.sub(lambda m: " " * len(m.group()), text)
    found += [(m.start(), int(m.group(1))) for m in _LOOSE.finditer(rest)]
    seen: dict[int, None] = {}
    for _, pid in sorted(found):
        seen.setdefault(pid, None)
    return list(seen)


@dataclass
class CitationCheck:
    """The ids an answer cites, split into those among the photos shown and invented ones."""

    cited: list[int] = field(default_factory=list)  # cited and shown, in order
    invented: list[int] = field(default_factory=list)  # cited but never shown: dropped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_citations(text: str, shown: Iterable[int]) -> CitationCheck:
    """Parse ``text``'s citations and keep only ids of photos actually ``shown``."""
    shown_set = set(shown)
    ids = parse_citations(text)
    return CitationCheck([i for i in ids if i in shown_set], [i for i in ids if i not in shown_set])
