"""The photodex CLI: one-line errors with exit code 2, JSON output, info and error listing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers import cli, env_offline, make_library


def _photodex(*args: str, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    """``python -m ui.cli ARGS`` in a process of its own: the real entry point and exit code."""
    proc = subprocess.run([sys.executable, "-m", "ui.cli", *args], env=env_offline(), capture_output=True,
                          text=True, timeout=300)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def test_index_info_errors_and_mismatch(tmp_path, tiny_clip):
    folder, _ = tiny_clip
    lib, coll = tmp_path / "lib", tmp_path / "coll"
    make_library(lib, 5)
    (lib / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = cli("index", str(lib), "--collection", str(coll), "--model", f"local-dir:{folder}", "--json")
    summary = json.loads(out.stdout)
    assert summary["encode"]["encoded"] == 5 and summary["encode"]["errors"] == 1

    info = json.loads(cli("info", "--collection", str(coll), "--json").stdout)
    assert info["photos"] == 6 and info["vectors"] == 5 and info["errors"] == 1 and info["disk_bytes"] > 0
    assert info["encoder_spec"]["embed_dim"] == 32
    errors = json.loads(cli("info", "--collection", str(coll), "--errors", "--json").stdout)
    assert [e["path"].rsplit("/", 1)[-1] for e in errors] == ["broken.jpg"]

    # re-running without --model uses the collection's own encoder
    again = json.loads(cli("index", str(lib), "--collection", str(coll), "--json").stdout)
    assert again["encode"]["encoded"] == 0 and again["sync"]["unchanged"] == 6

    bad = cli("index", str(lib), "--collection", str(coll), "--model", "ViT-B-32", "--pretrained", "none",
                    check_rc=2)
    assert "cannot be mixed" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()[-1]) > 20


def test_configuration_errors_exit_2_without_traceback(tmp_path):
    unknown = _photodex("index", str(tmp_path), "--collection", str(tmp_path / "c"), "--model", "nope-model",
                        check_rc=2)
    assert "could not load encoder" in unknown.stderr and "Traceback" not in unknown.stderr
    missing = cli("info", "--collection", str(tmp_path / "none"), check_rc=2)
    assert "no collection at" in missing.stderr
    ro = tmp_path / "ro"
    ro.write_text("a file where a folder should be")
    unwritable = cli("index", str(tmp_path), "--collection", str(ro / "sub"), "--model", "ViT-B-32",
                           "--pretrained", "none", check_rc=2)
    assert "not writable" in unwritable.stderr and "Traceback" not in unwritable.stderr


def test_invalid_setting_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    from ui.cli import main

    monkeypatch.setenv("PHOTODEX_BATCH_SIZE", "0")
    assert main(["info", "--collection", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "invalid setting batch_size" in err and "Traceback" not in err


def test_missing_photo_folder_is_refused_before_any_model_loads(tmp_path):
    # the default model would need a download; the path check must come first and fail fast
    r = cli("index", str(tmp_path / "no-such-folder"), "--collection", str(tmp_path / "c"), check_rc=2)
    assert "path not found" in r.stderr and "could not load encoder" not in r.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("flags, message", [
    (["--collapse", "7"], "collapse is a cosine threshold"),
    (["--collapse", "0"], "collapse is a cosine threshold"),
    (["--nprobe", "-3"], "nprobe must be >= 1"),
    (["--ef-search", "0"], "ef_search must be >= 1"),
    (["-k", "0"], "k must be between 1"),
    (["--offset", "-1"], "offset must be >= 0"),
    (["--min-score", "2"], "min_score is a cosine"),
    (["--filter", "colour=red"], "unknown filter key"),
])
def test_search_options_out_of_range_are_refused_before_any_model_loads(tmp_path, capsys, flags, message):
    from ui.cli import main

    # no collection and the default (downloadable) model: validation must come first
    assert main(["search", "a dog", "--collection", str(tmp_path / "none"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "abc"])
def test_non_finite_scores_are_usage_errors(tmp_path, capsys, value):
    from ui.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["search", "a dog", "--collection", str(tmp_path), f"--min-score={value}"])
    assert exit_info.value.code == 2 and "--min-score must be a" in capsys.readouterr().err


@pytest.mark.parametrize("manifest", ["[]", '{"format_version": 1}', '{"format_version": 1, "encoder": [1, 2]}',
                                      '{"format_version": 1, "encoder": {"model": "x"}}', "{not json"])
def test_manifest_of_the_wrong_shape_is_a_one_line_error(tmp_path, capsys, manifest):
    from ui.cli import main

    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "manifest.json").write_text(manifest)
    assert main(["info", "--collection", str(coll)]) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_deleted_manifest_then_another_model_is_refused(tmp_path):
    from tests.helpers import save_tiny_clip

    lib, coll = tmp_path / "lib", tmp_path / "coll"
    make_library(lib, 3)
    model_a, _ = save_tiny_clip(tmp_path / "a", seed=1)
    model_b, _ = save_tiny_clip(tmp_path / "b", seed=2)
    cli("index", str(lib), "--collection", str(coll), "--model", f"local-dir:{model_a}", "--workers", "0")
    (coll / "manifest.json").unlink()
    make_library(lib, 2, start=50)
    bad = cli("index", str(lib), "--collection", str(coll), "--model", f"local-dir:{model_b}", check_rc=2)
    assert "manifest is missing" in bad.stderr and "Traceback" not in bad.stderr
    assert not (coll / "manifest.json").exists()  # nothing was pinned to the other model
    # the original model may re-create it and carry on
    ok = cli("index", str(lib), "--collection", str(coll), "--model", f"local-dir:{model_a}", "--json")
    assert json.loads(ok.stdout)["encode"]["encoded"] == 2


def test_names_with_newlines_stay_on_one_line_in_text_output(tmp_path, tiny_clip):
    folder, _ = tiny_clip
    lib, coll = tmp_path / "lib", tmp_path / "coll"
    make_library(lib, 2)
    odd = lib / "evil\nname\t.jpg"
    (lib / "0" / "sub0" / "img_0000.jpg").rename(odd)
    cli("index", str(lib), "--collection", str(coll), "--model", f"local-dir:{folder}", "--workers", "0")
    out = cli("search", "x", "--collection", str(coll), "--no-collapse").stdout
    lines = out.strip().splitlines()
    assert len(lines) == 2 and any("evil\\nname\\t.jpg" in ln for ln in lines)
    as_json = json.loads(cli("search", "x", "--collection", str(coll), "--no-collapse", "--json").stdout)
    assert any(p.endswith("evil\nname\t.jpg") for h in as_json for p in h["paths"])  # JSON keeps the real name


def test_unchanged_library_does_not_load_the_encoder(tmp_path, tiny_clip):
    folder = tmp_path / "model"
    shutil.copytree(tiny_clip[0], folder)  # a private copy: this test deletes it
    lib, coll = tmp_path / "lib", tmp_path / "coll"
    make_library(lib, 3)
    first = json.loads(cli("index", str(lib), "--collection", str(coll), "--model", f"local-dir:{folder}",
                                 "--json").stdout)
    assert first["encoder_loaded"] is True
    shutil.rmtree(folder)  # the model is gone: a re-check must not need it
    again = json.loads(cli("index", str(lib), "--collection", str(coll), "--json").stdout)
    assert again["encoder_loaded"] is False and again["sync"]["unchanged"] == 3
    assert again["index"]["action"] == "up-to-date"
    probe = ("import sys; from ui.cli import main; rc = main(sys.argv[1:]); "
             "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'torch')), file=sys.stderr)")
    light = subprocess.run([sys.executable, "-c", probe, "index", str(lib), "--collection", str(coll), "--json"],
                           env=env_offline(), capture_output=True, text=True, timeout=300)
    assert light.stderr.strip().splitlines()[-1] == "0 []"  # writes nothing, so no ORM (and no torch)


def test_a_photo_left_without_a_path_is_removed_by_the_next_unchanged_run(tmp_path, tiny_encoder):
    """A run killed between recording a changed file (now pointing at its new photo) and removing the
    photo it no longer points at leaves a photo with no path: the next run, though nothing changed on
    disk, removes it and its vector."""
    from datetime import datetime

    from sqlalchemy import select

    from indexer.catalog.models import Embedding, Photo
    from indexer.collection import Collection
    from indexer.run import RunOptions, index_paths

    lib = tmp_path / "lib"
    make_library(lib, 4)
    with Collection.open_for_encoder(tmp_path / "coll", tiny_encoder.spec) as coll:
        index_paths(coll, tiny_encoder, [lib], RunOptions(workers=0))
        with coll.catalog.session() as s, s.begin():
            vector = s.scalars(select(Embedding.vector)).first()
            orphan = Photo(sha256="f" * 64, size=1, status="indexed", created_at=datetime(2024, 1, 1))
            s.add(orphan)
            s.flush()
            s.add(Embedding(photo_id=orphan.id, vector=vector))
            orphan_id = orphan.id
        generation = coll.generation()
        summary = index_paths(coll, tiny_encoder, [lib], RunOptions(workers=0))
        with coll.catalog.session() as s:
            assert s.get(Photo, orphan_id) is None and s.get(Embedding, orphan_id) is None
        assert summary.sync.unchanged == 4 and summary.sync.removed_photos == 1
        assert coll.generation() > generation and not summary.encoder_loaded
