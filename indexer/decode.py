"""Decode photos into RGB images sized for the encoder, plus their EXIF facts.

JPEGs are DCT-scaled while decoding (``Image.draft``) so a 12 MP photo is never fully decoded to
make a 224 px input; EXIF orientation is applied; CMYK, 16-bit, palette and alpha images are
converted to RGB properly; Pillow's decompression-bomb guard stays on.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

log = logging.getLogger(__name__)

_HEIF_REGISTERED: bool | None = None


def register_heif() -> bool:
    """Enable HEIC/HEIF decoding when pillow-heif (the ``heic`` extra) is installed."""
    global _HEIF_REGISTERED
    if _HEIF_REGISTERED is None:
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
            _HEIF_REGISTERED = True
        except ImportError:
            _HEIF_REGISTERED = False
    return _HEIF_REGISTERED


class DecodeError(InputError):
    """A photo that cannot be decoded; the message is the recorded reason."""


@dataclass
class PhotoFacts:
    """What the catalog keeps about a decoded photo."""

    format: str | None = None
    width: int | None = None
    height: int | None = None
    taken_at: datetime | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    orientation: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _clean(text: Any) -> str | None:
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = str(text).replace("\x00", "").strip()
    return text[:128] or None


def _parse_datetime(value: Any) -> datetime | None:
    text = _clean(value)
    if not text:
        return None
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text[:19], fmt)
        except ValueError:
            continue
    return None


def _gps_coord(values: Any, ref: Any) -> float | None:
    try:
        d, m, s = (float(v) for v in values)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    coord = d + m / 60.0 + s / 3600.0
    if _clean(ref) in {"S", "W"}:
        coord = -coord
    return round(coord, 7) if np.isfinite(coord) else None


def read_facts(img: Image.Image) -> PhotoFacts:
    """EXIF facts: taken-at, camera, GPS, orientation (missing or broken tags give None)."""
    facts = PhotoFacts(format=img.format, width=img.width, height=img.height)
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the photo
        return facts
    if not exif:
        return facts
    facts.camera_make = _clean(exif.get(0x010F))
    facts.camera_model = _clean(exif.get(0x0110))
    orientation = exif.get(0x0112)
    facts.orientation = int(orientation) if isinstance(orientation, int) else None
    try:
        sub = exif.get_ifd(0x8769)
    except Exception:  # noqa: BLE001
        sub = {}
    facts.taken_at = _parse_datetime(sub.get(0x9003) or sub.get(0x9004) or exif.get(0x0132))
    try:
        gps = exif.get_ifd(0x8825)
    except Exception:  # noqa: BLE001
        gps = {}
    if gps and 2 in gps and 4 in gps:
        facts.gps_lat = _gps_coord(gps.get(2), gps.get(1))
        facts.gps_lon = _gps_coord(gps.get(4), gps.get(3))
    return facts


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = float(arr.max() - arr.min()) or 1.0
        return Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_photo(path: bytes | str | BinaryIO, target_size: int | None = None) -> tuple[Image.Image, PhotoFacts]:
    """Open, DCT-scale (JPEG), orient and convert one photo; raise :class:`DecodeError` with a reason."""
    if isinstance(path, (str, bytes)):
        try:
            if os.path.getsize(path) == 0:
                raise DecodeError("empty file (0 bytes)")
        except OSError:
            pass  # reported by the open below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                facts = read_facts(img)
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                if target_size and img.format == "JPEG":
                    img.draft("RGB", (target_size, target_size))
                img.load()
                oriented = ImageOps.exif_transpose(img)
                rgb = to_rgb(oriented)
                if rgb is img:
                    rgb = img.copy()
    except FileNotFoundError:
        raise DecodeError("file vanished before it could be read") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except UnidentifiedImageError:
        raise DecodeError("not a recognised image (unsupported or corrupt file)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"image too large (decompression-bomb guard): {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-photo error, never a crash
        raise DecodeError(f"cannot decode: {type(exc).__name__}: {exc}") from None
    if rgb.width < 1 or rgb.height < 1:
        raise DecodeError("image has no pixels")
    return rgb, facts
