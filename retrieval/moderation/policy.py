"""The moderation policy file: schema, validation and loading (JSON or YAML).

A policy names concepts; each concept has positive prompts (expanded with a template set into
a prompt ensemble), optional contrast prompts (the score is then the margin over the best
contrast), a decision threshold, an optional lower review threshold and an action. Any invalid
field raises :class:`~indexer.core.errors.InputError` naming the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from indexer.core.errors import InputError
from retrieval.classify.labels import validate_classnames
from retrieval.classify.templates import ensure_templates

from ..outcomes import ACTIONS

MAX_CONCEPTS = 63  # decisions pack one bit per concept into an int64
STARTER_POLICY = Path(__file__).resolve().parent / "policies" / "starter.json"

Action = Literal["flag", "quarantine", "block"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _./-]{0,63}$")


class PolicyError(InputError):
    """A policy (file or stored version) that cannot be used; the message names the field."""


def _check_name(value: str, what: str) -> str:
    value = value.strip()
    if not _NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r} must be 1-64 characters: letters, digits, space, _ . / - "
                         "(starting with a letter or digit)")
    return value


class Concept(BaseModel):
    """One moderated concept: prompts, contrast prompts, thresholds and action."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    prompts: list[str] = Field(min_length=1)
    templates: str | list[str] | None = None  # a template set name, a list of templates, or None (verbatim)
    contrast: list[str] = Field(default_factory=list)
    threshold: float = Field(ge=-1.0, le=1.0)
    review_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    action: Action = "flag"
    special_care: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, "concept name")

    @field_validator("prompts", "contrast")
    @classmethod
    def _prompts(cls, value: list[str]) -> list[str]:
        value = [p.strip() for p in value]
        if any(not p for p in value):
            raise ValueError("prompts must not be empty strings")
        if value:
            validate_classnames(value)  # duplicates (case/whitespace-insensitive) are refused
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Concept":
        if self.review_threshold is not None and self.review_threshold > self.threshold:
            raise ValueError(f"review_threshold {self.review_threshold} is above threshold {self.threshold}; "
                             "the review band lies below the decision threshold")
        same = {p.casefold() for p in self.prompts} & {p.casefold() for p in self.contrast}
        if same:
            raise ValueError(f"prompt(s) {sorted(same)} are both positive and contrast")
        self.template_list()  # a bad template set fails here, not at scoring time
        return self

    def template_list(self) -> tuple[str, ...]:
        """The templates the prompts are expanded with (``("{}",)`` when none are given)."""
        return ("{}",) if self.templates is None else ensure_templates(self.templates)


class Policy(BaseModel):
    """A named set of concepts and the special-care adjustment (see :mod:`retrieval.moderation.decide`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    concepts: list[Concept] = Field(min_length=1, max_length=MAX_CONCEPTS)
    special_care_adjustment: float = Field(default=0.01, ge=0.0, le=0.5)
    encoder: str | None = None  # spec id the thresholds were set for; refused on another encoder

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, "policy name")

    @model_validator(mode="after")
    def _unique(self) -> "Policy":
        seen: set[str] = set()
        for c in self.concepts:
            key = c.name.casefold()
            if key in seen:
                raise ValueError(f"concept {c.name!r} is given twice")
            seen.add(key)
        return self

    @property
    def concept_names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def concept(self, name: str) -> Concept:
        """The concept called ``name``; :class:`PolicyError` listing the known ones otherwise."""
        for c in self.concepts:
            if c.name == name:
                return c
        raise PolicyError(f"unknown concept {name!r} in policy {self.name!r}; "
                          f"concepts: {', '.join(self.concept_names)}")

    def with_concept(self, concept: Concept) -> "Policy":
        """A copy with the concept of the same name replaced (validated again)."""
        self.concept(concept.name)
        data = self.to_dict()
        data["concepts"] = [concept.model_dump() if c.name == concept.name else c.model_dump()
                            for c in self.concepts]
        return parse_policy(data, f"policy {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _explain(exc: ValidationError, source: str) -> PolicyError:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(x) for x in err["loc"]) or "policy"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "literal_error" and err["loc"] and err["loc"][-1] == "action":
            msg = f"unknown action {err.get('input')!r}; use one of {', '.join(ACTIONS)}"
        parts.append(f"{where}: {msg}")
    return PolicyError(f"invalid policy {source}: " + "; ".join(parts))


def parse_policy(data: Any, source: str = "<policy>") -> Policy:
    """Validate a decoded policy document; :class:`PolicyError` naming the first bad fields."""
    if not isinstance(data, dict):
        raise PolicyError(f"invalid policy {source}: expected an object with name and concepts")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, source) from None
    except InputError as exc:  # a template set or label error raised inside a validator
        raise PolicyError(f"invalid policy {source}: {exc}") from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file (``.json``, or ``.yaml``/``.yml`` with PyYAML installed)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise PolicyError(f"{path}: YAML policies need PyYAML (pip install pyyaml), or use JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PolicyError(f"{path} is not valid JSON: {exc}") from None
    return parse_policy(data, str(path))
