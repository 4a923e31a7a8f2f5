"""SIGKILL the indexing CLI at several points; the same command then finishes with nothing lost or doubled."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import env_offline, make_library

N_PHOTOS = 40


def _cmd(lib: Path, coll: Path) -> list[str]:
    # a seeded random ViT-B-32 is slow enough on a CPU (~0.1 s/photo) to be killed mid-run
    return [sys.executable, "-m", "ui.cli", "index", str(lib), "--collection", str(coll), "--model", "ViT-B-32",
            "--pretrained", "none", "--batch-size", "4", "--workers", "1", "--device", "cpu", "--json"]


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def _vectors(db: Path) -> dict[int, bytes]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT photo_id, vector FROM embeddings"))


def _run_until(cmd: list[str], db: Path, sql: str, threshold: int, timeout: float = 240) -> bool:
    """Start the run, SIGKILL it once ``sql`` reaches ``threshold``; False if it finished first."""
    proc = subprocess.Popen(cmd, env=env_offline(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _count(db, sql) >= threshold:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.kill()
    pytest.fail("indexing run neither progressed nor finished in time")


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume(tmp_path):
    lib, coll = tmp_path / "lib", tmp_path / "coll"
    make_library(lib, N_PHOTOS, size=(320, 240))
    db = coll / "catalog.db"
    cmd = _cmd(lib, coll)
    kill_points = [
        ("SELECT count(*) FROM photo_files", 1),  # while the catalog is being filled
        ("SELECT count(*) FROM embeddings", 4),  # after the first committed batch
        ("SELECT count(*) FROM embeddings", 13),  # mid-run, between or inside batches
        ("SELECT count(*) FROM embeddings", 29),
    ]
    committed: dict[int, bytes] = {}
    for sql, threshold in kill_points:
        killed = _run_until(cmd, db, sql, threshold)
        assert killed, "the run finished before it could be killed; the test needs a slower run"
        now = _vectors(db)
        # nothing committed before is lost or changed by a later (killed) run
        assert all(now.get(pid) == vec for pid, vec in committed.items())
        committed = now
    assert 0 < len(committed) < N_PHOTOS
    done = subprocess.run(cmd, env=env_offline(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # only what was not committed is encoded again
    assert summary["encode"]["encoded"] == N_PHOTOS - len(committed)
    final = _vectors(db)
    assert len(final) == N_PHOTOS and all(final[pid] == vec for pid, vec in committed.items())
    with sqlite3.connect(db) as conn:
        paths = {r[0] for r in conn.execute("SELECT path FROM photo_files")}
        assert conn.execute("SELECT count(*) FROM photos WHERE status != 'indexed'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM photos").fetchone()[0] == N_PHOTOS
    assert paths == {str(p) for p in lib.rglob("*.jpg")}
    assert not list(coll.glob(".*.tmp"))  # no temp files left behind by atomic writes


def test_a_sigkilled_index_run_takes_its_decode_workers_with_it(tmp_path, tiny_clip):
    """Decode workers are forks of the run: when it is SIGKILLed they die at once, not seconds later when
    they would notice (they hold its open files meanwhile)."""
    from tests.helpers import alive, children_of, slow_photos

    lib, coll = tmp_path / "lib", tmp_path / "coll"
    slow_photos(lib, 16)
    cmd = [sys.executable, "-m", "ui.cli", "index", str(lib), "--collection", str(coll), "--model",
           f"local-dir:{tiny_clip[0]}", "--batch-size", "2", "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env_offline(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (workers := children_of(proc.pid)):
            assert time.monotonic() < deadline and proc.poll() is None, "the run's decode workers never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 2
        while any(alive(w) for w in workers):
            assert time.monotonic() < deadline, f"decode workers {workers} outlived their killed run"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
