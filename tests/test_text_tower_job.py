"""The text-tower export off the indexing run's critical path: background job, user cache, state, failures.

Every test drives the real CLI (``python -m ui.cli``) on the trained tiny CLIP, so the background export is the
real child process (``python -m retrieval.search.text_tower_job``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.collection import read_manifest
from indexer.core.spec import EncoderSpec
from retrieval.search.text_tower import SIDECAR, text_tower_folder, try_load_text_tower
from retrieval.search.text_tower_export import user_cache_folder
from retrieval.search.text_tower_job import JOB_STATE, wait_for_export
from tests.helpers import env_offline, make_library

REPO = Path(__file__).resolve().parent.parent
QUERIES = ["a red circle", "two blue squares", "a yellow star on green", "", "猫"]


def _cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = env_offline()
    full["PYTHONPATH"] = str(REPO)
    full["PHOTODEX_TEXT_TOWER_EXPORT"] = "background"  # the default (conftest makes the rest of the suite inline)
    full.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "ui.cli", *args], capture_output=True, text=True, env=full,
                          timeout=300, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _index(lib: Path, coll: Path, model_dir: Path, *extra: str, env: dict[str, str] | None = None) -> dict:
    out = _cli("index", str(lib), "--collection", str(coll), "--model", f"local-dir:{model_dir}", "--workers", "0",
               "--json", *extra, env=env)
    return json.loads(out.stdout)


def _spec_id(coll: Path) -> str:
    return EncoderSpec.from_dict(read_manifest(coll)["encoder"]).id


def _index_file(coll: Path) -> bytes:
    """The collection's FAISS index file, byte for byte."""
    state = json.loads((coll / "index" / "state.json").read_text())
    return (coll / "index" / state["file"]).read_bytes()


def _vectors(coll: Path) -> tuple[np.ndarray, np.ndarray]:
    from indexer.collection import Collection

    with Collection.open(coll) as c:
        return c.load_vectors()


@pytest.fixture()
def lib(tmp_path: Path) -> Path:
    make_library(tmp_path / "lib", 10)
    return tmp_path / "lib"


def test_the_runs_result_does_not_depend_on_the_export(lib, tmp_path, world_tiny_clip_dir) -> None:
    ran = _index(lib, tmp_path / "ran", world_tiny_clip_dir, env={"PHOTODEX_TEXT_TOWER_EXPORT": "inline"})
    assert ran["text_tower"]["state"] == "ready"
    reused = _index(lib, tmp_path / "reused", world_tiny_clip_dir)  # the user cache now holds the export
    assert reused["text_tower"] == {"state": "ready", "why": "reused this user's export of the encoder"}
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "text_tower").write_text("a file where the export's folder goes")
    failed = _index(lib, tmp_path / "failed", world_tiny_clip_dir)
    assert failed["text_tower"]["state"] == "failed"
    for name in ("reused", "failed"):
        ids, vecs = _vectors(tmp_path / name)
        ref_ids, ref_vecs = _vectors(tmp_path / "ran")
        assert np.array_equal(ids, ref_ids) and np.array_equal(vecs, ref_vecs)
        assert _index_file(tmp_path / name) == _index_file(tmp_path / "ran")
    assert ran["sync"] == reused["sync"] == failed["sync"] and ran["index"]["vectors"] == failed["index"]["vectors"]
    assert ran["encode"]["encoded"] == reused["encode"]["encoded"] == failed["encode"]["encoded"] == 10


def test_a_second_collection_with_the_same_encoder_reuses_the_export(lib, tmp_path, world_tiny_clip_dir) -> None:
    first = _index(lib, tmp_path / "one", world_tiny_clip_dir)
    assert first["text_tower"]["state"] == "pending"  # the run did not wait for the export
    spec_id = _spec_id(tmp_path / "one")
    assert wait_for_export(tmp_path / "one", spec_id, timeout=300)["state"] == "ready"
    cache = user_cache_folder(spec_id)
    exports = [p for p in cache.iterdir() if p.is_dir()]
    assert len(exports) == 1

    second = _index(lib, tmp_path / "two", world_tiny_clip_dir)
    assert second["text_tower"] == {"state": "ready", "why": "reused this user's export of the encoder"}
    folder = text_tower_folder(tmp_path / "two")
    assert not (folder / JOB_STATE).exists()  # no export job was started for it
    assert [p for p in cache.iterdir() if p.is_dir()] == exports  # and the cache holds the one export
    meta = json.loads((folder / SIDECAR).read_text())
    for name in meta["files"]:  # hard links of the cached files: nothing was exported or even copied
        assert (folder / meta["export_dir"] / name).stat().st_ino == (exports[0] / name).stat().st_ino
    one, two = try_load_text_tower(tmp_path / "one", spec_id), try_load_text_tower(tmp_path / "two", spec_id)
    assert one is not None and two is not None
    assert float(np.abs(one.encode_texts(QUERIES) - two.encode_texts(QUERIES)).max()) <= 1e-6


