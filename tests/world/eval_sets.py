"""Tiny evaluation sets from the world, in the formats the field ships: Karpathy split JSON, COCO captions, POPE.

Every image is a distinct scene (colour, shape, count), so no two images share a caption: retrieval
ranks have no exact ties and any correct implementation of Recall@K gives the same figures.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ui.demo.world import COLOURS, SHAPES, captions_for, make_sample

SPLIT_SIZES = {"test": 20, "val": 8, "train": 8}
CAPTIONS_PER_IMAGE = 5


@dataclass
class CaptionSets:
    """Where the generated files are."""

    images: Path  # the --images folder
    karpathy: Path  # dataset_world.json: test images under val2014/ (filepath), train/val flat
    coco: Path  # captions_world_test.json: the same test split in COCO captions form
    n_test: int
    n_test_captions: int


def write_caption_sets(directory: str | Path, seed: int = 7) -> CaptionSets:
    """Write the images and both caption files for ``SPLIT_SIZES`` distinct world scenes."""
    root = Path(directory)
    images = root / "images"
    scenes = [(c, s, n) for c in COLOURS for s in SHAPES for n in (1, 2, 3)]
    rng = random.Random(seed)
    rng.shuffle(scenes)
    karpathy, coco_images, coco_anns = [], [], []
    i = 0
    for split, size in SPLIT_SIZES.items():
        for _ in range(size):
            colour, shape, count = scenes[i]
            sample = make_sample(rng, colour=colour, shape=shape, count=count)
            name = f"world_{i:04d}.jpg"
            sub = "val2014" if split == "test" else None
            path = images / sub / name if sub else images / name
            path.parent.mkdir(parents=True, exist_ok=True)
            sample.image.save(path, quality=92)
            caps = captions_for(colour, shape, count, sample.position)[:CAPTIONS_PER_IMAGE]
            entry = {"filename": name, "imgid": i, "split": split,
                     "sentences": [{"raw": c, "tokens": c.split(), "imgid": i, "sentid": 10 * i + j}
                                   for j, c in enumerate(caps)]}
            if sub:
                entry["filepath"] = sub
                coco_images.append({"id": 1000 + i, "file_name": f"{sub}/{name}", "width": 64, "height": 64})
                coco_anns += [{"id": 10 * i + j, "image_id": 1000 + i, "caption": c} for j, c in enumerate(caps)]
            karpathy.append(entry)
            i += 1
    kp = root / "dataset_world.json"
    kp.write_text(json.dumps({"dataset": "world", "images": karpathy}))
    cp = root / "captions_world_test.json"
    rng.shuffle(coco_anns)  # COCO files are not grouped by image; the reader must not need them to be
    cp.write_text(json.dumps({"info": {}, "images": coco_images, "annotations": coco_anns}))
    return CaptionSets(images, kp, cp, SPLIT_SIZES["test"], SPLIT_SIZES["test"] * CAPTIONS_PER_IMAGE)
