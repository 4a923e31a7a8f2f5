"""The indexing run: incremental, de-duplicated, bad input recorded and skipped, SQLite and PostgreSQL."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from indexer.catalog.models import INDEXED, Embedding, Photo, PhotoFile
from indexer.collection import Collection
from indexer.core.errors import EncoderMismatchError
from indexer.run import RunOptions
from tests.helpers import index_into, make_library, random_photo



def _invariants(coll: Collection, lib: Path) -> dict[str, int]:
    """Catalog = photo files on disk; one vector per indexed photo; none twice; none missing."""
    with coll.catalog.session() as s:
        paths = set(s.scalars(select(PhotoFile.path).where(PhotoFile.photo_id.is_not(None))))
        indexed = set(s.scalars(select(Photo.id).where(Photo.status == INDEXED)))
        vec_ids = list(s.scalars(select(Embedding.photo_id)))
        pending = s.scalar(select(func.count()).select_from(Photo).where(Photo.status == "pending"))
    on_disk = {str(p) for p in lib.rglob("*.jpg")}
    assert paths == on_disk
    assert len(vec_ids) == len(set(vec_ids)) and set(vec_ids) == indexed
    assert pending == 0
    return {"paths": len(paths), "vectors": len(vec_ids)}


def test_incremental_add_modify_delete_move(tmp_path, tiny_encoder):
    lib = tmp_path / "lib"
    files = make_library(lib, 12)
    coll_dir = tmp_path / "coll"
    summary = index_into(coll_dir, tiny_encoder, [lib])
    assert summary.encode.encoded == 12 and summary.sync.new_photos == 12

    # nothing changed: nothing hashed, nothing encoded
    summary = index_into(coll_dir, tiny_encoder, [lib])
    assert summary.sync.unchanged == 12 and summary.sync.hashed == 0 and summary.encode.encoded == 0

    with Collection.open(coll_dir) as coll:
        ids, vecs_before = coll.load_vectors()
    before = dict(zip(ids.tolist(), vecs_before))
    # add 2, modify 1, delete 1, move 1 (rename into another folder), copy 1 (duplicate)
    make_library(lib, 2, start=100)
    random_photo(files[0], seed=999)
    os.utime(files[0], ns=(1, 1))
    files[1].unlink()
    moved = lib / "moved" / "renamed.jpg"
    moved.parent.mkdir()
    shutil.move(files[2], moved)
    shutil.copy(files[3], lib / "copy_of_3.jpg")
    summary = index_into(coll_dir, tiny_encoder, [lib])
    assert summary.encode.encoded == 3  # two new + one modified; the move and the copy are not re-encoded
    assert summary.sync.linked_existing == 2
    assert summary.sync.removed_photos == 2  # the deleted one and the old content of the modified one
    counts = _invariants(Collection.open(coll_dir), lib)
    assert counts == {"paths": 14, "vectors": 13}  # the copy shares a vector with its original
    coll = Collection.open(coll_dir)
    ids, vecs = coll.load_vectors()
    after = dict(zip(ids.tolist(), vecs))
    kept = set(before) & set(after)
    assert len(kept) == 10 and all(np.array_equal(before[i], after[i]) for i in kept)
    with coll.catalog.session() as s:
        moved_photo = s.scalar(select(PhotoFile.photo_id).where(PhotoFile.path == str(moved)))
    assert moved_photo in before  # recognised by hash: same photo id, same vector
    coll.close()


def test_identical_files_are_one_photo_with_all_paths(tmp_path, tiny_encoder):
    lib = tmp_path / "lib"
    src = random_photo(lib / "a.jpg", seed=1)
    for name in ("b.jpg", "c/d.jpg"):
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, lib / name)
    summary = index_into(tmp_path / "coll", tiny_encoder, [lib])
    coll = Collection.open(tmp_path / "coll")
    with coll.catalog.session() as s:
        photo = s.scalars(select(Photo)).one()
        assert sorted(Path(f.path).name for f in photo.files) == ["a.jpg", "b.jpg", "d.jpg"]
    assert summary.encode.encoded == 1


def _bad_corpus(lib: Path) -> dict[str, str]:
    """Awkward files; returns name -> expected outcome ('ok' or an error substring)."""
    lib.mkdir(parents=True)
    expect: dict[str, str] = {}
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    (lib / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    expect["truncated.jpg"] = "truncated"
    (lib / "zero.jpg").write_bytes(b"")
    expect["zero.jpg"] = "empty file"
    (lib / "text.jpg").write_text("just text")
    expect["text.jpg"] = "not a recognised image"
    Image.new("L", (9000, 9000)).save(lib / "bomb.png")  # 81 MP of zeros: compresses to a few KB
    expect["bomb.png"] = "decompression-bomb"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(lib / "cmyk.jpg")
    expect["cmyk.jpg"] = "ok"
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(lib / "deep16.png")
    expect["deep16.png"] = "ok"
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0] + [0, 0, 255] * 255)
    pal.save(lib / "palette.png", transparency=0)
    expect["palette.png"] = "ok"
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0)]]
    frames[0].save(lib / "anim.gif", save_all=True, append_images=frames[1:])
    expect["anim.gif"] = "ok"
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (50, 20), (0, 200, 0)).save(lib / "rotated.jpg", exif=exif)
    expect["rotated.jpg"] = "ok"
    weird = os.fsencode(str(lib)) + b"/caf\xe9-latin1.jpg"  # not valid UTF-8
    with open(weird, "wb") as fh:
        Image.new("RGB", (20, 20), (90, 9, 9)).save(fh, "JPEG")
    expect["caf\\xe9-latin1.jpg"] = "ok"
    unreadable = lib / "unreadable.jpg"
    random_photo(unreadable, seed=5)
    unreadable.chmod(0)
    expect["unreadable.jpg"] = "ok" if os.geteuid() == 0 else "permission denied"  # root reads anything
    (lib / "dangling.jpg").symlink_to(lib / "does-not-exist.jpg")
    expect["dangling.jpg"] = "cannot stat"
    (lib / "loop").mkdir()
    (lib / "loop" / "again").symlink_to(lib)  # symlink cycle back to the root
    (lib / "notes.txt").write_text("ignored: not a photo extension")
    return expect


def test_bad_files_recorded_and_run_goes_on(tmp_path, tiny_encoder):
    lib = tmp_path / "lib"
    expect = _bad_corpus(lib)
    summary = index_into(tmp_path / "coll", tiny_encoder, [lib], opts=RunOptions(batch_size=4, workers=0,
                                                                                   max_image_pixels=50_000_000))
    coll = Collection.open(tmp_path / "coll")
    errors = {Path(e["path"]).name: e["error"] for e in coll.errors()}
    for name, outcome in expect.items():
        if outcome == "ok":
            assert name not in errors, f"{name} should index, got {errors.get(name)}"
        else:
            assert name in errors and outcome in errors[name], f"{name}: {errors.get(name)}"
    ok = sum(1 for v in expect.values() if v == "ok")
    stats = coll.stats()
    assert stats["indexed"] == ok and stats["vectors"] == ok
    assert stats["errors"] == len(expect) - ok
    with coll.catalog.session() as s:
        rotated = s.scalar(select(Photo).join(PhotoFile).where(PhotoFile.path.like("%rotated.jpg")))
        assert rotated.orientation == 8 and (rotated.width, rotated.height) == (50, 20)
        weird = s.scalar(select(PhotoFile).where(PhotoFile.path.like("%latin1.jpg")))
        assert os.path.exists(weird.path_bytes) and "\\xe9" in weird.path
    # a second run does not retry unchanged failures and finds nothing new
    summary2 = index_into(tmp_path / "coll", tiny_encoder, [lib])
    assert summary2.encode.encoded == 0 and summary2.encode.errors == 0


def test_encoder_mismatch_is_refused(tmp_path, tiny_encoder):
    from dataclasses import replace

    make_library(tmp_path / "lib", 2)
    index_into(tmp_path / "coll", tiny_encoder, [tmp_path / "lib"])
    other = replace(tiny_encoder.spec, weights_fingerprint="different")
    with pytest.raises(EncoderMismatchError, match="cannot be mixed"):
        Collection.open_for_encoder(tmp_path / "coll", other)


def test_catalog_on_postgresql(tmp_path, tiny_encoder, pg_database_url):
    lib = tmp_path / "lib"
    make_library(lib, 6)
    shutil.copy(next(lib.rglob("*.jpg")), lib / "dup.jpg")
    (lib / "broken.jpg").write_text("nope")
    summary = index_into(tmp_path / "coll", tiny_encoder, [lib], db_url=pg_database_url)
    assert summary.encode.encoded == 6 and summary.encode.errors == 1
    coll = Collection.open(tmp_path / "coll", pg_database_url)
    assert coll.catalog.engine.dialect.name == "postgresql"
    assert not (tmp_path / "coll" / "catalog.db").exists()
    ids, vecs = coll.load_vectors()
    assert len(ids) == 6 and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-3)
    (lib / "dup.jpg").unlink()
    next(lib.rglob("img_0005.jpg")).unlink()
    summary = index_into(tmp_path / "coll", tiny_encoder, [lib], db_url=pg_database_url)
    assert summary.sync.removed_photos == 1 and summary.sync.removed_files == 2
    assert len(coll.load_vectors()[0]) == 5
    coll.close()


def test_bomb_limit_applies_inside_decode_workers(tmp_path, tiny_encoder):
    lib = tmp_path / "lib"
    random_photo(lib / "small.jpg", size=(40, 30))
    Image.new("L", (3000, 3000)).save(lib / "big.png")  # 9 MP, over the 1 MP limit set below
    summary = index_into(tmp_path / "coll", tiny_encoder, [lib],
                        opts=RunOptions(batch_size=4, workers=1, max_image_pixels=1_000_000))
    assert summary.encode.encoded == 1 and summary.encode.errors == 1
    errors = Collection.open(tmp_path / "coll").errors()
    assert [Path(e["path"]).name for e in errors] == ["big.png"] and "decompression-bomb" in errors[0]["error"]
