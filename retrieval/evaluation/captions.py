"""Caption files as the field ships them, read into one list of images and their captions.

Two formats are read (the format is told from the content, not the file name):

* **Karpathy split JSON** (``dataset_flickr30k.json``, ``dataset_coco.json``): ``images[]`` with
  ``filename``, ``split`` (``train``/``val``/``test``/``restval``), ``sentences[].raw`` and, for COCO,
  ``filepath`` (``val2014``); one split is evaluated (``test`` by default, as published figures are).
* **COCO captions JSON** (``captions_val2014.json``, or clip_benchmark's Karpathy test set in that
  form): ``images[]`` with ``id`` and ``file_name``, ``annotations[]`` with ``image_id`` and ``caption``.
  Images are taken in id order with their captions in file order, as torchvision's ``CocoCaptions``
  (which clip_benchmark uses) does.

Anything that would make a figure describe less than the file claims is refused with one line that
names the first offending entry and how many others are like it: a file in neither format, an entry
without its fields, an absent or empty split, an image without a caption, a caption of an unknown
image, an image missing from the folder.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from indexer.core.errors import InputError

__all__ = ["CaptionSet", "read_captions", "resolve_images"]

KARPATHY = "karpathy"
COCO = "coco"
DEFAULT_SPLIT = "test"


@dataclass(frozen=True)
class CaptionSet:
    """Images (names as the file gives them) and every caption with the index of its image."""

    format: str
    split: str | None
    images: list[str]
    entries: list[str]  # where each image is in the file, for messages ("images[12]")
    captions: list[str]
    caption_image: np.ndarray  # (n_captions,) int64 index into ``images``
    folders: list[str | None]  # Karpathy ``filepath`` (COCO: "val2014"), else None

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_image):
            raise ValueError("one image index per caption")


def _refuse(problems: list[str], how: str) -> None:
    """One line naming the first problem and the count of the others like it."""
    if problems:
        more = len(problems) - 1
        others = f" (and {more} other{'s' if more != 1 else ''} like it)" if more else ""
        raise InputError(f"{problems[0]}{' ' + how if how else ''}{others}")


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def read_captions(path: str | Path, split: str | None = None) -> CaptionSet:
    """Read a Karpathy split or COCO captions file; ``split`` applies to Karpathy files (default ``test``)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read caption file {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{p} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{p} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); expected a "
                         "Karpathy split file or COCO captions") from exc
    images = data.get("images") if isinstance(data, dict) else None
    if isinstance(images, list) and isinstance(data.get("annotations"), list):
        if split is not None:
            raise InputError(f"{p} is a COCO captions file, which has no splits; leave out --split")
        return _read_coco(p, images, data["annotations"])
    if isinstance(images, list) and images and all(isinstance(e, dict) for e in images) \
            and any("sentences" in e for e in images):
        return _read_karpathy(p, images, split or DEFAULT_SPLIT)
    if isinstance(images, list) and not images:
        raise InputError(f"{p} lists no images")
    raise InputError(f"{p} is in neither caption format: expected a Karpathy split file (images[] with filename, "
                     "split, sentences[].raw) or COCO captions (images[] with id, file_name and annotations[] "
                     "with image_id, caption)")


def _read_karpathy(p: Path, entries: list[dict[str, Any]], split: str) -> CaptionSet:
    broken = [f"{p}: images[{i}] has no {field}" for i, e in enumerate(entries)
              for field in ("'filename'", "'split'", "'sentences' list")
              if (field == "'filename'" and not _text(e.get("filename")))
              or (field == "'split'" and not _text(e.get("split")))
              or (field == "'sentences' list" and not isinstance(e.get("sentences"), list))]
    _refuse(broken, "(a Karpathy split file needs filename, split and sentences[].raw on every image)")
    splits = Counter(e["split"].strip() for e in entries)
    if split not in splits:
        present = ", ".join(f"{name} ({n})" for name, n in sorted(splits.items()))
        raise InputError(f"{p} has no images in split {split!r}; its splits: {present}")
    chosen = [(i, e) for i, e in enumerate(entries) if e["split"].strip() == split]
    images, names, folders, captions, owner = [], [], [], [], []
    uncaptioned: list[str] = []
    for i, e in chosen:
        texts = [t for s in e["sentences"] if (t := _text(s.get("raw") if isinstance(s, dict) else None))]
        name = f"{p}: images[{i}] ({e['filename']!r})"
        if not texts:
            uncaptioned.append(name)
            continue
        for t in texts:
            captions.append(t)
            owner.append(len(images))
        images.append(e["filename"].strip())
        names.append(f"images[{i}]")
        folders.append(_text(e.get("filepath")))
    _refuse(uncaptioned, f"has no caption (sentences[].raw) in split {split!r}")
    return CaptionSet(KARPATHY, split, images, names, captions, np.asarray(owner, np.int64), folders)


