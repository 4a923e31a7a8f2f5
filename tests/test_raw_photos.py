"""Camera RAW photos: preview or demosaic, orientation, facts, errors, the processed-sibling rule, search.

The RAW files are Adobe DNGs written by :func:`tests.helpers.write_dng` (a Bayer mosaic plus, when
asked, an embedded JPEG or RGB preview), so nothing is downloaded. LibRaw reads them exactly as it
reads a camera's DNG: the preview path, the demosaic path and LibRaw's ``flip`` are the real ones.
"""

from __future__ import annotations

import importlib.util
import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from sqlalchemy import select

from indexer.catalog.models import ERROR, INDEXED, Photo, PhotoFile
from indexer.collection import Collection
from indexer.encode.decode import RAWPY_MISSING, DecodeError, decode_photo
from indexer.run import index_paths
from indexer.sync.scan import scan
from tests.helpers import OPTS, bayer_mosaic, random_photo, two_colour_scene, write_dng

needs_rawpy = pytest.mark.skipif(importlib.util.find_spec("rawpy") is None,
                                 reason="rawpy (the raw extra) is not installed")

# sRGB colours of the four quadrants (TL, TR, BL, BR): the preview's and the RAW scene's differ,
# so a decoded picture says which of the two it came from, and which way round it is.
PREVIEW_QUADS = {"green": (0, 190, 0), "white": (245, 245, 245), "black": (10, 10, 10), "magenta": (200, 0, 200)}
RAW_QUADS = {"red": (0.8, 0.04, 0.04), "blue": (0.04, 0.04, 0.8), "yellow": (0.75, 0.7, 0.04), "grey": (0.1, 0.1, 0.1)}
RAW_SRGB = {"red": (255, 0, 0), "blue": (0, 0, 255), "yellow": (255, 240, 0), "grey": (90, 90, 90)}


