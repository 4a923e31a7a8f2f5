"""Batched JPEG decoding on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``), CPU as fallback.

The CPU path (:func:`indexer.encode.decode.decode_photo` + the encoder's preprocess) is the reference; this
module reproduces it on tensors for the photos nvJPEG handles well, and leaves the rest to it:

* only baseline RGB/greyscale JPEGs go to the GPU (:func:`probe_jpeg`): CMYK/YCCK, progressive,
  Adobe-transform, multi-picture (MPO) and anything Pillow cannot parse stay on the CPU path;
* a batch that fails to decode (``decode_jpeg`` returns no partial results) falls back to per-image
  CPU decoding, so one odd file never costs more than itself;
* EXIF orientation is applied by hand (nvJPEG ignores it; torchvision only applies it on the CPU);
* the resize/crop/normalise of open_clip's eval transform is redone on tensors (:class:`TensorPreprocess`)
  for ``resize_mode`` "shortest" (square) and "squash"; other modes stay on the CPU path.

Tolerance: the CPU path DCT-scales JPEGs while decoding (``Image.draft``) and resizes with Pillow;
the GPU path decodes at full size and resizes with antialiased bicubic interpolation. Per image the
mean absolute difference of the resulting pixels is at most :data:`MEAN_ABS_TOLERANCE` (0-1 scale,
before normalisation); measured on the CPU twin of this path (``device="cpu"``) on photo-like
scenes from 640x480 to 12 MP, all eight orientations, it is at most 0.002 (224 px input).

``torchvision.io`` decoding is deprecated from torchvision 0.29 in favour of TorchCodec; it is still
the batched nvJPEG entry point here, used with its deprecation warning silenced.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..encode.decode import PhotoFacts, read_facts

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MEAN_ABS_TOLERANCE = 0.02  # per image, pixels on a 0-1 scale, GPU path vs CPU path


def cuda_decode_available() -> tuple[bool, str]:
    """Whether nvJPEG decoding can run in this process, and why not."""
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        return False, f"torchvision.io.decode_jpeg unavailable: {exc}"
    return True, "nvJPEG via torchvision"


@dataclass(frozen=True)
class JpegProbe:
    """What the header of a JPEG says: whether the GPU path takes it, its facts and orientation."""

    gpu_ok: bool
    facts: PhotoFacts
    orientation: int


def probe_jpeg(data: bytes) -> JpegProbe | None:
    """Parse the header (no pixel decoding); None when Pillow cannot parse it or it is no JPEG.

    Pillow's decompression-bomb guard applies (warnings count as errors, as in ``decode_photo``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "JPEG":
                    return None
                facts = read_facts(img)
                gpu_ok = (img.mode in ("RGB", "L") and not img.info.get("progressive")
                          and not img.info.get("progression") and "adobe" not in img.info
                          and img.width > 0 and img.height > 0)
    except Exception:  # noqa: BLE001 - the CPU path will say exactly what is wrong with it
        return None
    return JpegProbe(gpu_ok, facts, facts.orientation or 1)


def apply_orientation(img: torch.Tensor, orientation: int | None) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a ``(C, H, W)`` tensor, as ``ImageOps.exif_transpose`` does."""
    import torch

    dims = (-2, -1)
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(dims)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(img, -1, dims)
    if orientation == 7:
        return img.transpose(-2, -1).flip(dims)
    if orientation == 8:
        return torch.rot90(img, 1, dims)
    return img


@dataclass(frozen=True)
class TensorPreprocess:
    """open_clip's eval transform (resize, centre crop, to [0, 1], normalise) on uint8 tensors."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bilinear: bool = False
    squash: bool = False

    @staticmethod
    def supports(preprocess: dict[str, Any]) -> bool:
        """Whether the tensor path reproduces this preprocessing (checked without importing open_clip)."""
        size = preprocess.get("size", 224)
        size = size if isinstance(size, (list, tuple)) else (size, size)
        mode = preprocess.get("resize_mode") or "shortest"
        return mode == "squash" or (mode == "shortest" and size[0] == size[1])

    @classmethod
    def from_spec(cls, preprocess: dict[str, Any]) -> "TensorPreprocess | None":
        """From an encoder spec's preprocessing; None where only the CPU path reproduces it."""
        from open_clip.transform import PreprocessCfg

        if not cls.supports(preprocess):
            return None
        cfg = PreprocessCfg(**preprocess)
        size = cfg.size if isinstance(cfg.size, (list, tuple)) else (cfg.size, cfg.size)
        mode = cfg.resize_mode or "shortest"
        mean = cfg.mean if isinstance(cfg.mean, (list, tuple)) else (cfg.mean,) * 3
        std = cfg.std if isinstance(cfg.std, (list, tuple)) else (cfg.std,) * 3
        return cls((int(size[0]), int(size[1])), tuple(float(m) for m in mean), tuple(float(s) for s in std),
                   bilinear=cfg.interpolation == "bilinear", squash=mode == "squash")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        mode = InterpolationMode.BILINEAR if self.bilinear else InterpolationMode.BICUBIC
        x = img.float()
        if self.squash:
            x = F.resize(x, list(self.size), interpolation=mode, antialias=True)
        else:
            x = F.resize(x, [self.size[0]], interpolation=mode, antialias=True)
            x = F.center_crop(x, list(self.size))
        x = x.clamp_(0, 255).round_().div_(255.0)  # Pillow resizes to uint8
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return (x - mean) / std


def decode_jpeg_batch(datas: Sequence[bytes], orientations: Sequence[int | None], pre: TensorPreprocess,
                      device: str = "cuda") -> list[torch.Tensor] | None:
    """Decode, orient and preprocess a batch of JPEGs on ``device``; None if the batch fails.

    ``device="cpu"`` runs the same tensor path on libjpeg-turbo (how the suite tests it without a GPU)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision >= 0.29: "deprecated, use TorchCodec"
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        return [pre(apply_orientation(img, o)) for img, o in zip(images, orientations)]
    except Exception as exc:  # noqa: BLE001 - nvJPEG refuses the whole batch; the CPU path takes it
        log.warning("batched JPEG decode on %s failed (%s: %s); decoding these %d photos on the CPU",
                    device, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", len(datas))
        return None