def _kill_when(predicate, proc_pid: int, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            os.kill(proc_pid, signal.SIGKILL)
            return True
        time.sleep(0.005)
    return False


def _job_pid(folder: Path) -> int | None:
    try:
        return json.loads((folder / JOB_STATE).read_text()).get("pid")
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("phase", ["export", "install"])
def test_a_killed_export_leaves_nothing_a_search_would_load(lib, tmp_path, world_tiny_clip_dir, phase) -> None:
    """SIGKILL while the job exports into the user cache (seconds: always caught), or the moment the cache's
    export is committed, when the job is installing it into the collection (milliseconds: the kill may land
    before, during or after). Whatever the moment, a search loads either nothing or a complete, verified tower."""
    from retrieval.search.text_tower import load_text_tower

    coll = tmp_path / "coll"
    assert _index(lib, coll, world_tiny_clip_dir)["text_tower"]["state"] == "pending"
    spec_id = _spec_id(coll)
    folder, cache = text_tower_folder(coll), user_cache_folder(spec_id)
    deadline = time.monotonic() + 60
    while (pid := _job_pid(folder)) is None:
        assert time.monotonic() < deadline, "the export job never recorded its pid"
        time.sleep(0.01)

    def staging(where: Path) -> bool:
        return where.is_dir() and any(p.name.startswith(".staging-") for p in where.iterdir())

    moment = (lambda: staging(cache)) if phase == "export" else (lambda: (cache / SIDECAR).exists())
    if not _kill_when(moment, pid):
        pytest.fail(f"never saw the job in its {phase} phase")
    state = wait_for_export(coll, spec_id, timeout=60)  # once the kernel has torn the killed job down
    tower = try_load_text_tower(coll, spec_id)
    if phase == "export" or tower is None:
        assert tower is None  # nothing half-written is loadable
        assert state["state"] == "failed" and "ended before it finished" in state["why"]
    else:  # the kill came after the install's commit point: what a search loads is whole
        load_text_tower(folder, spec_id, verify="full")
    hits = json.loads(_cli("search", "a red circle", "--collection", str(coll), "--json", "-k", "3",
                           "--no-collapse").stdout)
    assert len(hits) == 3  # search answers either way (the full model while there is no tower)

    again = json.loads(_cli("reindex", "--collection", str(coll), "--json").stdout)
    assert again["text_tower"]["state"] in ("pending", "ready")
    if phase == "export":
        assert "ended before it finished" in again["text_tower"]["previous"]
    else:  # the cache holds the export: installed by reindex itself, nothing exported again
        assert again["text_tower"]["state"] == "ready"
    assert wait_for_export(coll, spec_id, timeout=300)["state"] == "ready"
    load_text_tower(folder, spec_id, verify="full")
    assert not staging(folder) and not staging(cache)  # the debris of the killed job is gone


def test_info_reports_the_text_paths_state(lib, tmp_path, world_tiny_clip_dir) -> None:
    coll = tmp_path / "coll"
    summary = _cli("index", str(lib), "--collection", str(coll), "--model", f"local-dir:{world_tiny_clip_dir}",
                   "--workers", "0").stdout
    assert "fast text path: exporting in the background" in summary
    info = json.loads(_cli("info", "--collection", str(coll), "--json").stdout)
    assert info["text_tower"]["state"] in ("pending", "ready")
    spec_id = _spec_id(coll)
    wait_for_export(coll, spec_id, timeout=300)
    assert json.loads(_cli("info", "--collection", str(coll), "--json").stdout)["text_tower"]["state"] == "ready"
    assert "text_tower: ready" in _cli("info", "--collection", str(coll)).stdout

    import shutil

    shutil.rmtree(text_tower_folder(coll))
    info = json.loads(_cli("info", "--collection", str(coll), "--json").stdout)["text_tower"]
    assert info["state"] == "missing" and "no text tower export" in info["why"]


def test_a_failed_export_warns_and_the_next_run_retries(lib, tmp_path, world_tiny_clip_dir) -> None:
    coll = tmp_path / "coll"
    coll.mkdir()
    blocker = coll / "text_tower"
    blocker.write_text("not a folder")
    out = _cli("index", str(lib), "--collection", str(coll), "--model", f"local-dir:{world_tiny_clip_dir}",
               "--workers", "0")
    assert "warning: fast text path not available" in out.stdout and "the next index or reindex tries again" in out.stdout
    assert "fast text path is not available" in out.stderr  # a warning on stderr as well (seen with --json too)
    info = json.loads(_cli("info", "--collection", str(coll), "--json").stdout)["text_tower"]
    assert info["state"] in ("failed", "missing") and "text_tower" in info["why"]

    blocker.unlink()
    again = json.loads(_cli("reindex", "--collection", str(coll), "--json").stdout)
    assert again["text_tower"]["state"] in ("pending", "ready")
    assert wait_for_export(coll, _spec_id(coll), timeout=300)["state"] == "ready"


@pytest.fixture()
def small_fs(tmp_path: Path):
    """A 2 MiB tmpfs (root only): room for a catalog, not for the tiny CLIP's ~13 MB text tower."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_export_with_a_warning_and_the_next_run_retries(lib, tmp_path, small_fs,
                                                                              world_tiny_clip_dir) -> None:
    coll = small_fs / "coll"
    first = _index(lib, coll, world_tiny_clip_dir)  # no cached export yet: the job exports, then cannot install
    spec_id = _spec_id(coll)
    assert first["text_tower"]["state"] in ("pending", "failed")
    state = wait_for_export(coll, spec_id, timeout=300)
    assert state["state"] == "failed" and "No space left on device" in state["why"], state
    assert try_load_text_tower(coll, spec_id) is None

    make_library(lib, 2, start=100)
    out = _cli("index", str(lib), "--collection", str(coll), "--workers", "0")  # the run itself still succeeds
    assert "encoded 2 photos" in out.stdout
    assert "warning: fast text path not available" in out.stdout and "No space left on device" in out.stdout
    assert "the last export failed" in out.stdout  # the previous failure, reported again

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    again = json.loads(_cli("reindex", "--collection", str(coll), "--json").stdout)
    assert again["text_tower"]["state"] == "ready"  # installed from the user cache: no second export
    assert try_load_text_tower(coll, spec_id) is not None
