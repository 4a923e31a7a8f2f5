"""Decode photos into RGB images sized for the encoder, plus their EXIF facts.

JPEGs are DCT-scaled while decoding (``Image.draft``) so a 12 MP photo is never fully decoded to
make a 224 px input; EXIF orientation is applied; CMYK, 16-bit, palette and alpha images are
converted to RGB properly; Pillow's decompression-bomb guard stays on.

Camera RAW files (:data:`indexer.sync.scan.RAW_EXTENSIONS`, or a stream whose header is a camera RAW's)
go through LibRaw (``rawpy``, the ``raw`` extra; imported only when a RAW is decoded):

* the camera's embedded preview is used when its shorter side is at least the requested size (the
  encoder's input; with no size, half the RAW's shorter side): a JPEG preview is DCT-scaled like any
  JPEG, and turned by LibRaw's ``flip`` unless the preview carries its own EXIF orientation;
* otherwise the RAW is demosaiced at half size with the camera's white balance (LibRaw turns it);
* facts: ``format`` is the upper-cased extension (``"DNG"``, ``"CR2"``; ``"RAW"`` for an unnamed
  stream LibRaw reads), ``width``/``height`` are the full RAW's as displayed, EXIF facts come from
  the RAW's own TIFF directories where it has them (DNG, CR2, NEF, ARW, ORF, RW2, PEF, ...), then
  from the preview's EXIF, then LibRaw's timestamp; what none of them has stays None;
* the decompression-bomb limit (:func:`set_max_image_pixels`) applies to the RAW's pixel count
  before anything is unpacked; every LibRaw failure, and a missing ``rawpy``, is a
  :class:`DecodeError` with the reason.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import InputError
from ..sync.scan import RAW_EXTENSIONS

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


_EXIF_FACTS = ("camera_make", "camera_model", "orientation", "taken_at", "gps_lat", "gps_lon")


def _exif_facts(exif: Image.Exif) -> PhotoFacts:
    """The EXIF facts of one EXIF block (missing or broken tags give None)."""
    facts = PhotoFacts()
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


def _fill_missing(facts: PhotoFacts, more: PhotoFacts) -> None:
    """Copy ``more``'s EXIF facts into those of ``facts`` that are still None."""
    for name in _EXIF_FACTS:
        if getattr(facts, name) is None:
            setattr(facts, name, getattr(more, name))


def read_facts(img: Image.Image) -> PhotoFacts:
    """EXIF facts: taken-at, camera, GPS, orientation (missing or broken tags give None)."""
    facts = PhotoFacts(format=img.format, width=img.width, height=img.height)
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the photo
        return facts
    _fill_missing(facts, _exif_facts(exif))
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


# ---- the decompression-bomb limit -----------------------------------------------------------------

DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # PHOTODEX_MAX_IMAGE_PIXELS's default
_PIXELS_IN_MESSAGE = re.compile(r"\((\d+) pixels\)")  # Pillow's "Image size (N pixels) exceeds limit of ..."


def set_max_image_pixels(limit: int) -> None:
    """Make ``limit`` this process's one decompression-bomb limit (``PHOTODEX_MAX_IMAGE_PIXELS``).

    Pillow keeps it in ``Image.MAX_IMAGE_PIXELS``: past it Pillow only warns (photodex's decoders turn the
    warning into a refusal), past twice it Pillow raises; either way :func:`bomb_reason` names ``limit``.
    Every process that decodes sets it from its settings (CLI, API, decode workers)."""
    Image.MAX_IMAGE_PIXELS = limit


def bomb_pixels(exc: BaseException) -> int | None:
    """The pixel count a decompression-bomb warning or error reports (None if it does not say)."""
    found = _PIXELS_IN_MESSAGE.search(str(exc))
    return int(found.group(1)) if found else None


def bomb_reason(exc: BaseException) -> str:
    """One message for an image past the limit, whichever of Pillow's two thresholds (or the RAW check) hit."""
    pixels = bomb_pixels(exc)
    return (f"image too large (decompression-bomb guard): {f'{pixels} pixels' if pixels else 'too many pixels'}, "
            f"over the limit of {Image.MAX_IMAGE_PIXELS} pixels (PHOTODEX_MAX_IMAGE_PIXELS)")


