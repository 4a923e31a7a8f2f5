"""Image budget: how many photos, how many tokens each, and whether a prompt fits the context.

Everything here is pure (no model): images are selected and shrunk before the processor runs,
model-family processor options bound the tokens per image where the family allows it, and the
image tokens actually present in ``input_ids`` are counted so that a prompt over the model's
context is refused with a clear error instead of failing inside ``generate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from indexer.core.errors import InputError

__all__ = [
    "MIN_ANSWER_TOKENS",
    "Dropped",
    "ImageBudget",
    "PromptTooLongError",
    "answer_room",
    "check_context",
    "count_image_tokens",
    "drop_to_fit",
    "processor_kwargs",
    "select",
    "shrink",
]

T = TypeVar("T")

#: Families whose processor takes a pixel budget (dynamic resolution): pixels per token.
_PIXELS_PER_TOKEN = {"qwen2_vl": 28 * 28, "qwen2_5_vl": 28 * 28, "qwen3_vl": 32 * 32}
#: Families that split a large image into tiles unless told not to (Idefics3 / SmolVLM).
_SPLITTING = frozenset({"idefics3", "smolvlm"})


#: A prompt must leave room for at least this many answer tokens (or ``max_new_tokens`` if fewer);
#: ``max_new_tokens`` beyond the room left is clamped rather than refused.
MIN_ANSWER_TOKENS = 16


def answer_room(max_new_tokens: int) -> int:
    """Answer tokens a prompt must leave free in the context."""
    return min(max_new_tokens, MIN_ANSWER_TOKENS)


class PromptTooLongError(InputError):
    """The prompt (text + image tokens + answer room) does not fit the model's context."""


@dataclass(frozen=True)
class ImageBudget:
    """Bounds applied before ``generate``: photos per prompt, pixels and tokens per photo."""

    max_images: int = 6
    max_image_side: int = 1024
    max_image_tokens: int = 1024

    def validate(self) -> ImageBudget:
        for name in ("max_images", "max_image_side", "max_image_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self


@dataclass
class Dropped:
    """A retrieved photo that was not shown to the model, and why."""

    id: int
    reason: str  # "max_images", "context", "unreadable: ...", "collapsed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select(items: Sequence[T], max_images: int) -> tuple[list[T], list[T]]:
    """(kept, dropped): the first ``max_images`` items (callers pass them best first)."""
    return list(items[:max_images]), list(items[max_images:])


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` with its longest side at most ``max_side`` (aspect kept; never enlarged)."""
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BICUBIC)


def processor_kwargs(model_type: str, n_images: int, budget: ImageBudget) -> dict[str, Any]:
    """Processor options that bound the tokens per image for this model family.

    * Qwen2-VL / Qwen2.5-VL / Qwen3-VL: a pixel budget (``size.longest_edge`` = max pixels).
    * Idefics3 / SmolVLM: no tiling when several images share a prompt or the tiles would not fit.
    * LLaVA-OneVision switches to its 729-token-per-image path by itself for several images;
      LLaVA-1.5 is a fixed 576 tokens per image; LLaVA-NeXT's any-res tiles are counted after
      processing and handled by :func:`check_context`.
    """
    if model_type in _PIXELS_PER_TOKEN:
        max_pixels = budget.max_image_tokens * _PIXELS_PER_TOKEN[model_type]
        return {"size": {"shortest_edge": min(56 * 56, max_pixels), "longest_edge": max_pixels}}
    if model_type in _SPLITTING and (n_images > 1 or budget.max_image_tokens < 1024):
        return {"do_image_splitting": False}
    return {}


def count_image_tokens(input_ids: Any, image_token_id: int | None) -> list[int]:
    """Image placeholder tokens per row of ``input_ids`` (a tensor or array, 1-D or 2-D)."""
    if image_token_id is None:
        return [0] * (1 if np.ndim(np.asarray(input_ids)) == 1 else len(input_ids))
    ids = np.asarray(input_ids.cpu() if hasattr(input_ids, "cpu") else input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    return [int(n) for n in (ids == image_token_id).sum(axis=1)]


def check_context(n_tokens: int, image_tokens: int, n_images: int, max_new_tokens: int,
                  context: int | None) -> None:
    """Raise :class:`PromptTooLongError` unless the prompt leaves :func:`answer_room` in ``context``."""
    room = answer_room(max_new_tokens)
    if context is None or n_tokens + room <= context:
        return
    per_image = image_tokens / n_images if n_images else 0
    raise PromptTooLongError(
        f"the prompt needs {n_tokens} tokens ({image_tokens} of them for {n_images} image(s), "
        f"~{per_image:.0f} each) plus at least {room} for the answer, over the model's context of "
        f"{context} tokens; ask about fewer photos (-k / PHOTODEX_VLM_MAX_IMAGES) or lower "
        f"PHOTODEX_VLM_MAX_IMAGE_TOKENS")


def drop_to_fit(n_tokens: int, image_tokens: int, n_images: int, max_new_tokens: int,
                context: int | None) -> int:
    """How many images (from the end) to drop so the prompt fits; ``n_images`` if none can stay.

    Each image is charged its share of the whole prompt (image tokens plus its introduction), so
    the estimate never drops too many; callers re-check after dropping and repeat."""
    room = answer_room(max_new_tokens)
    if context is None or n_tokens + room <= context:
        return 0
    if n_images == 0 or image_tokens == 0:
        return n_images
    per_image = n_tokens / n_images
    over = n_tokens + room - context
    return min(n_images, math.ceil(over / per_image))
