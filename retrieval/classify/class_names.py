"""Class names for an ImageFolder's sub-folders: the folder names, a built-in list, or a file.

Published zero-shot figures use curated names, not folder names (ImageNet's folders are WordNet ids
such as ``n01440764``; clip_benchmark prompts "tench"). A name list is matched to the sub-folders
in sorted order, as torchvision's ``ImageFolder``/``ImageNet`` number classes:

* a built-in list by clip_benchmark's data set name (``imagenet1k``, ``cifar10``, ``caltech101``,
  ``flowers``, ``pets``, ...; ``class_names/clip_benchmark_en.json``, clip_benchmark 1.6.2, MIT);
* a text file with one name per line (blank lines and ``#`` comments skipped);
* a JSON file: a list (sorted-folder order) or an object mapping folder name to class name.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

from indexer.core.errors import InputError

__all__ = ["CLASS_NAME_DIR", "list_class_name_sets", "load_class_names"]

CLASS_NAME_DIR = Path(__file__).resolve().parent / "class_names"


@functools.cache
def _builtin() -> dict[str, list[str]]:
    return json.loads((CLASS_NAME_DIR / "clip_benchmark_en.json").read_text(encoding="utf-8"))["classnames"]


def list_class_name_sets() -> list[str]:
    """Names of the built-in class-name lists, sorted."""
    return sorted(_builtin())


def _read(source: str) -> list[str] | dict[str, str]:
    if source in _builtin():
        return list(_builtin()[source])
    path = Path(source)
    if not path.is_file():
        raise InputError(f"--classnames {source!r} is neither a built-in list ({', '.join(list_class_name_sets())}) "
                         "nor an existing file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read class-name file {path}: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from exc
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return data
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            return data
        raise InputError(f"{path}: expected a JSON list of names or an object of folder -> name")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def load_class_names(source: str, folders: Sequence[str]) -> list[str]:
    """One class name per folder of ``folders`` (sorted folder names), from ``source``."""
    names = _read(source)
    if isinstance(names, dict):
        missing = [f for f in folders if f not in names]
        if missing:
            more = f" (and {len(missing) - 1} other folders)" if len(missing) > 1 else ""
            raise InputError(f"{source} names no class for folder {missing[0]!r}{more}")
        names = [names[f] for f in folders]
    if len(names) != len(folders):
        raise InputError(f"{source} has {len(names)} class names for {len(folders)} class folders "
                         "(names go one per folder, in sorted folder order)")
    blank = [i for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise InputError(f"{source}: class name #{blank[0] + 1} is empty")
    return [n.strip() for n in names]
