"""A synthetic-world library indexed with a tiny CLIP into a collection, with every photo's ground truth, so that
what search, tagging, moderation and answering return can be checked for meaning."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from indexer.collection import Collection
from indexer.encode.encoders import Encoder, load_encoder
from indexer.run import RunOptions, index_paths
from retrieval.index.store import refresh_index
from ui.demo.world import WorldSample, write_library


@dataclass
class WorldCollection:
    path: Path
    library: Path
    encoder: Encoder
    truth: dict[str, WorldSample]  # absolute path -> sample

    def open(self) -> Collection:
        return Collection.open(self.path)

    def copy(self, dest: Path) -> WorldCollection:
        """The same world with its collection copied to ``dest`` (the library is shared, not copied): for work
        that changes the collection's state while the original stays as it was."""
        shutil.copytree(self.path, dest)
        return dataclasses.replace(self, path=Path(dest))

    def private_copy(self, dest: Path) -> Collection:
        """Open a copy of the collection at ``dest`` (see :meth:`copy`)."""
        return self.copy(dest).open()

    def sample_of(self, paths: list[str]) -> WorldSample:
        return self.truth[paths[0]]


def build_world_collection(root: Path, clip_dir: Path | None = None, n: int = 360, seed: int = 7, *,
                           encoder: Encoder | None = None) -> WorldCollection:
    """Write an ``n``-photo world library (``seed``) under ``root/library`` and index it into ``root/collection``
    with the CLIP in ``clip_dir`` (an open_clip local-dir folder) or an ``encoder`` already loaded."""
    if encoder is None:
        if clip_dir is None:
            raise ValueError("build_world_collection needs clip_dir or encoder")
        encoder = load_encoder("local-dir:" + str(clip_dir), device="cpu")
    library = root / "library"
    pairs = write_library(library, n, seed)
    coll = Collection.open_for_encoder(root / "collection", encoder.spec)
    index_paths(coll, encoder, [library], RunOptions(batch_size=64, workers=0))
    refresh_index(coll)
    coll.close()
    return WorldCollection(root / "collection", library, encoder, {str(p): s for p, s in pairs})
