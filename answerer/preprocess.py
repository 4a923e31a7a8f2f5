"""VLM batch preprocessing without the processor's per-call waste, checked against the processor.

A Hugging Face processor call renders nothing, but for every batch it re-expands and re-tokenises
every prompt and runs the image processor image by image. With a small model that is a large share
of the time (see ``bench/results/answerer-cpu-2core.md``). Here:

* images are brought to the processor's input size once, when that size is fixed (shortest-edge
  resize + centre crop, as CLIP/LLaVA-1.5 processors do), so the processor has nothing left to resize
  (:func:`fit`);
* the token ids of a row depend only on its prompt, its image sizes and the processor options, so
  they are memoised per such key (one real processor call per key) and left-padded here;
* pixels come from one image-processor call per batch, or, for a fixed-size square input, from one
  vectorised rescale + normalise of the stacked images.

Each way is compared once per model with the full processor call on a real batch (same keys,
same ids, pixels within 1e-5); a way that differs, or fails, is switched off for that model and
the processor is used as before. Families whose token count depends on the image (Qwen2-VL,
LLaVA-NeXT, Idefics3) use the memoised ids with the image processor's own pixels.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from .budget import shrink

log = logging.getLogger(__name__)

__all__ = ["CACHE_ENTRIES", "Preprocessor", "ProcessorSource", "fit", "fixed_input_side", "same_inputs"]

CACHE_ENTRIES = 512


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def fixed_input_side(image_processor: Any) -> int | None:
    """``S`` when the image processor resizes the shortest edge to ``S`` and centre-crops ``S x S``; else None."""
    ip = image_processor
    if ip is None or not getattr(ip, "do_resize", False) or not getattr(ip, "do_center_crop", False):
        return None
    side = _get(getattr(ip, "size", None), "shortest_edge")
    crop = getattr(ip, "crop_size", None)
    if not isinstance(side, int) or _get(crop, "height") != side or _get(crop, "width") != side:
        return None
    return side


def fit(image: Image.Image, max_side: int, side: int | None = None) -> Image.Image:
    """RGB ``image`` shrunk to ``max_side``, or, for a fixed ``side``, resized and centre-cropped to ``side x side``."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if side is None:
        return shrink(image, max_side)
    if image.size == (side, side):
        return image
    w, h = image.size
    scale = side / min(w, h)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    image = image.resize(size, Image.BICUBIC)
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    return image.crop((left, top, left + side, top + side))


def same_inputs(a: dict[str, Any], b: dict[str, Any], atol: float = 1e-5) -> bool:
    """Whether two processor outputs hold the same keys and values (floats within ``atol``)."""
    import torch

    if set(a) != set(b):
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            if x.is_floating_point():
                if not torch.allclose(x, y, atol=atol, rtol=atol):
                    return False
            elif not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


class ProcessorSource(Protocol):
    """What the preprocessor reads of a loaded model (:class:`answerer.vlm.VLM` is one); a protocol, so
    this module and ``answerer.vlm`` do not import each other."""

    model_id_or_path: str
    processor: Any  # the HF processor (image processor + tokenizer)

    @property
    def tokenizer(self) -> Any: ...