def _read_coco(p: Path, images: list[Any], annotations: list[Any]) -> CaptionSet:
    if not images:
        raise InputError(f"{p} lists no images")
    broken = [f"{p}: images[{i}] has no integer 'id' and 'file_name'" for i, e in enumerate(images)
              if not isinstance(e, dict) or not isinstance(e.get("id"), int) or not _text(e.get("file_name"))]
    _refuse(broken, "(COCO captions need both on every image)")
    index: dict[int, int] = {}
    dupes = []
    for i, e in enumerate(images):
        if e["id"] in index:
            dupes.append(f"{p}: images[{i}] repeats image id {e['id']}")
        index.setdefault(e["id"], i)
    _refuse(dupes, "(image ids must be unique)")
    by_image: dict[int, list[str]] = {}
    bad, unknown = [], []
    for j, a in enumerate(annotations):
        text = _text(a.get("caption")) if isinstance(a, dict) else None
        if text is None or not isinstance(a.get("image_id"), int):
            bad.append(f"{p}: annotations[{j}] has no integer 'image_id' and non-empty 'caption'")
        elif a["image_id"] not in index:
            unknown.append(f"{p}: annotations[{j}] is a caption of image id {a['image_id']}, which images[] "
                           "does not list")
        else:
            by_image.setdefault(a["image_id"], []).append(text)
    _refuse(bad, "")
    _refuse(unknown, "")
    uncaptioned = [f"{p}: images[{index[k]}] ({images[index[k]]['file_name']!r}, id {k})"
                   for k in sorted(index) if k not in by_image]
    _refuse(uncaptioned, "has no caption in annotations[]")
    names, entries, captions, owner = [], [], [], []
    for k in sorted(index):  # torchvision's CocoCaptions: images in id order, captions in file order
        for t in by_image[k]:
            captions.append(t)
            owner.append(len(names))
        names.append(images[index[k]]["file_name"].strip())
        entries.append(f"images[{index[k]}]")
    return CaptionSet(COCO, None, names, entries, captions, np.asarray(owner, np.int64), [None] * len(names))


def _inside(name: str) -> bool:
    """A relative name that stays inside the images folder (no absolute path, no ``..``)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return bool(parts) and not name.startswith(("/", "\\")) and ".." not in parts and ":" not in parts[0]


def resolve_images(cs: CaptionSet, folder: str | Path, source: str | Path = "CAPTIONS") -> list[Path]:
    """The file of every image under ``folder``; one line naming the first missing one (and the count).

    A Karpathy ``filepath`` is tried first (``DIR/val2014/NAME``), then ``DIR/NAME``."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--images {root} is not a folder")
    outside = [f"{source}: {entry} ({name!r})" for name, entry, sub in zip(cs.images, cs.entries, cs.folders)
               if not _inside(name) or (sub is not None and not _inside(sub))]
    _refuse(outside, "names a file outside the images folder")
    found: list[Path] = []
    missing: list[str] = []
    for name, entry, sub in zip(cs.images, cs.entries, cs.folders):
        candidates = ([root / sub / name] if sub else []) + [root / name]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(f"{source}: {entry} {name!r} is not under {root}"
                           + (f" (looked in {sub}/ too)" if sub else ""))
        else:
            found.append(hit)
    _refuse(missing, "")
    return found

