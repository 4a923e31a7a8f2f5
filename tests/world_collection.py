"""A collection indexed with the trained tiny CLIP over a generated library (for semantic tests)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from indexer.collection import Collection
from indexer.encode.encoders import Encoder, load_encoder
from indexer.run import RunOptions, index_paths
from retrieval.index.store import refresh_index
from tests.world.generate import WorldSample, write_library


@dataclass
class WorldCollection:
    path: Path
    library: Path
    encoder: Encoder
    truth: dict[str, WorldSample]  # absolute path -> sample

    def open(self) -> Collection:
        return Collection.open(self.path)

    def private_copy(self, dest: Path) -> Collection:
        """Open a copy of the collection at ``dest`` (for tests that change its state)."""
        shutil.copytree(self.path, dest)
        return Collection.open(dest)

    def sample_of(self, paths: list[str]) -> WorldSample:
        return self.truth[paths[0]]


def build_world_collection(root: Path, clip_dir: Path, n: int = 360, seed: int = 7) -> WorldCollection:
    library = root / "library"
    pairs = write_library(library, n, seed)
    encoder = load_encoder("local-dir:" + str(clip_dir), device="cpu")
    coll = Collection.open_for_encoder(root / "collection", encoder.spec)
    index_paths(coll, encoder, [library], RunOptions(batch_size=64, workers=0))
    refresh_index(coll)
    coll.close()
    return WorldCollection(root / "collection", library, encoder, {str(p): s for p, s in pairs})
