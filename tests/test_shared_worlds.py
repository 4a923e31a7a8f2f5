"""The session's shared world collections (tests/conftest.py): built once, shared, and checked to stay as built."""

from __future__ import annotations

import os

from indexer.catalog.models import Tag
from tests.conftest import _fingerprint
from tests.helpers import WORLD
from ui.demo.collection import build_world_collection


def test_world_of_builds_each_world_once_and_the_fixtures_are_those(world_of, world, large_world):
    assert world_of(*WORLD) is world and world is not large_world
    with world.open() as coll:
        assert len(world.truth) == WORLD[0] == coll.vector_ids().size


def test_the_fingerprint_sees_a_changed_catalog_or_library_and_a_copy_keeps_the_original(tmp_path, world_encoder):
    small = build_world_collection(tmp_path / "w", n=6, seed=3, encoder=world_encoder)
    before = _fingerprint(small)
    assert _fingerprint(small) == before  # reading changes nothing
    copy = small.copy(tmp_path / "copy")
    with copy.open() as coll, coll.catalog.session() as s, s.begin():
        s.add(Tag(photo_id=int(coll.vector_ids()[0]), taxonomy="t", label="x", score=1.0, manual=True))
    assert _fingerprint(small) == before and _fingerprint(copy) != before  # the copy changed, not the original
    with small.open() as coll, coll.catalog.session() as s, s.begin():
        s.add(Tag(photo_id=int(coll.vector_ids()[0]), taxonomy="t", label="x", score=1.0, manual=True))
    changed = _fingerprint(small)
    assert changed != before
    photo = next(iter(small.truth))
    os.utime(photo, ns=(1, 1))
    assert _fingerprint(small) != changed  # a library file touched
