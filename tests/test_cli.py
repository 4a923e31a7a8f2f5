"""The photodex CLI: one-line errors with exit code 2, JSON output, info and error listing."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import env_offline, make_library


def _photodex(*args: str, check_rc: int | None = 0) -> subprocess.CompletedProcess:
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
    out = _photodex("index", str(lib), "--collection", str(coll), "--model", f"local-dir:{folder}", "--json")
    summary = json.loads(out.stdout)
    assert summary["encode"]["encoded"] == 5 and summary["encode"]["errors"] == 1

    info = json.loads(_photodex("info", "--collection", str(coll), "--json").stdout)
    assert info["photos"] == 6 and info["vectors"] == 5 and info["errors"] == 1 and info["disk_bytes"] > 0
    assert info["encoder_spec"]["embed_dim"] == 32
    errors = json.loads(_photodex("info", "--collection", str(coll), "--errors", "--json").stdout)
    assert [e["path"].rsplit("/", 1)[-1] for e in errors] == ["broken.jpg"]

    # re-running without --model uses the collection's own encoder
    again = json.loads(_photodex("index", str(lib), "--collection", str(coll), "--json").stdout)
    assert again["encode"]["encoded"] == 0 and again["sync"]["unchanged"] == 6

    bad = _photodex("index", str(lib), "--collection", str(coll), "--model", "ViT-B-32", "--pretrained", "none",
                    check_rc=2)
    assert "cannot be mixed" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()[-1]) > 20


def test_configuration_errors_exit_2_without_traceback(tmp_path):
    unknown = _photodex("index", str(tmp_path), "--collection", str(tmp_path / "c"), "--model", "nope-model",
                        check_rc=2)
    assert "could not load encoder" in unknown.stderr and "Traceback" not in unknown.stderr
    missing = _photodex("info", "--collection", str(tmp_path / "none"), check_rc=2)
    assert "no collection at" in missing.stderr
    ro = tmp_path / "ro"
    ro.write_text("a file where a folder should be")
    unwritable = _photodex("index", str(tmp_path), "--collection", str(ro / "sub"), "--model", "ViT-B-32",
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
    r = _photodex("index", str(tmp_path / "no-such-folder"), "--collection", str(tmp_path / "c"), check_rc=2)
    assert "path not found" in r.stderr and "could not load encoder" not in r.stderr
    assert not (tmp_path / "c").exists()
