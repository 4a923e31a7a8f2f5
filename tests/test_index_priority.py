"""Issue 20.2: an index run on a collection a server holds yields the CPU (nice), and only its own threads."""

from __future__ import annotations

import json
import subprocess
import sys

from indexer.priority import ServingMark, choose_nice, is_served
from tests.helpers import env_offline

PROBE = r"""
import json, os, sys, threading
from indexer.priority import yield_cpu
coll, scope, nice = sys.argv[1], sys.argv[2], (None if sys.argv[3] == "auto" else int(sys.argv[3]))
before = os.getpriority(os.PRIO_PROCESS, 0)
got = {}
if scope == "thread":
    def job():
        got["applied"] = yield_cpu(coll, nice, "thread")
        got["job"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) - before
    t = threading.Thread(target=job); t.start(); t.join()
else:
    got["applied"] = yield_cpu(coll, nice, "process")
    child = threading.Thread(target=lambda: got.setdefault("later_thread", os.getpriority(os.PRIO_PROCESS, 0) - before))
    child.start(); child.join()
got["main"] = os.getpriority(os.PRIO_PROCESS, 0) - before
print(json.dumps(got))
"""


def _probe(coll, scope: str, nice: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(coll), scope, nice], env=env_offline(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_server_mark_is_seen_across_processes(tmp_path):
    assert not is_served(tmp_path) and choose_nice(tmp_path, None) == 0
    mark = ServingMark(tmp_path)
    try:
        assert is_served(tmp_path) and choose_nice(tmp_path, None) == 10
        assert choose_nice(tmp_path, 0) == 0  # --nice 0: off, even when served
        check = subprocess.run([sys.executable, "-c", "import sys; from indexer.priority import is_served; "
                                "print(is_served(sys.argv[1]))", str(tmp_path)],
                               env=env_offline(), capture_output=True, text=True, timeout=60)
        assert check.stdout.strip() == "True", check.stderr
        second = ServingMark(tmp_path)  # a second uvicorn worker shares it
        second.close()
        assert is_served(tmp_path)
    finally:
        mark.close()
    assert not is_served(tmp_path)


def test_an_index_run_renices_its_process_only_when_served_or_asked(tmp_path):
    assert _probe(tmp_path, "process", "auto") == {"applied": 0, "later_thread": 0, "main": 0}
    mark = ServingMark(tmp_path)
    try:
        assert _probe(tmp_path, "process", "auto") == {"applied": 10, "later_thread": 10, "main": 10}
    finally:
        mark.close()
    assert _probe(tmp_path, "process", "3") == {"applied": 3, "later_thread": 3, "main": 3}


def test_an_api_job_renices_only_its_own_thread(tmp_path):
    mark = ServingMark(tmp_path)
    try:
        assert _probe(tmp_path, "thread", "auto") == {"applied": 10, "job": 10, "main": 0}
    finally:
        mark.close()