class Preprocessor:
    """Turns (prompts, images per prompt, processor options) into model inputs; see the module docstring."""

    def __init__(self, vlm: ProcessorSource) -> None:
        self.vlm = vlm
        self.checked: dict[str, bool] = {}  # way -> equal to the processor (missing: not checked yet)
        self._ids: OrderedDict[tuple[Any, ...], dict[str, list[int]]] = OrderedDict()
        self._lock = threading.Lock()

    # ---- the processor, as before --------------------------------------------------------
    def slow(self, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]],
             kwargs: dict[str, Any]) -> dict[str, Any]:
        """The full processor call on the batch."""
        image_arg = [list(row) for row in images] if any(images) else None  # nested: images per prompt
        return dict(self.vlm.processor(images=image_arg, text=list(prompts), return_tensors="pt", padding=True,
                                       **kwargs))

    # ---- the fast ways -------------------------------------------------------------------
    def run(self, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]],
            kwargs: dict[str, Any]) -> dict[str, Any]:
        """Model inputs for the batch: a checked fast way where one applies, else the processor."""
        if not any(images):
            return self.slow(prompts, images, kwargs)
        way = "square" if self._square(images, kwargs) else "ids"
        if self.checked.get(way) is False:
            return self.slow(prompts, images, kwargs)
        try:
            fast = self.fast(prompts, images, kwargs, way)
        except Exception as exc:  # noqa: BLE001 - any surprise: this way is off, the processor answers
            log.info("fast VLM preprocessing (%s) failed (%s: %s); using the processor", way, type(exc).__name__, exc)
            self.checked[way] = False
            return self.slow(prompts, images, kwargs)
        if way not in self.checked:
            reference = self.slow(prompts, images, kwargs)
            self.checked[way] = same_inputs(fast, reference)
            if not self.checked[way]:
                log.info("fast VLM preprocessing (%s) differs from the processor for %s; using the processor",
                         way, self.vlm.model_id_or_path)
                return reference
        return fast

    def fast(self, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]], kwargs: dict[str, Any],
             way: str) -> dict[str, Any]:
        import torch

        rows = [self.row_ids(p, imgs, kwargs) for p, imgs in zip(prompts, images)]
        width = max(len(r["input_ids"]) for r in rows)
        tokenizer = self.vlm.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        left = getattr(tokenizer, "padding_side", "right") == "left"

        def padded(seqs: list[list[int]], value: int) -> Any:
            fill = [[value] * (width - len(q)) for q in seqs]
            return torch.tensor([f + q if left else q + f for f, q in zip(fill, seqs)], dtype=torch.long)

        out: dict[str, Any] = {"input_ids": padded([r["input_ids"] for r in rows], int(pad)),
                               "attention_mask": padded([[1] * len(r["input_ids"]) for r in rows], 0)}
        for key in rows[0]:
            if key != "input_ids":  # other per-token ids (e.g. Qwen2-VL's mm_token_type_ids): 0 under padding
                out[key] = padded([r[key] for r in rows], 0)
        out.update(self.pixels(images, kwargs, way))
        return out

    def row_ids(self, prompt: str, images: Sequence[Image.Image], kwargs: dict[str, Any]) -> dict[str, list[int]]:
        """Per-token ids of one row (``input_ids`` and the like), memoised per (prompt, image sizes, options):
        the processor runs once per key."""
        key = (prompt, tuple(im.size for im in images), repr(sorted(kwargs.items())))
        with self._lock:
            ids = self._ids.get(key)
            if ids is not None:
                self._ids.move_to_end(key)
                return ids
        out = self.vlm.processor(images=[list(images)] if images else None, text=[prompt], return_tensors="pt",
                                 **kwargs)
        length = out["input_ids"].shape[-1]
        ids = {k: [int(t) for t in v[0]] for k, v in out.items()
               if k != "attention_mask" and getattr(v, "ndim", 0) == 2 and v.shape[-1] == length
               and not v.is_floating_point()}
        with self._lock:
            self._ids[key] = ids
            while len(self._ids) > CACHE_ENTRIES:
                self._ids.popitem(last=False)
        return ids

    def pixels(self, images: Sequence[Sequence[Image.Image]], kwargs: dict[str, Any], way: str) -> dict[str, Any]:
        """Image inputs for the batch: one vectorised normalise (square way) or one image-processor call."""
        import torch

        ip = self.vlm.processor.image_processor
        if way == "square":
            flat = [im for row in images for im in row]
            x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in flat]))
            x = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
            shift, scale = self._affine(ip)  # rescale then normalise, as one affine map per channel
            return {"pixel_values": x.sub_(shift).div_(scale)}
        return dict(ip([list(row) for row in images], return_tensors="pt", **kwargs))

    def _affine(self, ip: Any) -> tuple[Any, Any]:
        """(shift, scale) with ``(x * rescale - mean) / std == (x - shift) / scale`` for uint8 ``x``."""
        import torch

        cached = getattr(self, "_affine_cache", None)
        if cached is not None and cached[0] is ip:
            return cached[1]
        r = float(ip.rescale_factor) if getattr(ip, "do_rescale", False) else 1.0
        channels = len(ip.image_mean) if getattr(ip, "do_normalize", False) else 3
        mean = np.asarray(ip.image_mean if getattr(ip, "do_normalize", False) else [0.0] * channels, np.float64)
        std = np.asarray(ip.image_std if getattr(ip, "do_normalize", False) else [1.0] * channels, np.float64)
        shift = torch.tensor(mean / r, dtype=torch.float32).view(1, -1, 1, 1)
        scale = torch.tensor(std / r, dtype=torch.float32).view(1, -1, 1, 1)
        self._affine_cache = (ip, (shift, scale))
        return shift, scale

    def _square(self, images: Sequence[Sequence[Image.Image]], kwargs: dict[str, Any]) -> bool:
        side = fixed_input_side(getattr(self.vlm.processor, "image_processor", None))
        return (side is not None and not kwargs
                and all(im.size == (side, side) and im.mode == "RGB" for row in images for im in row))