_FILE_PROBLEMS = (FileNotFoundError, PermissionError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def _file_problem(exc: BaseException) -> str:
    """The recorded reason for the failures every decoder shares: file gone, no permission, bomb guard."""
    if isinstance(exc, FileNotFoundError):
        return "file vanished before it could be read"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return bomb_reason(exc)


def decode_photo(path: bytes | str | os.PathLike[str] | BinaryIO, target_size: int | None = None, *,
                 name: bytes | str | None = None) -> tuple[Image.Image, PhotoFacts]:
    """Open, DCT-scale (JPEG), orient and convert one photo; raise :class:`DecodeError` with a reason.

    ``name`` is the file name of an open stream (its extension picks the camera RAW decoder, as a
    path's does); a stream without one is recognised as a camera RAW by its header.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, (str, bytes)):
        try:
            if os.path.getsize(path) == 0:
                raise DecodeError("empty file (0 bytes)")
        except OSError:
            pass  # reported by the open below
    raw_format = camera_raw_format(path, name)
    if raw_format is not None:
        return _decode_raw(path, raw_format, target_size)
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
    except _FILE_PROBLEMS as exc:
        raise DecodeError(_file_problem(exc)) from None
    except UnidentifiedImageError:
        raise DecodeError("not a recognised image (unsupported or corrupt file)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-photo error, never a crash
        raise DecodeError(f"cannot decode: {type(exc).__name__}: {exc}") from None
    if rgb.width < 1 or rgb.height < 1:
        raise DecodeError("image has no pixels")
    return rgb, facts


# ---- camera RAW ---------------------------------------------------------------------------------

RAWPY_MISSING = "camera RAW needs rawpy: pip install 'photodex[raw]'"
_SNIFF_BYTES = 1 << 16
# LibRaw's flip -> the EXIF orientation that means the same turn (dcraw maps orientation o to
# flip "50132467"[o & 7]); then Pillow's transpose for that orientation, as ImageOps.exif_transpose.
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}
_ORIENTATION_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                          6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
# TIFF-like RAW headers whose first directory Pillow's EXIF reader can walk: magic -> byte order
_TIFF_LIKE = {b"II*\x00": "<", b"MM\x00*": ">", b"IIRO": "<", b"IIRS": "<", b"MMOR": ">", b"IIU\x00": "<"}


def camera_raw_format(path: bytes | str | BinaryIO, name: bytes | str | None = None) -> str | None:
    """``"DNG"``, ``"CR2"``, ... when ``path`` is a camera RAW, else None.

    A file name (``path`` itself, ``name`` or the stream's ``name``) decides by its extension; a
    stream without a name is recognised by its header (never a named file: no extra read on the
    JPEG path).
    """
    label = name if name is not None else path if isinstance(path, (str, bytes)) else getattr(path, "name", None)
    if isinstance(label, (str, bytes)):
        ext = os.path.splitext(os.fsdecode(label))[1].lower()
        if ext not in RAW_EXTENSIONS:
            return None
        return None if _regular_image_header(path) else ext[1:].upper()
    if isinstance(path, (str, bytes)):
        return None
    head = _head(path, _SNIFF_BYTES)
    return _sniff_raw(head) if head is not None else None


def _head(path: bytes | str | BinaryIO, size: int) -> bytes | None:
    """The first ``size`` bytes of a file, or of a stream from where it stands (which is left there);
    None when they cannot be read."""
    try:
        if isinstance(path, (str, bytes)):
            with open(path, "rb") as fh:
                return fh.read(size)
        start = path.tell()
        head = path.read(size)
        path.seek(start)
    except (AttributeError, OSError, ValueError):
        return None
    return head if isinstance(head, bytes) else None


_REGULAR_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def _regular_image_header(path: bytes | str | BinaryIO) -> bool:
    """Whether a file named like a camera RAW starts like a JPEG, PNG, GIF, BMP, WebP or HEIF (a renamed
    or mislabelled file): Pillow decodes it as what it is, as it does for any other name."""
    head = _head(path, 16)
    if head is None:
        return False  # the RAW decoder reports an unreadable file
    return (head.startswith(_REGULAR_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
            or (head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif")))


def _sniff_raw(head: bytes) -> str | None:
    """The camera RAW format of a file starting with ``head``, if its signature says so."""
    if head[4:12] == b"ftypcrx ":
        return "CR3"
    if head.startswith(b"FUJIFILMCCD-RAW"):
        return "RAF"
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR"):
        return "ORF"
    if head[:4] == b"IIU\x00":
        return "RW2"
    if head[:4] == b"FOVb":
        return "X3F"
    if head[:4] == b"\x00MRM":
        return "MRW"
    if head[:4] == b"II*\x00" and head[8:10] == b"CR":
        return "CR2"
    if head[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    tags = _ifd0_tags(head)
    if 50706 in tags:  # DNGVersion
        return "DNG"
    if tags.get(262) in (32803, 34892):  # CFA or LinearRaw data in the first directory
        return "RAW"
    if tags.get(254) == 1 and 271 in tags:  # a camera's reduced-size preview first (NEF, ARW, ...)
        return "RAW"
    return None


def _ifd0_tags(head: bytes) -> dict[int, int | None]:
    """Tag -> first SHORT/LONG value (None for other types) of a TIFF's first directory within ``head``."""
    endian = "<" if head[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack_from(endian + "I", head, 4)
        (count,) = struct.unpack_from(endian + "H", head, offset)
        tags: dict[int, int | None] = {}
        for i in range(min(count, 512)):
            tag, typ, _n, value = struct.unpack_from(endian + "HHI4s", head, offset + 2 + 12 * i)
            tags[tag] = (struct.unpack_from(endian + "H", value)[0] if typ == 3
                         else struct.unpack_from(endian + "I", value)[0] if typ == 4 else None)
        return tags
    except struct.error:
        return {}


def _import_rawpy() -> Any:
    """rawpy, its OpenMP runtime held to one thread; :class:`DecodeError` naming the extra when missing.

    LibRaw runs OpenMP thread teams, and GNU OpenMP is not fork-safe: once a process has run a
    team, a forked child (a DataLoader worker, say, after the API served a RAW thumbnail) hangs
    in its first LibRaw call. When torch was loaded first, LibRaw's OpenMP calls bind to torch's
    runtime, which DataLoader workers set to one thread. Otherwise they use the runtime of
    rawpy's wheel, which reads ``OMP_NUM_THREADS`` once, when the first ``import rawpy`` loads
    it: so that variable is 1 just for that import. One RAW never needs more than one core (the
    indexer decodes many in parallel), and a one-thread team starts no threads.
    """
    if "rawpy" in sys.modules and sys.modules["rawpy"] is not None:
        return sys.modules["rawpy"]
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import rawpy
    except ImportError:
        raise DecodeError(RAWPY_MISSING) from None
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return rawpy


def _container_facts(fh: BinaryIO) -> PhotoFacts:
    """EXIF facts from the RAW file's own TIFF directories (DNG, CR2, NEF, ORF, RW2, ...), if any."""
    try:
        start = fh.tell()
        head = fh.read(8)
        endian = _TIFF_LIKE.get(head[:4])
        if endian is None:
            return PhotoFacts()
        (offset,) = struct.unpack(endian + "I", head[4:8])
        exif = Image.Exif()
        exif.endian = endian
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exif.load_from_fp(_Offset(fh, start), offset)
            return _exif_facts(exif)
    except Exception:  # noqa: BLE001 - unreadable metadata must not lose the photo
        log.debug("no EXIF read from the RAW container", exc_info=True)
        return PhotoFacts()


class _Offset:
    """A read-only view of ``fh`` whose offset 0 is ``fh``'s ``start`` (a stream need not start at 0)."""

    def __init__(self, fh: BinaryIO, start: int) -> None:
        self.fh, self.start = fh, start

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.fh.seek(pos + self.start if whence == 0 else pos, whence) - self.start

    def tell(self) -> int:
        return self.fh.tell() - self.start

    def read(self, n: int = -1) -> bytes:
        return self.fh.read(n)


def _reason(exc: Exception) -> str:
    text = exc.args[0] if exc.args else ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return str(text or type(exc).__name__)


def _turn(img: Image.Image, flip: int) -> Image.Image:
    method = _ORIENTATION_TRANSPOSE.get(_FLIP_TO_ORIENTATION.get(flip & 7, 1))
    return img.transpose(method) if method is not None else img


def _from_preview(raw: Any, rawpy: Any, want: int, draft: bool, flip: int, facts: PhotoFacts) -> Image.Image | None:
    """The embedded preview, decoded and turned, if it is at least ``want`` px on its shorter side."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawError, rawpy.NotSupportedError) as exc:
        log.debug("no usable RAW preview: %s", _reason(exc))
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            prev = Image.open(io.BytesIO(thumb.data))
            if prev.format != "JPEG" or min(prev.size) < want:
                return None
            try:
                exif = prev.getexif()
                _fill_missing(facts, _exif_facts(exif))
                own = exif.get(0x0112)
            except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the preview
                own = None
            if draft:
                prev.draft("RGB", (want, want))
            prev.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise
        except Exception as exc:  # noqa: BLE001 - a broken preview: demosaic instead
            log.debug("RAW preview unreadable (%s); demosaicing", exc)
            return None
        if isinstance(own, int) and 2 <= own <= 8:
            return to_rgb(ImageOps.exif_transpose(prev))
        return to_rgb(_turn(prev, flip))
    data = np.asarray(thumb.data)
    if data.dtype != np.uint8 or data.ndim != 3 or data.shape[2] != 3 or min(data.shape[:2]) < want:
        return None
    return _turn(Image.fromarray(np.ascontiguousarray(data), "RGB"), flip)


def _libraw_time(raw: Any) -> datetime | None:
    try:
        taken = raw.other.timestamp
    except Exception:  # noqa: BLE001
        return None
    return taken if isinstance(taken, datetime) and taken.year > 1970 else None


def _open_raw(rawpy: Any, source: bytes | str | BinaryIO, fh: BinaryIO) -> Any:
    """A :class:`rawpy.RawPy` opened on ``source`` (a path LibRaw can name, else the bytes of ``fh``)."""
    raw = rawpy.RawPy()
    try:
        if isinstance(source, (str, bytes)):
            text = os.fsdecode(source)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a name that is not UTF-8: LibRaw reads the open file's bytes
                fh.seek(0)
                raw.open_buffer(fh)
            else:
                raw.open_file(text)
        else:
            raw.open_buffer(fh)
    except BaseException:
        raw.close()
        raise
    return raw


def camera_raw_size(stream: BinaryIO) -> tuple[int, int]:
    """(width, height) of a camera RAW as displayed, from what LibRaw reads of its header (nothing is
    unpacked): the pixel check of an upload. :class:`DecodeError` when rawpy is missing or LibRaw refuses it."""
    rawpy = _import_rawpy()
    try:
        with _open_raw(rawpy, stream, stream) as raw:
            sizes = raw.sizes
            return (sizes.height, sizes.width) if sizes.flip & 4 else (sizes.width, sizes.height)
    except rawpy.LibRawError as exc:
        raise DecodeError(f"unsupported or corrupt camera RAW: {_reason(exc)}") from None


def _decode_raw(source: bytes | str | BinaryIO, fmt: str, target_size: int | None) -> tuple[Image.Image, PhotoFacts]:
    """Decode a camera RAW: its preview when big enough, else a half-size demosaic (see the module doc)."""
    rawpy = _import_rawpy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            fh: BinaryIO = open(source, "rb") if isinstance(source, (str, bytes)) else source  # noqa: SIM115
            try:
                start = fh.tell()
                facts = _container_facts(fh)
                fh.seek(start)
                facts.format = fmt
                img = _decode_raw_image(rawpy, source, fh, facts, target_size)
            finally:
                if fh is not source:
                    fh.close()
    except DecodeError:
        raise
    except _FILE_PROBLEMS as exc:
        raise DecodeError(_file_problem(exc)) from None
    except (rawpy.LibRawFileUnsupportedError, rawpy.NotSupportedError) as exc:
        raise DecodeError(f"unsupported or corrupt camera RAW ({fmt}): {_reason(exc)}") from None
    except (rawpy.LibRawIOError, rawpy.LibRawDataError, rawpy.LibRawInputClosedError, EOFError) as exc:
        raise DecodeError(f"corrupt or truncated camera RAW ({fmt}): {_reason(exc)}") from None
    except (rawpy.LibRawTooBigError, rawpy.LibRawUnsufficientMemoryError, rawpy.LibRawMemPoolOverflowError,
            MemoryError) as exc:
        raise DecodeError(f"camera RAW too large to decode ({fmt}): {_reason(exc)}") from None
    except rawpy.LibRawError as exc:
        raise DecodeError(f"cannot decode camera RAW ({fmt}): {type(exc).__name__}: {_reason(exc)}") from None
    except OSError as exc:
        raise DecodeError(f"cannot read camera RAW: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-photo error, never a crash
        raise DecodeError(f"cannot decode camera RAW ({fmt}): {type(exc).__name__}: {exc}") from None
    if img.width < 1 or img.height < 1:
        raise DecodeError("image has no pixels")
    return img, facts


def _decode_raw_image(rawpy: Any, source: bytes | str | BinaryIO, fh: BinaryIO, facts: PhotoFacts,
                      target_size: int | None) -> Image.Image:
    with _open_raw(rawpy, source, fh) as raw:
        sizes = raw.sizes
        flip = sizes.flip & 7
        width, height = (sizes.height, sizes.width) if flip & 4 else (sizes.width, sizes.height)
        if width < 1 or height < 1:
            raise DecodeError("image has no pixels")
        facts.width, facts.height = width, height
        if flip and facts.orientation is None:
            facts.orientation = _FLIP_TO_ORIENTATION[flip]
        limit = Image.MAX_IMAGE_PIXELS
        pixels = max(sizes.raw_width * sizes.raw_height, width * height)
        if limit and pixels > limit:
            raise Image.DecompressionBombError(f"Image size ({pixels} pixels) exceeds limit of {limit} pixels, "
                                               "could be decompression bomb DOS attack.")
        want = target_size or max(1, min(width, height) // 2)  # no size asked: as much as the half-size demosaic
        img = _from_preview(raw, rawpy, want, bool(target_size), flip, facts)
        if img is not None:
            facts.extra["raw_source"] = "preview"
            return img
        rgb = raw.postprocess(half_size=True, use_camera_wb=True, no_auto_bright=False, output_bps=8)
        if facts.taken_at is None:
            facts.taken_at = _libraw_time(raw)
        facts.extra["raw_source"] = "demosaic"
        return Image.fromarray(np.ascontiguousarray(rgb[..., :3]), "RGB")
