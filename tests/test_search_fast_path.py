"""`photodex search TEXT` answers from the exported text tower: same results, no torch, no vision tower."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import cli, env_offline, make_library

PROBE = """
import json, sys
from ui.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules, "open_clip": "open_clip" in sys.modules,
                  "sqlalchemy": "sqlalchemy" in sys.modules}), file=sys.stderr)
"""


def _run(*args: str) -> tuple[list, dict]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=env_offline(), capture_output=True, text=True,
                          timeout=300)
    info = json.loads(proc.stderr.strip().splitlines()[-1])
    assert info["rc"] == 0, proc.stderr
    return json.loads(proc.stdout), info


@pytest.fixture(scope="module")
def fast_collection(tmp_path_factory, world_tiny_clip_dir):
    root = tmp_path_factory.mktemp("fast")
    make_library(root / "lib", 24)
    coll = root / "coll"
    out = cli("index", str(root / "lib"), "--collection", str(coll), "--model", f"local-dir:{world_tiny_clip_dir}",
              "--workers", "0", "--json")  # in this process: the searches below are the processes of their own
    assert json.loads(out.stdout)["text_tower"]["state"] in ("pending", "ready")  # inline here; pending by default
    from indexer.collection import read_manifest
    from indexer.core.spec import EncoderSpec
    from retrieval.search.text_tower_job import wait_for_export

    spec_id = EncoderSpec.from_dict(read_manifest(coll)["encoder"]).id
    assert wait_for_export(coll, spec_id, timeout=300)["state"] == "ready"
    return coll, world_tiny_clip_dir


@pytest.mark.parametrize("query", ["a red circle", "blue square +green -triangle"])
def test_fast_path_gives_the_full_models_results_without_torch(fast_collection, query):
    coll, model = fast_collection
    common = ["search", query, "--collection", str(coll), "--json", "-k", "10", "--no-collapse"]
    fast, info = _run(*common)
    assert not info["torch"] and not info["open_clip"]
    assert not info["sqlalchemy"]  # the catalog is read with sqlite3: no ORM import on a plain search
    full, info_full = _run(*common, "--model", f"local-dir:{model}")
    assert info_full["torch"]
    assert [h["id"] for h in fast] == [h["id"] for h in full]
    assert [h["score"] for h in fast] == pytest.approx([h["score"] for h in full], abs=1e-4)
    again, _ = _run(*common)  # now from the query cache
    assert [h["id"] for h in again] == [h["id"] for h in fast]


def test_fast_path_falls_back_to_the_full_model_when_the_export_is_gone(fast_collection, tmp_path):
    import shutil

    coll, _ = fast_collection
    copy = tmp_path / "coll"
    shutil.copytree(coll, copy)
    shutil.rmtree(copy / "text_tower")
    (copy / "query_cache.sqlite").unlink(missing_ok=True)
    hits, info = _run("search", "a yellow star", "--collection", str(copy), "--json", "-k", "5", "--no-collapse")
    assert info["torch"] and len(hits) == 5  # still answers, through the full model


def test_info_and_filtered_search_read_the_catalog(fast_collection):
    coll, _ = fast_collection
    stats, info = _run("info", "--collection", str(coll), "--json")
    assert stats["photos"] == stats["vectors"] == 24 and not info["sqlalchemy"] and not info["torch"]
    hits, info = _run("search", "a red circle", "--collection", str(coll), "--json", "-k", "30",
                      "--filter", "type=JPEG")
    assert len(hits) >= 1 and all(h["format"] == "JPEG" for h in hits)
    assert not info["sqlalchemy"]  # metadata filters are plain SQL too
    none, _ = _run("search", "a red circle", "--collection", str(coll), "--json", "--filter", "type=PNG")
    assert none == []
