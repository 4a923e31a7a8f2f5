"""Decoding awkward photos: orientation, colour modes, draft scaling, bombs, broken files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from indexer.encode.decode import DecodeError, decode_photo


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return str(path)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS 5D"
    p = _save(img, tmp_path / "rot.jpg", exif=exif)
    out, facts = decode_photo(p)
    assert out.size == (40, 80)
    assert facts.orientation == 6 and facts.camera_make == "Canon" and facts.camera_model == "EOS 5D"
    assert (facts.width, facts.height) == (80, 40)


def test_jpeg_draft_scaling_decodes_less(tmp_path):
    arr = (np.random.default_rng(0).random((1200, 1600, 3)) * 255).astype(np.uint8)
    p = _save(Image.fromarray(arr), tmp_path / "big.jpg", quality=90)
    small, facts = decode_photo(p, target_size=224)
    full, _ = decode_photo(p)
    assert full.size == (1600, 1200) and (facts.width, facts.height) == (1600, 1200)
    assert small.size == (400, 300)  # 1/4 DCT scale: both sides still >= 224
    assert min(small.size) >= 224


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = _save(Image.new("CMYK", (30, 30), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")  # pure red in CMYK
    out, _ = decode_photo(p)
    r, g, b = out.getpixel((15, 15))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16bit_png_keeps_its_brightness(tmp_path):
    arr = np.full((20, 20), 32768, dtype=np.uint16)  # mid grey in 16 bit
    p = _save(Image.fromarray(arr), tmp_path / "deep.png")
    out, _ = decode_photo(p)
    assert out.mode == "RGB" and 120 <= out.getpixel((5, 5))[0] <= 135


def test_palette_with_transparency_composited_on_white(tmp_path):
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    img.info["transparency"] = 0
    p = _save(img, tmp_path / "pal.png", transparency=0)
    out, _ = decode_photo(p)
    assert out.getpixel((3, 3)) == (255, 255, 255)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(0, 0, 255), (255, 0, 0), (0, 255, 0)]]
    p = str(tmp_path / "anim.gif")
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50)
    out, _ = decode_photo(p)
    r, g, b = out.getpixel((8, 8))
    assert b > 200 and r < 50


def test_bomb_guard_and_broken_files(tmp_path):
    p = _save(Image.new("RGB", (2000, 2000)), tmp_path / "huge.png")
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1_000_000
    try:
        with pytest.raises(DecodeError, match="decompression-bomb"):
            decode_photo(p)
    finally:
        Image.MAX_IMAGE_PIXELS = old
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((200, 200, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, not a photo")
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode_photo(str(tmp_path / "trunc.jpg"))
    with pytest.raises(DecodeError, match="empty file"):
        decode_photo(str(tmp_path / "zero.jpg"))
    with pytest.raises(DecodeError, match="not a recognised image"):
        decode_photo(str(tmp_path / "text.jpg"))
    with pytest.raises(DecodeError, match="vanished"):
        decode_photo(str(tmp_path / "gone.jpg"))


@pytest.mark.parametrize("ext,fmt", [("webp", "WEBP"), ("bmp", "BMP"), ("tiff", "TIFF"), ("png", "PNG")])
def test_common_formats_decode(tmp_path, ext, fmt):
    p = _save(Image.new("RGB", (30, 20), (10, 120, 250)), tmp_path / f"x.{ext}")
    out, facts = decode_photo(p)
    assert facts.format == fmt and out.size == (30, 20)
    assert abs(out.getpixel((5, 5))[2] - 250) <= 8


def test_heic_decodes_with_the_heic_extra(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif", reason="install the 'heic' extra")
    from indexer.encode.decode import register_heif

    assert register_heif()
    p = tmp_path / "phone.heic"
    pillow_heif.from_pillow(Image.new("RGB", (64, 48), (200, 40, 40))).save(str(p), quality=90)
    out, facts = decode_photo(str(p))
    assert facts.format == "HEIF" and out.size == (64, 48)
    r, g, b = out.getpixel((30, 20))
    assert r > 150 and g < 90 and b < 90


@pytest.mark.parametrize("limit, side", [(None, 30000), (1_000_000, 1200)])
def test_one_bomb_limit_and_one_message_at_index_and_query_time(tmp_path, tiny_clip, limit, side):
    """PHOTODEX_MAX_IMAGE_PIXELS is the limit everywhere (decode workers and query images alike), and the
    reason names it, not Pillow's doubled error threshold."""
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import bomb_png, env_offline, make_library

    lib, coll = tmp_path / "lib", tmp_path / "coll"
    make_library(lib, 2)
    (lib / "big.png").write_bytes(bomb_png(side))
    env = env_offline()
    if limit is not None:
        env["PHOTODEX_MAX_IMAGE_PIXELS"] = str(limit)
    run = lambda *a: subprocess.run([sys.executable, "-m", "ui.cli", *a, "--collection", str(coll)],  # noqa: E731
                                    env=env, capture_output=True, text=True, timeout=300)
    done = run("index", str(lib), "--model", f"local-dir:{tiny_clip[0]}", "--workers", "1")
    assert done.returncode == 0, done.stderr
    reasons = {os.path.basename(e["path"]): e["error"] for e in json.loads(run("info", "--errors", "--json").stdout)}
    reason = reasons["big.png"]
    expected = limit or 178_956_970
    assert f"{side * side} pixels" in reason and f"limit of {expected} " in reason and str(2 * expected) not in reason
    query = run("similar", str(lib / "big.png"))
    assert query.returncode == 2 and reason in query.stderr, (reason, query.stderr)
