"""Test helpers: the offline environment, index runs and the CLI in-process, index-file checks and damage,
camera RAW files made offline.

The tiny random CLIP and the noise-photo libraries live in ``ui.demo`` (the benchmarks use them too); they are
re-exported here for the tests."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from indexer.run import RunOptions, RunSummary, index_paths
from ui.demo.photos import make_library, random_photo  # noqa: F401  (re-exported)
from ui.demo.tiny_clip import TINY_CFG, TINY_NAME, TINY_PREPROCESS, register_tiny_config, save_tiny_clip  # noqa: F401


def bomb_png(side: int = 30000) -> bytes:
    """A valid ``side`` x ``side`` 1-bit PNG of zeros (about 109 KB at 30000): a decompression bomb, made
    without ever holding its pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows, z = b"\0" * (1 + (side + 7) // 8) * 1000, zlib.compressobj(9)
    idat = b"".join(z.compress(rows) for _ in range(side // 1000)) + z.compress(rows[: len(rows) // 1000 * (side % 1000)])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat + z.flush()) + chunk(b"IEND", b""))


def slow_photos(root: Path, n: int) -> list[Path]:
    """``n`` distinct 12 MP PNGs (about 160 KB each) that take ~0.3 s each to decode: decode workers stay busy."""
    paths = []
    for i in range(n):
        arr = np.zeros((3000, 4000, 3), np.uint8)
        arr[:: 97, :: 89] = (i + 1, 2 * i + 1, 3 * i + 1)
        path = root / f"slow_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, compress_level=1)
        paths.append(path)
    return paths


def children_of(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (Linux ``/proc``)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) and int(stat[1]) == pid and stat[0] != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie waiting to be reaped has)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _proc_stat(pid: int) -> list[str] | None:
    """State, ppid, ... of ``/proc/PID/stat`` (the fields after the command name)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()
    except OSError:
        return None


def env_offline() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


# ---- the shared world collections (tests/conftest.py builds each once a session) ----------------------

#: (photos, seed) of the ``world`` fixture: most tests of meaning read this one.
WORLD = (160, 11)
#: (photos, seed) of the ``large_world`` fixture: enough skulls and photos per class for answering and ranking.
LARGE_WORLD = (240, 21)
#: (photos, seed) of a small world, for work whose cost grows with the photos (fuzzing every route, a browser).
SMALL_WORLD = (48, 11)


# ---- index runs and the CLI in this process ---------------------------------------------------------

#: Index runs in tests: small batches, decoding in this process.
OPTS = RunOptions(batch_size=8, workers=0)


def index_into(coll_dir: Path, encoder, roots: list[Path], db_url: str | None = None, opts: RunOptions = OPTS,
               **changes: object) -> RunSummary:
    """One index run of ``roots`` into the collection at ``coll_dir`` (made for ``encoder`` if new), closed
    after; ``changes`` replace fields of ``opts``."""
    from indexer.collection import Collection

    coll = Collection.open_for_encoder(coll_dir, encoder.spec, db_url)
    try:
        return index_paths(coll, encoder, roots, replace(opts, **changes) if changes else opts)
    finally:
        coll.close()


@dataclass
class CliResult:
    """What one ``photodex`` command did: its exit code and what it wrote (as ``subprocess.run`` reports it)."""

    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, check_rc: int | None = 0) -> CliResult:
    """Run ``photodex ARGS`` in this process (``ui.cli.main``; argparse's exits become exit codes). For what only
    a process of its own shows (its imports, signals, a second process) tests use ``sys.executable -m ui.cli``."""
    from ui.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 2
    result = CliResult(rc, out.getvalue(), err.getvalue())
    if check_rc is not None:
        assert result.returncode == check_rc, (args, result.stderr)
    return result


# ---- index files: exact answers and damage (tests/test_index_file.py, tests/test_shard_store.py) ----

def exact_search(coll, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of an exact top-k over the collection's stored vectors."""
    from retrieval.scoring import top_k

    ids, vecs = coll.load_vectors()
    idx, vals = top_k(queries @ vecs.T, k, ids, pad=True)
    return vals, idx


def queries_near_stored(coll, n: int = 6) -> np.ndarray:
    """``n`` unit queries near the first stored vectors (seeded)."""
    _, vecs = coll.load_vectors()
    q = vecs[:n] + 0.3 * np.random.default_rng(0).standard_normal(vecs[:n].shape).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def damage_index_file(path: Path, how: str) -> None:
    """Damage an index file: ``truncated``, ``same-size`` (bytes overwritten), ``no-sidecar`` or ``missing``."""
    from retrieval.index.vector_index import VectorIndex

    if how == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
    elif how == "same-size":
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = b"\x7f" * 64  # float32 0x7f7f7f7f ~ 3.4e38: huge scores if read
        path.write_bytes(bytes(data))
    elif how == "no-sidecar":
        VectorIndex.sidecar_path(path).unlink()
    elif how == "missing":
        path.unlink()
    else:
        raise ValueError(how)



# ---- camera RAW files made offline (tests/test_raw_photos.py) ----------------------------------------

# XYZ(D65) -> linear sRGB: as a DNG ColorMatrix1 it says "the sensor's channels are linear sRGB", so LibRaw's
# camera -> sRGB matrix is the identity and a demosaiced colour is the colour that was mosaiced.
SRGB_FROM_XYZ = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))


def bayer_mosaic(rgb: np.ndarray, white: int = 4095,
                 neutral: tuple[float, float, float] = (0.5, 1.0, 0.8)) -> np.ndarray:
    """An RGGB mosaic (uint16) of a linear float RGB scene in [0, 1]; channel ``c`` is scaled by
    ``neutral[c]`` (the sensor's response to white, the DNG's AsShotNeutral)."""
    h, w, _ = rgb.shape
    if h % 2 or w % 2:
        raise ValueError("a Bayer mosaic needs even sides")
    gain = np.asarray(neutral, np.float64)
    chan = np.empty((h, w), np.intp)
    chan[0::2, 0::2], chan[0::2, 1::2], chan[1::2, 0::2], chan[1::2, 1::2] = 0, 1, 1, 2
    rows, cols = np.indices((h, w))
    values = rgb[rows, cols, chan] * gain[chan]
    return np.clip(np.round(values * white), 0, white).astype(np.uint16)


def _rational(value: float, den: int = 10000) -> tuple[int, int]:
    return int(round(value * den)), den


# TIFF field types: code -> (struct format of one value, values per item)
_TIFF_TYPES = {1: ("B", 1), 2: ("s", 1), 3: ("H", 1), 4: ("I", 1), 5: ("I", 2), 7: ("B", 1), 10: ("i", 2)}


class _Ref:
    """A LONG field value resolved at layout time: the offset of IFD ``ifds[i]`` or blob ``blobs[i]``."""

    def __init__(self, kind: str, index: int) -> None:
        self.kind, self.index = kind, index


def _tiff_field(typ: int, values: object) -> tuple[int, list[object]]:
    """(count, flat values) of one field."""
    if typ == 2:
        data = values.encode() + b"\x00" if isinstance(values, str) else bytes(values)
        return len(data), [data]
    if typ in (1, 7) and isinstance(values, (bytes, bytearray)):
        return len(values), list(values)
    items = list(values) if isinstance(values, (list, tuple)) else [values]
    if typ in (5, 10):
        return len(items), [v for pair in items for v in pair]
    return len(items), items


def write_tiff(path: Path, ifds: list[dict[int, tuple[int, object]]], blobs: list[bytes]) -> Path:
    """A little-endian TIFF: ``ifds[0]`` is IFD0 (the others are reached through pointer tags whose
    values are :class:`_Ref`), ``blobs`` are the strips. ``{tag: (type, values)}`` per IFD."""
    import struct

    def payload(typ: int, values: object, offsets: dict[tuple[str, int], int]) -> tuple[int, bytes]:
        count, flat = _tiff_field(typ, values)
        flat = [offsets[(v.kind, v.index)] if isinstance(v, _Ref) else v for v in flat]
        fmt, _ = _TIFF_TYPES[typ]
        data = flat[0] if typ == 2 else struct.pack("<" + fmt * len(flat), *flat)
        return count, data

    def layout(offsets: dict[tuple[str, int], int]) -> tuple[bytes, dict[tuple[str, int], int]]:
        out = bytearray(b"II*\x00" + struct.pack("<I", 8))
        found: dict[tuple[str, int], int] = {}
        for i, ifd in enumerate(ifds):
            found[("ifd", i)] = start = len(out)
            tags = sorted(ifd)
            extra_at = start + 2 + 12 * len(tags) + 4
            head, extra = bytearray(struct.pack("<H", len(tags))), bytearray()
            for tag in tags:
                typ, values = ifd[tag]
                count, data = payload(typ, values, offsets)
                if len(data) <= 4:
                    head += struct.pack("<HHI", tag, typ, count) + data.ljust(4, b"\x00")
                else:
                    head += struct.pack("<HHII", tag, typ, count, extra_at + len(extra))
                    extra += data + (b"\x00" if len(data) % 2 else b"")
            out += head + struct.pack("<I", 0) + extra
        for j, blob in enumerate(blobs):
            found[("blob", j)] = len(out)
            out += blob + (b"\x00" if len(blob) % 2 else b"")
        return bytes(out), found

    _, offsets = layout({(k, i): 0 for k, n in (("ifd", len(ifds)), ("blob", len(blobs))) for i in range(n)})
    data, again = layout(offsets)
    assert again == offsets
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_dng(path: Path, mosaic: np.ndarray, *, preview: "Image.Image | None" = None, preview_format: str = "JPEG",
              orientation: int = 1, make: str | None = "Photodex", model: str | None = "Test Cam",
              taken_at: str | None = "2021:06:05 14:30:00", gps: tuple[float, float] | None = None,
              white: int = 4095, neutral: tuple[float, float, float] = (0.5, 1.0, 0.8)) -> Path:
    """An Adobe DNG of an RGGB ``mosaic`` (see :func:`bayer_mosaic`): the raw image in a SubIFD and,
    when ``preview`` is given, that picture as IFD0's preview (``"JPEG"`` or uncompressed ``"RGB"``),
    else the raw image in IFD0. EXIF DateTimeOriginal, Orientation, Make/Model and GPS as given."""
    h, w = mosaic.shape
    blobs = [np.ascontiguousarray(mosaic, "<u2").tobytes()]
    raw_ifd: dict[int, tuple[int, object]] = {
        254: (4, 0), 256: (4, w), 257: (4, h), 258: (3, 16), 259: (3, 1), 262: (3, 32803), 273: (4, _Ref("blob", 0)),
        277: (3, 1), 278: (4, h), 279: (4, len(blobs[0])), 284: (3, 1),
        33421: (3, (2, 2)), 33422: (1, bytes((0, 1, 1, 2))), 50714: (4, 0), 50717: (4, white),
    }
    main: dict[int, tuple[int, object]] = {
        274: (3, orientation), 50706: (1, bytes((1, 4, 0, 0))), 50707: (1, bytes((1, 1, 0, 0))),
        50708: (2, f"{make or ''} {model or ''}".strip() or "Photodex Test"),
        50721: (10, [_rational(v) for row in SRGB_FROM_XYZ for v in row]), 50778: (3, 21),
        50728: (5, [_rational(v) for v in neutral]),
    }
    if make:
        main[271] = (2, make)
    if model:
        main[272] = (2, model)
    ifds = [main]
    if preview is not None:
        pw, ph = preview.size
        if preview_format == "JPEG":
            import io

            buf = io.BytesIO()
            preview.convert("RGB").save(buf, "JPEG", quality=92)
            blobs.append(buf.getvalue())
            main.update({259: (3, 7), 262: (3, 6), 277: (3, 3), 258: (3, (8, 8, 8))})
        else:
            blobs.append(np.asarray(preview.convert("RGB"), np.uint8).tobytes())
            main.update({259: (3, 1), 262: (3, 2), 277: (3, 3), 258: (3, (8, 8, 8)), 284: (3, 1)})
        main.update({254: (4, 1), 256: (4, pw), 257: (4, ph), 273: (4, _Ref("blob", 1)), 278: (4, ph),
                     279: (4, len(blobs[1]))})
        ifds.append(raw_ifd)
        main[330] = (4, _Ref("ifd", len(ifds) - 1))
    else:
        main.update(raw_ifd)
    if taken_at:
        ifds.append({36867: (2, taken_at), 36868: (2, taken_at), 36864: (7, b"0231")})
        main[34665] = (4, _Ref("ifd", len(ifds) - 1))
    if gps:
        lat, lon = gps

        def dms(v: float) -> list[tuple[int, int]]:
            v = abs(v)
            d, m = int(v), int(v * 60) % 60
            return [(d, 1), (m, 1), _rational((v * 3600) % 60, 1000)]

        ifds.append({0: (1, bytes((2, 3, 0, 0))), 1: (2, "N" if lat >= 0 else "S"), 2: (5, dms(lat)),
                     3: (2, "E" if lon >= 0 else "W"), 4: (5, dms(lon))})
        main[34853] = (4, _Ref("ifd", len(ifds) - 1))
    return write_tiff(path, ifds, blobs)


def two_colour_scene(h: int, w: int, left: tuple[float, float, float] = (0.8, 0.05, 0.05),
                     right: tuple[float, float, float] = (0.05, 0.05, 0.8)) -> np.ndarray:
    """A linear float RGB scene: ``left`` colour on the left half, ``right`` on the right half."""
    scene = np.empty((h, w, 3), np.float64)
    scene[:, : w // 2] = left
    scene[:, w // 2 :] = right
    return scene
