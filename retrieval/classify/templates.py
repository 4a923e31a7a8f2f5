"""Prompt template sets for zero-shot classification.

A template is a ``str.format`` pattern with exactly one empty placeholder ``{}``
that receives the label, e.g. ``"a photo of a {}."`` (literal braces are written
``{{`` / ``}}``). Sets are plain text files, one template per line; blank lines
and lines starting with ``#`` are ignored.

Built-in sets (``retrieval/template_sets/*.txt``):

* ``imagenet80`` - the 80 ImageNet prompts of the CLIP paper
  (``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``);
* ``imagenet7`` - the 7-prompt subset (``SIMPLE_IMAGENET_TEMPLATES``);
* ``photos`` - prompts suited to personal photo libraries;
* clip_benchmark's per-data-set sets by its data set names (``cifar10``, ``cifar100``, ``imagenet1k``,
  ``food101``, ``sun397``, ``cars``, ...; ``openai_imagenet`` is its ``imagenet1k``, the CLIP paper's
  80), from ``template_sets/clip_benchmark_en.json`` (clip_benchmark 1.6.2, MIT licence), so a
  figure uses the prompts its leaderboard used.
"""

from __future__ import annotations

import functools
import json
import string
from collections.abc import Iterable, Sequence
from pathlib import Path

from indexer.core.errors import InputError

__all__ = [
    "TEMPLATE_SET_DIR",
    "TemplateError",
    "ensure_templates",
    "list_template_sets",
    "load_templates",
    "parse_templates",
    "validate_template",
]

TEMPLATE_SET_DIR = Path(__file__).resolve().parent / "template_sets"
CLIP_BENCHMARK_SETS = TEMPLATE_SET_DIR / "clip_benchmark_en.json"
ALIASES = {"openai_imagenet": "imagenet1k"}
_FORMATTER = string.Formatter()


class TemplateError(InputError):
    """A template set is unknown, empty or contains an invalid template."""


@functools.cache
def _clip_benchmark_sets() -> dict[str, tuple[str, ...]]:
    sets = json.loads(CLIP_BENCHMARK_SETS.read_text(encoding="utf-8"))["sets"]
    out = {name: parse_templates(lines, source=f"clip_benchmark set {name}") for name, lines in sets.items()}
    out.update({alias: out[name] for alias, name in ALIASES.items()})
    return out


def _own_sets() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_SET_DIR.glob("*.txt"))


def list_template_sets() -> list[str]:
    """Names of the built-in template sets: photodex's own, then clip_benchmark's, each sorted."""
    own = _own_sets()
    return own + sorted(n for n in _clip_benchmark_sets() if n not in own)


def validate_template(template: str, where: str = "template") -> str:
    """Return *template* if it has exactly one empty ``{}`` placeholder, else raise.

    *where* names the template's origin (e.g. ``"file.txt line 3"``) in messages.
    """
    if not isinstance(template, str):
        raise TemplateError(f"{where}: template must be a str, got {type(template).__name__}")
    try:
        fields = [
            (name, spec, conv)
            for _, name, spec, conv in _FORMATTER.parse(template)
            if name is not None
        ]
    except ValueError as exc:  # unmatched braces
        raise TemplateError(f"{where}: malformed template {template!r}: {exc}") from exc
    if not fields:
        raise TemplateError(f"{where}: template {template!r} has no '{{}}' placeholder for the label")
    if len(fields) > 1:
        raise TemplateError(
            f"{where}: template {template!r} has {len(fields)} placeholders; exactly one '{{}}' is allowed"
        )
    name, spec, conv = fields[0]
    if name or spec or conv:
        raise TemplateError(
            f"{where}: template {template!r} must use a bare '{{}}' placeholder "
            "(no names, indices, conversions or format specs)"
        )
    return template


def parse_templates(lines: Iterable[str], source: str = "<templates>") -> tuple[str, ...]:
    """Parse template-file lines (comments/blank lines skipped) and validate each one."""
    templates: list[str] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        templates.append(validate_template(line, where=f"{source} line {lineno}"))
    if not templates:
        raise TemplateError(f"{source}: no templates found (file is empty or only comments)")
    return tuple(templates)


def load_templates(name_or_path: str | Path) -> tuple[str, ...]:
    """Load a built-in template set by name (see :func:`list_template_sets`) or a file path."""
    if isinstance(name_or_path, str) and name_or_path in _own_sets():
        path = TEMPLATE_SET_DIR / f"{name_or_path}.txt"
    elif isinstance(name_or_path, str) and name_or_path in _clip_benchmark_sets():
        return _clip_benchmark_sets()[name_or_path]
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise TemplateError(
                f"unknown template set {str(name_or_path)!r}: not a built-in set "
                f"({', '.join(list_template_sets())}) and not an existing file"
            )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read template file {str(path)!r}: {exc}") from exc
    return parse_templates(text.splitlines(), source=str(path))


def ensure_templates(templates: str | Path | Sequence[str]) -> tuple[str, ...]:
    """Accept a set name, a file path or a sequence of templates; return validated templates."""
    if isinstance(templates, (str, Path)):
        return load_templates(templates)
    out = tuple(validate_template(t, where=f"template #{i}") for i, t in enumerate(templates))
    if not out:
        raise TemplateError("no templates given")
    return out