def _quadrants(h: int, w: int, colours: list[tuple[float, float, float]], dtype=np.float64) -> np.ndarray:
    out = np.empty((h, w, 3), dtype)
    out[: h // 2, : w // 2], out[: h // 2, w // 2 :] = colours[0], colours[1]
    out[h // 2 :, : w // 2], out[h // 2 :, w // 2 :] = colours[2], colours[3]
    return out


def _labels(img: Image.Image, palette: dict[str, tuple[int, int, int]]) -> list[list[str]]:
    """The palette name nearest to each quadrant's mean colour, as a 2x2 grid."""
    arr = np.asarray(img.convert("RGB"), np.float64)
    h, w = arr.shape[:2]
    names, cols = list(palette), np.asarray(list(palette.values()), np.float64)
    grid = []
    for rows in (slice(h // 8, h // 2 - h // 8), slice(h // 2 + h // 8, h - h // 8)):
        line = []
        for cs in (slice(w // 8, w // 2 - w // 8), slice(w // 2 + w // 8, w - w // 8)):
            mean = arr[rows, cs].reshape(-1, 3).mean(axis=0)
            line.append(names[int(np.argmin(((cols - mean) ** 2).sum(axis=1)))])
        grid.append(line)
    return grid


def _expected(names: list[str], orientation: int) -> list[list[str]]:
    """How a 2x2 picture ``names`` (TL, TR, BL, BR) is displayed under EXIF ``orientation`` (Pillow's reading)."""
    grid = Image.fromarray(np.arange(4, dtype=np.uint8).reshape(2, 2), "L")
    exif = Image.Exif()
    exif[0x0112] = orientation
    grid.info["exif"] = exif.tobytes()
    shown = np.asarray(ImageOps.exif_transpose(grid))
    return [[names[int(v)] for v in row] for row in shown]


def _asymmetric_dng(path: Path, orientation: int, preview_format: str = "JPEG", preview_size=(96, 64)) -> Path:
    pw, ph = preview_size
    preview = Image.fromarray(_quadrants(ph, pw, list(PREVIEW_QUADS.values()), np.uint8), "RGB")
    scene = _quadrants(120, 160, list(RAW_QUADS.values()))
    return write_dng(path, bayer_mosaic(scene), preview=preview, preview_format=preview_format,
                     orientation=orientation)


# ---- decoding -------------------------------------------------------------------------------------

@needs_rawpy
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_preview_is_used_when_big_enough_and_turned_like_the_raw(tmp_path, orientation):
    p = _asymmetric_dng(tmp_path / "shot.dng", orientation)
    turned = orientation in (6, 8)
    # the 64 px preview suffices for a 48 px input: the picture is the preview's, not the RAW data's
    img, facts = decode_photo(str(p), 48)
    assert facts.extra["raw_source"] == "preview"
    assert img.size == ((64, 96) if turned else (96, 64))
    assert _labels(img, PREVIEW_QUADS) == _expected(list(PREVIEW_QUADS), orientation)
    assert facts.format == "DNG" and (facts.width, facts.height) == ((120, 160) if turned else (160, 120))
    assert facts.orientation == orientation
    # too small for a 100 px input: LibRaw demosaics (half size) and turns it itself, the same way round
    big, facts = decode_photo(str(p), 100)
    assert facts.extra["raw_source"] == "demosaic"
    assert big.size == ((60, 80) if turned else (80, 60))
    assert _labels(big, RAW_SRGB) == _expected(list(RAW_SRGB), orientation)


@needs_rawpy
def test_uncompressed_bitmap_preview_is_used_too(tmp_path):
    p = _asymmetric_dng(tmp_path / "bitmap.dng", 6, preview_format="RGB")
    img, facts = decode_photo(str(p), 32)
    assert facts.extra["raw_source"] == "preview" and img.size == (64, 96)
    assert _labels(img, PREVIEW_QUADS) == _expected(list(PREVIEW_QUADS), 6)


@needs_rawpy
@pytest.mark.parametrize("preview", [None, (16, 12)], ids=["no-preview", "tiny-preview"])
def test_raw_without_a_usable_preview_is_demosaiced_with_white_balance(tmp_path, preview):
    # the sensor sees red at half and blue at 0.8 strength (AsShotNeutral): white balance must undo it
    mosaic = bayer_mosaic(two_colour_scene(120, 160), neutral=(0.5, 1.0, 0.8))
    small = Image.new("RGB", preview, (0, 200, 0)) if preview else None
    p = write_dng(tmp_path / "scene.dng", mosaic, preview=small, make="Photodex", model="Test Cam",
                  taken_at="2021:06:05 14:30:00", gps=(48.8566, 2.3522))
    img, facts = decode_photo(str(p), 32)
    assert facts.extra["raw_source"] == "demosaic" and img.mode == "RGB" and img.size == (80, 60)
    arr = np.asarray(img, np.float64)
    left, right = arr[:, 5:35].reshape(-1, 3).mean(0), arr[:, 45:75].reshape(-1, 3).mean(0)
    assert left[0] > 180 and left[0] > left[2] + 100 and left[0] > left[1] + 100, left  # red
    assert right[2] > 180 and right[2] > right[0] + 100 and right[2] > right[1] + 100, right  # blue
    assert (facts.format, facts.width, facts.height) == ("DNG", 160, 120)
    assert (facts.camera_make, facts.camera_model) == ("Photodex", "Test Cam")
    assert facts.taken_at.isoformat() == "2021-06-05T14:30:00"
    assert facts.gps_lat == pytest.approx(48.8566, abs=1e-4) and facts.gps_lon == pytest.approx(2.3522, abs=1e-4)


@needs_rawpy
def test_raw_stream_is_recognised_by_its_header_or_its_name(tmp_path):
    p = _asymmetric_dng(tmp_path / "stream.dng", 1)
    img, facts = decode_photo(io.BytesIO(p.read_bytes()), 32)  # no name: the DNG header says so
    assert facts.format == "DNG" and facts.extra["raw_source"] == "preview"
    with open(p, "rb") as fh:
        _, facts = decode_photo(fh, 32, name=b"IMG_0001.NEF")  # a name decides by its extension
    assert facts.format == "NEF"


@needs_rawpy
def test_bomb_guard_counts_the_raw_pixels(tmp_path, monkeypatch):
    p = write_dng(tmp_path / "big.dng", bayer_mosaic(two_colour_scene(120, 160)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 160 * 120 - 1)
    with pytest.raises(DecodeError, match="decompression-bomb"):
        decode_photo(str(p), 32)


_FORK_SCRIPT = """
import multiprocessing, sys
from indexer.encode.decode import decode_photo
path = sys.argv[1]
decode_photo(path, 100)  # the parent runs LibRaw first (rawpy's own OpenMP runtime: no torch here)
with multiprocessing.get_context("fork").Pool(2) as pool:
    print(pool.map(decode_photo, [path] * 4) and "ok")
"""


@needs_rawpy
def test_decoding_in_a_forked_child_after_the_parent_decoded(tmp_path):
    """rawpy's OpenMP runtime is not fork-safe: a child forked after the parent ran a LibRaw thread team
    hangs in its first LibRaw call, unless that runtime was loaded with one thread (see _import_rawpy).
    (With torch loaded first LibRaw binds to torch's runtime, which DataLoader workers set to one thread.)"""
    import os
    import signal
    import subprocess

    p = str(write_dng(tmp_path / "fork.dng", bayer_mosaic(two_colour_scene(400, 600))))
    proc = subprocess.Popen([sys.executable, "-c", _FORK_SCRIPT, p], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("a forked child hung decoding a RAW after its parent had decoded one")
    assert proc.returncode == 0 and out.strip() == "ok", err


def test_without_rawpy_the_reason_names_the_extra(tmp_path, monkeypatch, tiny_encoder, capsys):
    monkeypatch.setitem(sys.modules, "rawpy", None)  # `import rawpy` fails
    p = write_dng(tmp_path / "lib" / "IMG_0001.dng", bayer_mosaic(two_colour_scene(40, 60)))
    with pytest.raises(DecodeError) as err:
        decode_photo(str(p), 32)
    assert str(err.value) == RAWPY_MISSING and "pip install 'photodex[raw]'" in RAWPY_MISSING
    random_photo(tmp_path / "lib" / "other.jpg")
    coll = Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec)
    summary = index_paths(coll, tiny_encoder, [tmp_path / "lib"], OPTS)
    assert summary.encode.encoded == 1 and summary.encode.errors == 1
    with coll.catalog.session() as s:
        assert s.scalar(select(Photo.error).where(Photo.status == ERROR)) == RAWPY_MISSING
    coll.close()
    from ui.cli import main

    assert main(["info", "--collection", str(tmp_path / "coll"), "--errors", "--json"]) == 0
    errors = json.loads(capsys.readouterr().out)
    assert [(Path(e["path"]).name, e["error"]) for e in errors] == [("IMG_0001.dng", RAWPY_MISSING)]


# ---- indexing -------------------------------------------------------------------------------------

@needs_rawpy
def test_corrupt_raws_are_recorded_and_the_run_goes_on(tmp_path, tiny_encoder):
    lib = tmp_path / "lib"
    good = write_dng(lib / "good.dng", bayer_mosaic(two_colour_scene(40, 60)))
    data = write_dng(lib / "full.dng", bayer_mosaic(two_colour_scene(80, 120)), taken_at=None).read_bytes()
    (lib / "full.dng").unlink()
    (lib / "truncated.dng").write_bytes(data[: len(data) // 2])
    (lib / "not_a_raw.cr2").write_bytes(b"this is no camera RAW" * 40)
    (lib / "broken_jpeg.cr2").write_bytes(b"\xff\xd8\xff\xe0 a JPEG named .cr2, cut short" * 40)
    random_photo(lib / "plain.jpg")
    coll = Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec)
    summary = index_paths(coll, tiny_encoder, [lib], OPTS)
    assert summary.encode.encoded == 2 and summary.encode.errors == 3
    with coll.catalog.session() as s:
        rows = {Path(f.path).name: (p.status, p.error, p.format)
                for f, p in s.execute(select(PhotoFile, Photo).join(Photo, Photo.id == PhotoFile.photo_id))}
    coll.close()
    assert rows["good.dng"] == (INDEXED, None, "DNG") and rows["plain.jpg"][:2] == (INDEXED, None)
    assert rows["truncated.dng"][0] == ERROR and rows["truncated.dng"][1].startswith("corrupt or truncated camera RAW")
    assert rows["not_a_raw.cr2"][0] == ERROR and "unsupported or corrupt camera RAW (CR2)" in rows["not_a_raw.cr2"][1]
    assert rows["broken_jpeg.cr2"][0] == ERROR and rows["broken_jpeg.cr2"][1].startswith("corrupt or truncated image")
    assert good.exists()


def test_scan_skips_a_raw_beside_its_processed_sibling(tmp_path):
    lib = tmp_path / "lib"
    for name in ("IMG_0001.CR2", "img_0001.JPG", "IMG_0002.nef", "IMG_0002.xmp", "IMG_0003.ARW", "IMG_0003.heic",
                 "sub/IMG_0001.dng", "IMG_0004.dng", "IMG_0004.jpg.txt", "IMG_0006.orf", "IMG_0006.png",
                 "IMG_0007.raf", "IMG_0007.tif", "IMG_0008.dng"):
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        (lib / name).write_bytes(b"x")
    (lib / "IMG_0008.jpg").mkdir()  # a folder is no sibling
    names = sorted(Path(f.path.decode()).relative_to(lib).as_posix() for f in scan([lib]))
    assert names == sorted(["img_0001.JPG", "IMG_0002.nef", "IMG_0003.heic", "sub/IMG_0001.dng", "IMG_0004.dng",
                            "IMG_0006.png", "IMG_0007.tif", "IMG_0008.dng"])
    # a sibling the scan leaves out does not hide the RAW; a RAW named as a root is always scanned
    excluded = {Path(f.path.decode()).name for f in scan([lib], exclude=["*.png"])}
    assert "IMG_0006.orf" in excluded and "IMG_0006.png" not in excluded
    assert [Path(f.path.decode()).name for f in scan([lib / "IMG_0001.CR2"])] == ["IMG_0001.CR2"]


@needs_rawpy
def test_raw_is_indexed_once_its_jpeg_sibling_is_gone_and_dropped_when_one_appears(tmp_path, tiny_encoder):
    lib = tmp_path / "lib"
    raw = write_dng(lib / "IMG_0001.dng", bayer_mosaic(two_colour_scene(40, 60)))
    jpeg = random_photo(lib / "IMG_0001.JPG", seed=1)
    lone = write_dng(lib / "IMG_0002.dng", bayer_mosaic(two_colour_scene(40, 60, left=(0.1, 0.7, 0.1))))
    coll_dir = tmp_path / "coll"

    def run() -> tuple[object, dict[str, tuple[str, str | None]]]:
        coll = Collection.open_for_encoder(coll_dir, tiny_encoder.spec)
        try:
            summary = index_paths(coll, tiny_encoder, [lib], OPTS)
            with coll.catalog.session() as s:
                query = select(PhotoFile, Photo).outerjoin(Photo, Photo.id == PhotoFile.photo_id)
                rows = {Path(f.path).name: (p.status if p else None, f.error) for f, p in s.execute(query)}
            return summary, rows
        finally:
            coll.close()

    summary, rows = run()
    assert rows == {"IMG_0001.JPG": (INDEXED, None), "IMG_0002.dng": (INDEXED, None)}
    assert summary.sync.file_errors == 0 and summary.encode.errors == 0
    assert summary.sync.raw_beside_processed == 1  # counted and said, not an error
    summary, rows = run()  # nothing changed: nothing to do, the skipped RAW is no error
    assert summary.sync.unchanged == 2 and summary.sync.hashed == 0 and summary.encode.encoded == 0
    jpeg.unlink()
    summary, rows = run()
    assert rows == {"IMG_0001.dng": (INDEXED, None), "IMG_0002.dng": (INDEXED, None)}
    assert summary.sync.removed_files == 1 and summary.encode.encoded == 1
    assert summary.sync.raw_beside_processed == 0
    random_photo(lib / "img_0001.jpeg", seed=2)  # an edit exported beside it: the RAW gives way again
    summary, rows = run()
    assert rows == {"img_0001.jpeg": (INDEXED, None), "IMG_0002.dng": (INDEXED, None)}
    assert summary.sync.removed_photos == 1 and raw.exists() and lone.exists()


# ---- the CLI, search and the API on a RAW library ------------------------------------------------

def _srgb_to_linear(arr: np.ndarray) -> np.ndarray:
    x = arr / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


@pytest.fixture(scope="module")
def raw_world(tmp_path_factory, world_tiny_clip_dir):
    """One DNG per world class: even ones carry the picture only as a 64 px JPEG preview (their raw
    data is flat grey), odd ones only as 128 px raw data (demosaiced to 64 px)."""
    if importlib.util.find_spec("rawpy") is None:
        pytest.skip("rawpy (the raw extra) is not installed")
    from ui.demo.world import CLASSES, make_sample

    root = tmp_path_factory.mktemp("raw_world")
    lib = root / "lib"
    rng = random.Random(31)
    truth = {}
    for i, cls in enumerate(CLASSES):
        colour, shape = cls.split()
        sample = make_sample(rng, colour=colour, shape=shape, count=1)
        path = lib / f"IMG_{i:04d}.dng"
        if i % 2 == 0:
            grey = np.full((128, 128, 3), 0.18)
            write_dng(path, bayer_mosaic(grey), preview=sample.image, make="Photodex", model=f"Cam {i}",
                      taken_at=f"2022:0{1 + i % 9}:1{i % 10} 10:00:00")
        else:
            scene = _srgb_to_linear(np.asarray(sample.image.resize((128, 128), Image.Resampling.NEAREST), np.float64))
            write_dng(path, bayer_mosaic(scene), make="Photodex", model=f"Cam {i}",
                      taken_at=f"2022:0{1 + i % 9}:1{i % 10} 10:00:00")
        truth[str(path)] = cls
    return root, lib, truth


def test_cli_index_records_raw_facts_and_text_search_finds_raws(raw_world, world_tiny_clip_dir, monkeypatch,
                                                                 capsys):
    from ui.demo.world import class_prompt
    from ui.cli import main

    root, lib, truth = raw_world
    coll_dir = root / "coll"
    monkeypatch.setenv("PHOTODEX_WORKERS", "1")  # a forked DataLoader worker decodes (see the fork test)
    assert main(["index", str(lib), "--collection", str(coll_dir), "--model", f"local-dir:{world_tiny_clip_dir}",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["encode"]["encoded"] == 12 and summary["encode"]["errors"] == 0
    coll = Collection.open(coll_dir)
    with coll.catalog.session() as s:
        photos = {Path(f.path).name: p for f, p in s.execute(select(PhotoFile, Photo).join(Photo))}
    coll.close()
    first = photos["IMG_0000.dng"]
    assert (first.format, first.width, first.height) == ("DNG", 128, 128)
    assert (first.camera_make, first.camera_model) == ("Photodex", "Cam 0")
    assert first.taken_at.isoformat() == "2022-01-10T10:00:00"
    assert all(p.status == INDEXED for p in photos.values())

    top1 = 0
    for cls in sorted(set(truth.values())):
        assert main(["search", class_prompt(cls), "--collection", str(coll_dir), "-k", "3", "--no-collapse",
                     "--json"]) == 0
        hits = json.loads(capsys.readouterr().out)
        found = [truth[h["paths"][0]] for h in hits]
        assert cls in found, (cls, found)
        top1 += found[0] == cls
    assert top1 >= 10, top1  # the tiny CLIP's precision on its own world is about 0.9
    assert main(["search", class_prompt("red circle"), "--collection", str(coll_dir), "--filter", "type=dng",
                 "-k", "20", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 12


@needs_rawpy
def test_api_thumbnail_of_a_raw_photo(tmp_path, tiny_encoder):
    from fastapi.testclient import TestClient

    from ui.settings import Settings
    from ui.api.app import create_app

    encoder = tiny_encoder
    shot = write_dng(tmp_path / "lib" / "turned.dng", bayer_mosaic(_quadrants(120, 160, list(RAW_QUADS.values()))),
                     preview=Image.fromarray(_quadrants(96, 128, list(PREVIEW_QUADS.values()), np.uint8)),
                     orientation=6)
    coll = Collection.open_for_encoder(tmp_path / "coll", encoder.spec)
    index_paths(coll, encoder, [tmp_path / "lib"], OPTS)
    with coll.catalog.session() as s:
        pid = s.scalar(select(PhotoFile.photo_id).where(PhotoFile.path == str(shot)))
    coll.close()
    app = create_app(Settings(collection=tmp_path / "coll"), encoder_loader=lambda s: encoder)
    with TestClient(app) as client:
        small = client.get(f"/api/v1/photos/{pid}/thumbnail", params={"size": 48})
        large = client.get(f"/api/v1/photos/{pid}/thumbnail", params={"size": 200})
        orig = client.get(f"/api/v1/photos/{pid}/original")
    assert small.status_code == 200 and small.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(small.content))
    assert thumb.size == (36, 48)  # the 128x96 preview, turned upright and shrunk
    assert _labels(thumb, PREVIEW_QUADS) == _expected(list(PREVIEW_QUADS), 6)
    assert large.status_code == 200  # the preview is too small for 200 px: demosaiced instead
    big = Image.open(io.BytesIO(large.content))
    assert big.size == (60, 80) and _labels(big, RAW_SRGB) == _expected(list(RAW_SRGB), 6)
    assert orig.status_code == 200 and orig.content == shot.read_bytes()


@pytest.mark.parametrize("fmt,name", [("JPEG", "renamed.dng"), ("PNG", "export.NEF")])
def test_a_regular_image_named_like_a_raw_decodes_as_what_it_is(tmp_path, fmt, name):
    """A mislabelled file decodes by its content, as every other name does (LibRaw would refuse it), so a
    byte-identical copy under a regular name is not lost with it."""
    src = random_photo(tmp_path / f"src.{fmt.lower()}", size=(40, 30), seed=3, format=fmt)
    path = tmp_path / name
    path.write_bytes(src.read_bytes())
    img, facts = decode_photo(str(path), 224)
    assert facts.format == fmt and img.size == (40, 30)
    with open(path, "rb") as fh:
        assert decode_photo(fh, 224, name=name)[1].format == fmt
    assert decode_photo(io.BytesIO(src.read_bytes()), 224)[1].format == fmt


def test_api_uploads_of_a_raw_are_checked_by_the_raws_own_size_and_searched(tmp_path, tiny_encoder):
    """A DNG's TIFF header names its small preview: the upload pixel limit must count the RAW itself."""
    from fastapi.testclient import TestClient

    from ui.settings import Settings
    from ui.api.app import create_app

    shot = write_dng(tmp_path / "lib" / "shot.dng", bayer_mosaic(two_colour_scene(80, 120)),
                     preview=Image.fromarray(np.full((8, 12, 3), 200, np.uint8)))
    random_photo(tmp_path / "lib" / "other.jpg")
    coll = Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec)
    index_paths(coll, tiny_encoder, [tmp_path / "lib"], OPTS)
    coll.close()
    data = shot.read_bytes()
    for limit, status in ((80 * 120, 200), (80 * 120 - 1, 422)):
        settings = Settings(collection=tmp_path / "coll", api_max_upload_pixels=limit)
        with TestClient(create_app(settings, encoder_loader=lambda s: tiny_encoder)) as client:
            got = client.post("/api/v1/search/image", files={"file": ("upload.bin", data, "application/octet-stream")},
                              data={"k": "2", "collapse": ""})
        assert got.status_code == status, got.text
        if status == 200:
            top = got.json()["results"][0]
            assert top["paths"] == [str(shot)] and top["score"] > 0.99  # found itself
    assert got.json()["error"]["code"] == "too_many_pixels" and got.json()["error"]["detail"]["width"] == 120


def test_cli_says_how_many_raws_were_left_out_beside_their_jpeg(tmp_path, tiny_clip, capsys):
    from ui.cli import main

    lib = tmp_path / "lib"
    write_dng(lib / "IMG_0001.CR2", bayer_mosaic(two_colour_scene(40, 60)))  # named like a Canon RAW
    random_photo(lib / "IMG_0001.jpg")
    random_photo(lib / "other.jpg", seed=4)
    args = ["index", str(lib), "--collection", str(tmp_path / "coll"), "--model", f"local-dir:{tiny_clip[0]}",
            "--workers", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "scanned 2 files" in out and "; 1 RAW files left out beside a JPEG/HEIC of the same name" in out
    assert main([*args[:4], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sync"]["raw_beside_processed"] == 1
