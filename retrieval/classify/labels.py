"""Class labels for zero-shot classification: validation and prompt expansion."""

from __future__ import annotations

from collections.abc import Sequence

from indexer.core.errors import InputError


class LabelError(InputError):
    """A label list that cannot be used (empty, blank or duplicated labels)."""


def validate_classnames(classnames: Sequence[str]) -> tuple[str, ...]:
    """Return the labels as a tuple; raise ``ValueError`` if empty, blank or duplicated.

    Duplicates are detected case-insensitively and ignoring whitespace differences
    ("Golden  Retriever" duplicates "golden retriever").
    """
    if isinstance(classnames, str):
        raise LabelError("classnames must be a sequence of labels, not a single string")
    names = tuple(classnames)
    if not names:
        raise LabelError("no class labels given: the label list is empty")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise LabelError(f"class label #{i} must be a str, got {type(name).__name__}")
        key = " ".join(name.split()).casefold()
        if not key:
            raise LabelError(f"class label #{i} is empty or whitespace-only")
        if key in seen:
            j = seen[key]
            raise LabelError(
                f"duplicate class labels #{j} {names[j]!r} and #{i} {name!r} "
                "(labels are compared case- and whitespace-insensitively)"
            )
        seen[key] = i
    return names


def expand_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, class-major: ``[t.format(c) for c in classnames for t in templates]``."""
    return [t.format(c) for c in classnames for t in templates]
