"""Where the collection's index is: ``index/state.json`` names the current file(s) and what they were built
from. Plain JSON, no faiss import, so ``photodex info`` stays fast.

One index file: ``{"file": "vectors-<gen>-<id>.faiss", ...}``. A sharded index (``photodex reindex
--shards N``): ``{"files": [one per shard], "bounds": [photo-id range edges], "shards": N, ...}``; shard
``k`` holds the ids in ``[bounds[k], bounds[k+1])`` (ids past the last edge go to the last shard).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from indexer.collection import Collection

INDEX_DIR = "index"
STATE_FILE = "state.json"


def index_dir(coll: Collection) -> Path:
    return coll.path / INDEX_DIR


def index_state(coll: Collection) -> dict[str, Any]:
    """What the current index file is and was built from (file, generation, type); empty if none."""
    try:
        state = json.loads((index_dir(coll) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name


def current_index_file(coll: Collection, state: dict[str, Any] | None = None) -> Path | None:
    """The index file ``state.json`` points at (each version has its own name, never rewritten);
    None when there is none or the index is sharded (see :func:`shard_layout`)."""
    name = (state if state is not None else index_state(coll)).get("file")
    return index_dir(coll) / name if _plain_name(name) else None


def shard_layout(state: dict[str, Any]) -> tuple[list[str], list[int]] | None:
    """(shard file names, id-range bounds) of a sharded index state; None if it is not a valid one."""
    files, bounds = state.get("files"), state.get("bounds")
    if (not isinstance(files, list) or not files or not all(_plain_name(f) for f in files)
            or not isinstance(bounds, list) or len(bounds) != len(files) + 1
            or not all(isinstance(b, int) for b in bounds)):
        return None
    return files, bounds


def target_shards(state: dict[str, Any]) -> int:
    """How many shards the collection's index is kept in (1: one file), as last asked for."""
    n = state.get("shards")
    return n if isinstance(n, int) and n >= 1 else 1


def index_files(state: dict[str, Any]) -> list[str]:
    """Names of every file of the current index version (one, one per shard, or none)."""
    layout = shard_layout(state)
    if layout is not None:
        return list(layout[0])
    name = state.get("file")
    return [name] if _plain_name(name) else []


def index_version(state: dict[str, Any]) -> str | None:
    """An identity of the current index version: its file name, or its shard file names joined."""
    return "|".join(index_files(state)) or None
