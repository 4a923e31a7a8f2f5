"""Where the collection's index file is: ``index/state.json`` names the current file and what it was built
from. Plain JSON, no faiss import, so ``photodex info`` stays fast."""

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


def current_index_file(coll: Collection, state: dict[str, Any] | None = None) -> Path | None:
    """The index file ``state.json`` points at (each version has its own name, never rewritten)."""
    name = (state if state is not None else index_state(coll)).get("file")
    return index_dir(coll) / name if isinstance(name, str) and "/" not in name else None
